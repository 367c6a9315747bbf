//! ggml block layouts, byte-compatible with `block_q4_0`, `block_q4_1` and `block_q8_0` in
//! ggml-common.h. Mapped model data may sit at any alignment, so blocks are parsed from byte
//! slices with `from_le_bytes` (no pointer casts); the `#[repr(C)]` structs document the layout
//! and the size asserts pin it at compile time.

use half::f16;
use std::mem::size_of;

/// Values per block for Q4_0, Q4_1 and Q8_0 (ggml `QK4_0`, `QK4_1`, `QK8_0`).
pub const QK: usize = 32;

pub const BLOCK_Q4_0_BYTES: usize = 18;
pub const BLOCK_Q4_1_BYTES: usize = 20;
pub const BLOCK_Q8_0_BYTES: usize = 34;

/// 32 values as 4-bit codes q in 0..16 with one scale: x = (q - 8) * d.
/// `qs[j]` holds element j in its low nibble and element j + 16 in its high nibble.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 32 values as 4-bit codes with scale and minimum: x = q * d + m. Nibble order as Q4_0.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// 32 values as signed 8-bit codes with one scale: x = q * d.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(size_of::<BlockQ4_0>() == BLOCK_Q4_0_BYTES);
const _: () = assert!(size_of::<BlockQ4_1>() == BLOCK_Q4_1_BYTES);
const _: () = assert!(size_of::<BlockQ8_0>() == BLOCK_Q8_0_BYTES);
const _: () = assert!(size_of::<f16>() == 2);

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

impl BlockQ4_0 {
    /// Parse from exactly `BLOCK_Q4_0_BYTES` bytes (panics on a wrong length: callers slice
    /// whole blocks out of an already bounds-checked row).
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q4_0_BYTES, "BlockQ4_0::from_bytes length");
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[2..]);
        BlockQ4_0 {
            d: f16_at(b, 0),
            qs,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
}

impl BlockQ4_1 {
    /// Parse from exactly `BLOCK_Q4_1_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q4_1_BYTES, "BlockQ4_1::from_bytes length");
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..]);
        BlockQ4_1 {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.qs);
    }
}

impl BlockQ8_0 {
    /// Parse from exactly `BLOCK_Q8_0_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q8_0_BYTES, "BlockQ8_0::from_bytes length");
        let mut qs = [0i8; QK];
        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
            *q = byte as i8;
        }
        BlockQ8_0 {
            d: f16_at(b, 0),
            qs,
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.d.to_le_bytes());
        out.extend(self.qs.iter().map(|&q| q as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write_round_trip() {
        let bytes: Vec<u8> = (0..BLOCK_Q4_1_BYTES as u8)
            .map(|i| i.wrapping_mul(37))
            .collect();
        let b = BlockQ4_1::from_bytes(&bytes);
        assert_eq!(b.d.to_bits(), u16::from_le_bytes([bytes[0], bytes[1]]));
        assert_eq!(b.m.to_bits(), u16::from_le_bytes([bytes[2], bytes[3]]));
        let mut out = Vec::new();
        b.write_to(&mut out);
        assert_eq!(out, bytes);

        let bytes: Vec<u8> = (0..BLOCK_Q8_0_BYTES as u8)
            .map(|i| i.wrapping_mul(101))
            .collect();
        let b = BlockQ8_0::from_bytes(&bytes);
        assert_eq!(b.qs[5], bytes[7] as i8);
        let mut out = Vec::new();
        b.write_to(&mut out);
        assert_eq!(out, bytes);

        let bytes: Vec<u8> = (0..BLOCK_Q4_0_BYTES as u8)
            .map(|i| i.wrapping_mul(59))
            .collect();
        let mut out = Vec::new();
        BlockQ4_0::from_bytes(&bytes).write_to(&mut out);
        assert_eq!(out, bytes);
    }
}
