//! Scoring a data set: Σ log Pr(y|x), scored tokens, mean NLL, perplexity.
