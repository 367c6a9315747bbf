//! ggml's 5-bit block formats Q5_0 and Q5_1 (`block_q5_0`, `block_q5_1` in ggml-common.h):
//! layouts, parsing and scalar dequantization, bit-identical to ggml's `dequantize_row_q5_0/1`.
//!
//! A block is 32 values. Each value's 5-bit code is split: its low 4 bits are packed two per
//! byte in `qs` exactly as in Q4_0 (`qs[j]` = element j low nibble, element j + 16 high
//! nibble), and its 5th bit is bit j of `qh`, a little-endian u32 stored as 4 bytes (ggml
//! declares `uint8_t qh[4]`, so the block has no 4-byte alignment and no padding).

use super::blocks::QK;
use half::f16;
use std::mem::size_of;

pub const BLOCK_Q5_0_BYTES: usize = 22;
pub const BLOCK_Q5_1_BYTES: usize = 24;

/// 32 values as 5-bit codes q in 0..32 with one scale: x = (q - 16) * d.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// 32 values as 5-bit codes with scale and minimum: x = q * d + m.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

const _: () = assert!(size_of::<BlockQ5_0>() == BLOCK_Q5_0_BYTES);
const _: () = assert!(size_of::<BlockQ5_1>() == BLOCK_Q5_1_BYTES);

/// The 32 unsigned 5-bit codes of a block, in element order.
fn codes(qh: [u8; 4], qs: &[u8; QK / 2]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + QK / 2)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (hi0 << 4);
        q[j + QK / 2] = (qs[j] >> 4) | (hi1 << 4);
    }
    q
}

impl BlockQ5_0 {
    /// Parse from exactly `BLOCK_Q5_0_BYTES` bytes (panics on a wrong length: callers slice
    /// whole blocks out of an already bounds-checked row).
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q5_0_BYTES, "BlockQ5_0::from_bytes length");
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[6..]);
        BlockQ5_0 {
            d: f16::from_le_bytes([b[0], b[1]]),
            qh: [b[2], b[3], b[4], b[5]],
            qs,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.qs);
    }

    /// The block's 32 values into `y` (`y.len() == 32`): one int→float conversion (exact) and
    /// one f32 multiply per value, as ggml.
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (yj, &q) in y.iter_mut().zip(&codes(self.qh, &self.qs)) {
            *yj = (q as i32 - 16) as f32 * d;
        }
    }
}

impl BlockQ5_1 {
    /// Parse from exactly `BLOCK_Q5_1_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q5_1_BYTES, "BlockQ5_1::from_bytes length");
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[8..]);
        BlockQ5_1 {
            d: f16::from_le_bytes([b[0], b[1]]),
            m: f16::from_le_bytes([b[2], b[3]]),
            qh: [b[4], b[5], b[6], b[7]],
            qs,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.qh);
        out.extend_from_slice(&self.qs);
    }

    /// The block's 32 values into `y`: q·d + m with two roundings (no fused multiply-add), as
    /// gguf-py's port and the Q4_1 decoder do.
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        for (yj, &q) in y.iter_mut().zip(&codes(self.qh, &self.qs)) {
            *yj = q as f32 * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_write_round_trip_and_fifth_bit() {
        let bytes: Vec<u8> = (0..BLOCK_Q5_1_BYTES as u8)
            .map(|i| i.wrapping_mul(73).wrapping_add(5))
            .collect();
        let b = BlockQ5_1::from_bytes(&bytes);
        let mut out = Vec::new();
        b.write_to(&mut out);
        assert_eq!(out, bytes);

        // d = 1, codes: low nibbles 0, fifth bits set for elements 3 and 16 + 7 only.
        let mut raw = vec![0u8; BLOCK_Q5_0_BYTES];
        raw[..2].copy_from_slice(&f16::ONE.to_le_bytes());
        let qh: u32 = (1 << 3) | (1 << (16 + 7));
        raw[2..6].copy_from_slice(&qh.to_le_bytes());
        let blk = BlockQ5_0::from_bytes(&raw);
        let mut out = Vec::new();
        blk.write_to(&mut out);
        assert_eq!(out, raw);
        let mut y = [0f32; QK];
        blk.dequantize(&mut y);
        for (j, &v) in y.iter().enumerate() {
            let want = if j == 3 || j == 23 { 0.0 } else { -16.0 };
            assert_eq!(v, want, "element {j}");
        }
    }
}
