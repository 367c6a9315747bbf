//! Chat templates rendered with minijinja. STUB.
