//! PEFT adapter folder reader/writer. STUB.
