//! The quantized activation row of decoding's int8 matrix-vector product: its own leaf module
//! so the portable driver (`gemv_q8`) and the x86 kernel (`x86/gemv_vnni`) both import it and
//! neither imports the other's caller.

/// One x row in two 8-bit codes per value, per 32-value block b: hi = round(x/d) with
/// d = max|x|/127 and lo = round(128·(x/d − hi)), so x ≈ (d/128)·(128·hi + lo) (about 15 bits
/// relative to the block's max|x|, where one int8 code, as llama.cpp uses, keeps 7: greedy
/// decoding then follows the exact path token for token on the real-model golden tests).
/// Blocks go in pairs p (2p, 2p+1), 128 codes per pair: 64 hi codes, then 64 lo codes. `q8`
/// holds each 64 in order; `q4` ordered as a pair of Q4_1 blocks unpacks (low nibbles of both
/// blocks, then high nibbles: x[0..16] of 2p, of 2p+1, x[16..32] of 2p, of 2p+1);
/// `scl[4p..4p+4]` = [d(2p)/128, Σx(2p), d(2p+1)/128, Σx(2p+1)] (Σx exact, for Q4_1's offset
/// m); `corr[16p..16p+16]` = −Σ(128·hi + lo) over each 4 consecutive codes: Q8_0's correction
/// for feeding its signed weights to an unsigned dot as w + 128.
#[derive(Default)]
pub struct QuantX {
    pub(crate) q8: Vec<i8>,
    pub(crate) q4: Vec<i8>,
    pub(crate) scl: Vec<f32>,
    pub(crate) corr: Vec<i32>,
}

impl QuantX {
    pub(crate) fn resize(&mut self, k: usize) {
        self.q8.resize(2 * k, 0);
        self.q4.resize(2 * k, 0);
        self.scl.resize(k / 16, 0.0);
        self.corr.resize(k / 4, 0);
    }
}
