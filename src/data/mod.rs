//! JSONL records → (ids, loss mask). STUB: interface only — to be implemented.
