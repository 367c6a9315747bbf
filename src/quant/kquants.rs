//! ggml's K-quant super-blocks (`block_q4_K`, `block_q5_K`, `block_q6_K`, `block_q8_K` in
//! ggml-common.h, with `QK_K = 256`): layouts, parsing and scalar dequantization,
//! bit-identical to ggml's `dequantize_row_q{4,5,6,8}_K` (and to gguf-py's numpy port).
//!
//! A super-block holds 256 values as sub-blocks, each with its own small integer scale (and
//! for Q4_K/Q5_K a minimum) that is itself quantized against the super-block's f16 scales
//! `d` and `dmin`. A tensor row must therefore be a whole number of 256-value super-blocks;
//! `GgmlType::row_bytes` refuses any other length, and the GGUF reader turns that into an
//! error naming the tensor.
//!
//! As everywhere in `quant`, blocks are parsed from byte slices (mapped data can sit at any
//! alignment), and every product is rounded once in f32 with no fused multiply-add, in the
//! order ggml's scalar code writes it: d·sc first, then times the code, then minus dmin·m.

use half::f16;
use std::mem::size_of;

/// Values per super-block (ggml `QK_K`).
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales and mins of Q4_K and Q5_K (ggml `K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

pub const BLOCK_Q4_K_BYTES: usize = 144;
pub const BLOCK_Q5_K_BYTES: usize = 176;
pub const BLOCK_Q6_K_BYTES: usize = 210;
pub const BLOCK_Q8_K_BYTES: usize = 292;

/// 256 values as 8 sub-blocks of 32 with 4-bit codes q:
/// x = (d·sc[s])·q − (dmin·m[s]) for sub-block s, with 6-bit sc and m packed in `scales`
/// (see [`scale_min`]). `qs` holds 64 values per 32 bytes: for the 64 values starting at
/// 64·i, `qs[32·i + l]` has value 64·i + l in its low nibble and 64·i + 32 + l in its high.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// As Q4_K with a 5th bit per code: value 64·i + l takes bit 2i of `qh[l]`, and value
/// 64·i + 32 + l bit 2i + 1 (l < 32, i < 4).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 256 values as 16 sub-blocks of 16 with signed 6-bit codes q − 32 and signed 8-bit scales:
/// x = (d·sc[s])·(q − 32). The codes are split into low 4 bits (`ql`) and high 2 bits
/// (`qh`), in two halves of 128 values. Within half h (ql from 64·h, qh from 32·h), for
/// l < 32: value 128h + l     = ql[l]      low nibble  | qh[l] bits 0..2,
///         value 128h + 32 + l = ql[l + 32] low nibble  | qh[l] bits 2..4,
///         value 128h + 64 + l = ql[l]      high nibble | qh[l] bits 4..6,
///         value 128h + 96 + l = ql[l + 32] high nibble | qh[l] bits 6..8.
/// The scale of value v is `scales[v / 16]`. Note `d` comes last.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 256 values as signed 8-bit codes with one f32 scale: x = d·q. ggml uses it for the
/// activations of its K-quant dot products; `bsums` (sums of 16 codes each) serve those and
/// do not enter dequantization.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(size_of::<BlockQ4K>() == BLOCK_Q4_K_BYTES);
const _: () = assert!(size_of::<BlockQ5K>() == BLOCK_Q5_K_BYTES);
const _: () = assert!(size_of::<BlockQ6K>() == BLOCK_Q6_K_BYTES);
const _: () = assert!(size_of::<BlockQ8K>() == BLOCK_Q8_K_BYTES);

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[i], b[i + 1]])
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// The row contract of the SIMD K-quant decoders: `src` is whole blocks of `block_bytes`,
/// `dst` their 256 values each.
pub(crate) fn check_row_len(src: &[u8], dst: &[f32], block_bytes: usize) {
    assert!(
        src.len().is_multiple_of(block_bytes) && src.len() / block_bytes * QK_K == dst.len(),
        "K-quant row decoder: {} bytes for {} values",
        src.len(),
        dst.len()
    );
}

fn f16_le(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The (d·sc, dmin·m) factor pairs of a Q4_K or Q5_K block's 8 sub-blocks (both start with
/// d, dmin and the 12 scale bytes), computed as the scalar decoder does; the SIMD decoders
/// multiply codes by them.
pub(crate) fn q45k_factors(blk: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (f16_le(&blk[0..2]), f16_le(&blk[2..4]));
    let mut scales = [0u8; K_SCALE_SIZE];
    scales.copy_from_slice(&blk[4..16]);
    std::array::from_fn(|s| {
        let (sc, m) = scale_min(s, &scales);
        (d * sc as f32, dmin * m as f32)
    })
}

/// The d·sc factors of a Q6_K block's 16 sub-blocks.
pub(crate) fn q6k_factors(blk: &[u8]) -> [f32; 16] {
    let d = f16_le(&blk[208..210]);
    std::array::from_fn(|s| d * (blk[192 + s] as i8) as f32)
}

/// The 6-bit scale and min of sub-block `s` (< 8) of a Q4_K/Q5_K super-block.
///
/// 8 scales and 8 mins of 6 bits are 96 bits, packed into 12 bytes so that sub-blocks 0..4
/// read with a single mask: bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins
/// 0..4 likewise. Sub-blocks 4..8 are split: their low 4 bits are the nibbles of bytes 8..12
/// (scale low, min high), and their top 2 bits ride in the spare top 2 bits of bytes 0..4
/// (scales) and 4..8 (mins).
pub fn scale_min(s: usize, scales: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if s < 4 {
        (scales[s] & 63, scales[s + 4] & 63)
    } else {
        let sc = (scales[s + 4] & 0x0F) | ((scales[s - 4] >> 6) << 4);
        let m = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
        (sc, m)
    }
}

impl BlockQ4K {
    /// Parse from exactly `BLOCK_Q4_K_BYTES` bytes (panics on a wrong length: callers slice
    /// whole blocks out of an already bounds-checked row).
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q4_K_BYTES, "BlockQ4K::from_bytes length");
        BlockQ4K {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: array(&b[4..16]),
            qs: array(&b[16..]),
        }
    }

    /// The 256 values into `y` (`y.len() == 256`).
    pub fn dequantize(&self, y: &mut [f32]) {
        assert_eq!(y.len(), QK_K, "BlockQ4K::dequantize length");
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        // Each 64 values: sub-blocks 2i (low nibbles) and 2i + 1 (high nibbles).
        for (i, (y64, q)) in y
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (sc0, m0) = scale_min(2 * i, &self.scales);
            let (sc1, m1) = scale_min(2 * i + 1, &self.scales);
            let (d0, mn0) = (d * sc0 as f32, dmin * m0 as f32);
            let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
            let (lo, hi) = y64.split_at_mut(32);
            for l in 0..32 {
                lo[l] = d0 * (q[l] & 0x0F) as f32 - mn0;
                hi[l] = d1 * (q[l] >> 4) as f32 - mn1;
            }
        }
    }
}

impl BlockQ5K {
    /// Parse from exactly `BLOCK_Q5_K_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q5_K_BYTES, "BlockQ5K::from_bytes length");
        BlockQ5K {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: array(&b[4..16]),
            qh: array(&b[16..48]),
            qs: array(&b[48..]),
        }
    }

    /// The 256 values into `y` (`y.len() == 256`).
    pub fn dequantize(&self, y: &mut [f32]) {
        assert_eq!(y.len(), QK_K, "BlockQ5K::dequantize length");
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for (i, (y64, q)) in y
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (sc0, m0) = scale_min(2 * i, &self.scales);
            let (sc1, m1) = scale_min(2 * i + 1, &self.scales);
            let (d0, mn0) = (d * sc0 as f32, dmin * m0 as f32);
            let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
            let (lo, hi) = y64.split_at_mut(32);
            for l in 0..32 {
                let h0 = ((self.qh[l] >> (2 * i)) & 1) << 4;
                let h1 = ((self.qh[l] >> (2 * i + 1)) & 1) << 4;
                lo[l] = d0 * ((q[l] & 0x0F) | h0) as f32 - mn0;
                hi[l] = d1 * ((q[l] >> 4) | h1) as f32 - mn1;
            }
        }
    }
}

impl BlockQ6K {
    /// Parse from exactly `BLOCK_Q6_K_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q6_K_BYTES, "BlockQ6K::from_bytes length");
        let sc: [u8; QK_K / 16] = array(&b[192..208]);
        BlockQ6K {
            ql: array(&b[..128]),
            qh: array(&b[128..192]),
            scales: sc.map(|s| s as i8),
            d: f16_at(b, 208),
        }
    }

    /// The 256 values into `y` (`y.len() == 256`).
    pub fn dequantize(&self, y: &mut [f32]) {
        assert_eq!(y.len(), QK_K, "BlockQ6K::dequantize length");
        let d = self.d.to_f32();
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let y128 = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                // The four values sharing qh[l]: 32 apart, in the order of its bit pairs.
                let q = [
                    (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let v = 128 * h + 32 * k + l;
                    let sc = d * self.scales[v / 16] as f32;
                    y128[32 * k + l] = sc * (qk as i32 - 32) as f32;
                }
            }
        }
    }
}

impl BlockQ8K {
    /// Parse from exactly `BLOCK_Q8_K_BYTES` bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), BLOCK_Q8_K_BYTES, "BlockQ8K::from_bytes length");
        let qs: [u8; QK_K] = array(&b[4..260]);
        let mut bsums = [0i16; QK_K / 16];
        for (s, c) in bsums.iter_mut().zip(b[260..].chunks_exact(2)) {
            *s = i16::from_le_bytes([c[0], c[1]]);
        }
        BlockQ8K {
            d: f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            qs: qs.map(|q| q as i8),
            bsums,
        }
    }

    /// The 256 values into `y` (`y.len() == 256`).
    pub fn dequantize(&self, y: &mut [f32]) {
        assert_eq!(y.len(), QK_K, "BlockQ8K::dequantize length");
        for (yj, &q) in y.iter_mut().zip(&self.qs) {
            *yj = self.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs 8 scales and 8 mins (each < 64) the way `scale_min` reads them.
    fn pack(sc: [u8; 8], m: [u8; 8]) -> [u8; K_SCALE_SIZE] {
        let mut p = [0u8; K_SCALE_SIZE];
        for j in 0..4 {
            p[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            p[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            p[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        p
    }

    #[test]
    fn scale_min_unpacks_every_6_bit_value() {
        for base in 0..64u8 {
            let sc: [u8; 8] = std::array::from_fn(|j| (base + 7 * j as u8) % 64);
            let m: [u8; 8] = std::array::from_fn(|j| (base * 3 + 11 * j as u8) % 64);
            let p = pack(sc, m);
            for s in 0..8 {
                assert_eq!(scale_min(s, &p), (sc[s], m[s]), "base {base} sub-block {s}");
            }
        }
    }

    #[test]
    fn q4k_layout_places_nibbles_and_scales() {
        // d = 1, dmin = 0.5; sub-block s has scale s + 1 and min s; every code is 1 (low
        // nibbles) or 2 (high nibbles). Value v lies in sub-block v / 32.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::ONE.to_le_bytes());
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&pack(
            std::array::from_fn(|s| s as u8 + 1),
            std::array::from_fn(|s| s as u8),
        ));
        b.extend(std::iter::repeat_n(0x21u8, QK_K / 2));
        let blk = BlockQ4K::from_bytes(&b);
        let mut y = [0f32; QK_K];
        blk.dequantize(&mut y);
        for (v, &x) in y.iter().enumerate() {
            let s = v / 32;
            let q = if s % 2 == 0 { 1.0 } else { 2.0 };
            assert_eq!(x, (s + 1) as f32 * q - 0.5 * s as f32, "value {v}");
        }
    }

    #[test]
    fn q6k_and_q8k_parse_their_trailing_fields() {
        let mut b: Vec<u8> = (0..BLOCK_Q6_K_BYTES)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        b[192] = 0xFF; // scale -1
        b[208..210].copy_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        let blk = BlockQ6K::from_bytes(&b);
        assert_eq!(blk.scales[0], -1);
        assert_eq!(blk.d.to_f32(), -2.0);

        let mut b = vec![0u8; BLOCK_Q8_K_BYTES];
        b[..4].copy_from_slice(&0.25f32.to_le_bytes());
        b[4] = 0x80; // -128
        b[290..292].copy_from_slice(&(-300i16).to_le_bytes());
        let blk = BlockQ8K::from_bytes(&b);
        assert_eq!(blk.bsums[15], -300);
        let mut y = [1f32; QK_K];
        blk.dequantize(&mut y);
        assert_eq!(y[0], -32.0);
        assert!(y[1..].iter().all(|&v| v == 0.0));
    }
}
