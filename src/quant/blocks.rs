//! ggml block layouts. STUB — to be implemented with size asserts.
pub const BLOCK_Q4_0_BYTES: usize = 18;
pub const BLOCK_Q4_1_BYTES: usize = 20;
pub const BLOCK_Q8_0_BYTES: usize = 34;
