//! How attention is cut into tiles: the tile sizes, which keys a query sees (causal, with an
//! optional sliding window), and the row copies that gather a head's columns into a tile.

use super::shape::AttnShape;

/// Query rows per tile in training. The query heads of one kv head are stacked (3 × 32 rows
/// for SmolLM2), so K and V panels are still amortized over ~100 rows, while the masked half
/// of the diagonal tile, computed and thrown away, stays small (32 rather than 64 wide: 10%
/// faster at 256 tokens).
pub const BLOCK: usize = 32;
/// Query rows per tile for one head alone (`attend_head`, inference prefill).
pub(super) const HEAD_BLOCK: usize = 64;
/// Keys per score tile: a [3·BLOCK, KEY_TILE] f32 tile is 192 KiB, so backward's P and dP
/// tiles and the K, V tiles stay in a 1–2 MiB L2.
pub(super) const KEY_TILE: usize = 512;

/// First key a query at position `pos` sees under `window` (0: unlimited).
#[inline]
pub(super) fn first_key(pos: usize, window: usize) -> usize {
    if window == 0 {
        0
    } else {
        (pos + 1).saturating_sub(window)
    }
}

/// Copy column block `col..col+w` of rows `r0..r0+n` of a row-major [*, stride] matrix.
pub fn gather(src: &[f32], stride: usize, r0: usize, n: usize, col: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * w];
    gather_into(src, stride, r0, n, col, w, &mut out);
    out
}

/// `gather` into `dst` [n, w].
pub(super) fn gather_into(
    src: &[f32],
    stride: usize,
    r0: usize,
    n: usize,
    col: usize,
    w: usize,
    dst: &mut [f32],
) {
    for (i, d) in dst[..n * w].chunks_exact_mut(w).enumerate() {
        let r = r0 + i;
        copy_row(d, &src[r * stride + col..r * stride + col + w]);
    }
}

/// d ← s for one head's row, in 16-float pieces that the compiler copies inline: a libc
/// memcpy call per 64-float row costs more than the copy itself.
#[inline]
pub(super) fn copy_row(d: &mut [f32], s: &[f32]) {
    assert_eq!(d.len(), s.len(), "copy_row: lengths");
    let mut dc = d.chunks_exact_mut(16);
    let mut sc = s.chunks_exact(16);
    for (a, b) in (&mut dc).zip(&mut sc) {
        let (a, b): (&mut [f32; 16], &[f32; 16]) = (a.try_into().unwrap(), b.try_into().unwrap());
        *a = *b;
    }
    dc.into_remainder().copy_from_slice(sc.remainder());
}

/// Copy k and v [T, kvd] head-major into `kh`, `vh` [n_kv_heads, T, hd], so each head's keys
/// are the contiguous [*, hd] operand the GEMMs take.
pub(super) fn split_heads(s: AttnShape, k: &[f32], v: &[f32], kh: &mut [f32], vh: &mut [f32]) {
    let (kvd, hd) = (s.kvd(), s.head_dim);
    let t = k.len() / kvd;
    for g in 0..s.n_kv_heads {
        gather_into(
            k,
            kvd,
            0,
            t,
            g * hd,
            hd,
            &mut kh[g * t * hd..(g + 1) * t * hd],
        );
        gather_into(
            v,
            kvd,
            0,
            t,
            g * hd,
            hd,
            &mut vh[g * t * hd..(g + 1) * t * hd],
        );
    }
}
