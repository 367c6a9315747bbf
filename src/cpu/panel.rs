//! B panels for the GEMM driver: f32 [kc, ldb] tiles of the right-hand matrix, cut from a
//! strided f32 buffer or dequantized from a frozen weight (as W or as Wᵀ), zero-padded to a
//! multiple of the microkernel's width.

use super::dispatch::Isa;
use super::vecops::dequant_unchecked;
#[cfg(target_arch = "x86_64")]
use super::x86::{bf16, pack512, pack512::Rows};
use crate::model::weights::QMatrix;
use crate::quant::kquants::QK_K;

/// Where B(p, j) (p < k, j < n) comes from.
#[derive(Clone, Copy)]
pub(crate) enum BSrc<'a> {
    /// B(p, j) = b[p*rs + j*cs]
    F32 { b: &'a [f32], rs: usize, cs: usize },
    /// B(p, j) = W[row0 + j, p]: Wᵀ, for y = x·Wᵀ.
    Wt { w: &'a QMatrix, row0: usize },
    /// B(p, j) = W[p, j], for dx = dy·W.
    W { w: &'a QMatrix },
}

/// Dequantize W[r, c0..c0+len] into `out`.
///
/// The drivers cut k into chunks of 256 and columns into tasks of 32 to 128, so segments
/// are whole blocks of the 32-value types, but may cut through a K-quant's 256-value
/// super-block (columns of dy·W). Such a segment decodes every super-block it touches whole
/// into a stack buffer and copies out its part: exact, at up to 8× the decoding work for
/// those panels.
fn dequant_segment(isa: Isa, w: &QMatrix, r: usize, c0: usize, out: &mut [f32]) {
    let bs = w.dtype.block_size();
    let ts = w.dtype.type_size();
    let row = w.row(r);
    let end = c0 + out.len();
    if c0.is_multiple_of(bs) && end.is_multiple_of(bs) {
        dequant_unchecked(isa, w.dtype, &row[c0 / bs * ts..end / bs * ts], out);
        return;
    }
    assert!(bs <= QK_K, "dequant_segment: block of {bs} values");
    let mut buf = [0f32; QK_K];
    let blk = &mut buf[..bs];
    for b in c0 / bs..end.div_ceil(bs) {
        dequant_unchecked(isa, w.dtype, &row[b * ts..(b + 1) * ts], blk);
        // The overlap of this block's values b·bs..(b+1)·bs with c0..end.
        let (lo, hi) = ((b * bs).max(c0), ((b + 1) * bs).min(end));
        out[lo - c0..hi - c0].copy_from_slice(&blk[lo - b * bs..hi - b * bs]);
    }
}

/// dst[p*ldb + r] = src[r*lds + p] for r < 8, p < kc with the ISA's SIMD transpose; false if
/// the ISA has none (the caller then does it element by element).
fn transpose8(isa: Isa, src: &[f32], lds: usize, kc: usize, dst: &mut [f32], ldb: usize) -> bool {
    assert!(kc == 0 || (src.len() >= 7 * lds + kc && dst.len() >= (kc - 1) * ldb + 8));
    match isa.f32_isa() {
        // SAFETY: the sizes were asserted above; the caller ran check(isa), and both x86
        // ISAs include AVX2.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe {
            super::x86::pack::transpose8(src.as_ptr(), lds, kc, dst.as_mut_ptr(), ldb);
            true
        },
        // SAFETY: as above; NEON was checked by the caller.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe {
            super::arm::neon::transpose8(src.as_ptr(), lds, kc, dst.as_mut_ptr(), ldb);
            true
        },
        _ => false,
    }
}

/// Types the x86 transposed packer decodes block by block in registers: those with a fused
/// 32-value decoder, and Q5_0/Q5_1 (Gemma 3's attention and MLP weights), which otherwise
/// went through a row buffer and a separate transpose.
#[cfg(target_arch = "x86_64")]
fn has_wt8_pack(ty: crate::quant::GgmlType) -> bool {
    use crate::quant::GgmlType;
    super::vecops::has_block32_simd(ty) || matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1)
}

/// dst[p*ldb + r] = W[r0 + r, p0 + p] for r < 8, p < kc (multiples of 32), decoded straight
/// into the transposed panel by the ISA's code; false if the ISA or the type has no such code.
fn pack_wt8(
    isa: Isa,
    w: &QMatrix,
    r0: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
    ldb: usize,
) -> bool {
    assert!(kc == 0 || dst.len() >= (kc - 1) * ldb + 8);
    match isa.f32_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if has_wt8_pack(w.dtype) => {
            let rows: [&[u8]; 8] = std::array::from_fn(|r| w.row(r0 + r));
            // SAFETY: dst's size was asserted above; pack_wt8 checks the rows hold p0 + kc
            // values and that p0, kc are multiples of 32; the caller ran check(isa), and both
            // x86 ISAs include AVX2.
            unsafe { super::x86::pack::pack_wt8(w.dtype, &rows, p0, kc, dst.as_mut_ptr(), ldb) };
            true
        }
        _ => {
            let _ = (w, r0, p0, kc, ldb);
            false
        }
    }
}

/// Fill panel[p*ldb + j] = B(p0 + p, j0 + j) for p < kc, j < nb; zero for nb ≤ j < ldb.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b(
    isa: Isa,
    src: BSrc,
    p0: usize,
    kc: usize,
    j0: usize,
    nb: usize,
    panel: &mut [f32],
    ldb: usize,
    tmp: &mut [f32],
) {
    match src {
        BSrc::F32 { b, rs: 1, cs } if cs != 1 => {
            // B = bᵀ with b row-major [n, k]: columns of B are contiguous; transpose 8 at once.
            for jg in (0..nb).step_by(8) {
                let g = 8.min(nb - jg);
                let base = (j0 + jg) * cs + p0;
                if g == 8 && transpose8(isa, &b[base..], cs, kc, &mut panel[jg..], ldb) {
                    continue;
                }
                for r in 0..g {
                    for p in 0..kc {
                        panel[p * ldb + jg + r] = b[base + r * cs + p];
                    }
                }
            }
            for prow in panel.chunks_exact_mut(ldb).take(kc) {
                prow[nb..].fill(0.0);
            }
        }
        BSrc::F32 { b, rs, cs } => {
            for (p, prow) in panel.chunks_exact_mut(ldb).take(kc).enumerate() {
                let base = (p0 + p) * rs + j0 * cs;
                if cs == 1 {
                    prow[..nb].copy_from_slice(&b[base..base + nb]);
                } else {
                    for (j, v) in prow[..nb].iter_mut().enumerate() {
                        *v = b[base + j * cs];
                    }
                }
                prow[nb..].fill(0.0);
            }
        }
        BSrc::Wt { w, row0 } => {
            // Dequantize 8 W rows (contiguous in p), then transpose them into the panel.
            let direct = p0.is_multiple_of(32) && kc.is_multiple_of(32);
            for jg in (0..nb).step_by(8) {
                let g = 8.min(nb - jg);
                if g == 8
                    && direct
                    && pack_wt8(isa, w, row0 + j0 + jg, p0, kc, &mut panel[jg..], ldb)
                {
                    continue;
                }
                for r in 0..g {
                    dequant_segment(
                        isa,
                        w,
                        row0 + j0 + jg + r,
                        p0,
                        &mut tmp[r * kc..(r + 1) * kc],
                    );
                }
                if g == 8 && transpose8(isa, tmp, kc, kc, &mut panel[jg..], ldb) {
                    continue;
                }
                for r in 0..g {
                    for (p, &v) in tmp[r * kc..(r + 1) * kc].iter().enumerate() {
                        panel[p * ldb + jg + r] = v;
                    }
                }
            }
            for prow in panel.chunks_exact_mut(ldb).take(kc) {
                prow[nb..].fill(0.0);
            }
        }
        BSrc::W { w } => {
            #[cfg(target_arch = "x86_64")]
            if isa.f32_isa() == Isa::Avx512 && j0.is_multiple_of(32) && nb.is_multiple_of(32) {
                if let Some(rows) = block_rows(w, p0, kc, (j0 + nb) / 32) {
                    assert!(panel.len() >= kc * ldb && ldb >= nb);
                    // SAFETY: block_rows checked rows p0..p0+kc and their blocks up to
                    // (j0+nb)/32; the panel holds kc rows of ldb ≥ nb; the caller ran
                    // check(isa) and Avx512 includes FMA and F16C.
                    unsafe {
                        pack512::pack_w_f32(
                            w.dtype,
                            rows,
                            kc,
                            j0 / 32,
                            nb / 32,
                            panel.as_mut_ptr(),
                            ldb,
                        )
                    };
                    return;
                }
            }
            for (p, prow) in panel.chunks_exact_mut(ldb).take(kc).enumerate() {
                dequant_segment(isa, w, p0 + p, j0, &mut prow[..nb]);
                prow[nb..].fill(0.0);
            }
        }
    }
}

/// Rows r0..r0+n of `w` as raw block rows, if they exist, each holds at least `blocks`
/// 32-value blocks, and the type has a 32-value block decoder: the check behind every direct
/// decoder call.
#[cfg(target_arch = "x86_64")]
fn block_rows(w: &QMatrix, r0: usize, n: usize, blocks: usize) -> Option<Rows> {
    if !super::vecops::has_block32_simd(w.dtype) {
        return None;
    }
    let bytes = w.bytes();
    let stride = w.row_bytes();
    let need = w.dtype.row_bytes(32 * blocks)?;
    let fits = n > 0
        && r0 + n <= w.rows
        && 32 * blocks <= w.cols
        && need <= stride
        && (r0 + n - 1) * stride + need <= bytes.len();
    fits.then(|| Rows {
        base: bytes[r0 * stride..].as_ptr(),
        stride,
    })
}

/// The bf16 k-pair panel of the `Avx512Bf16` driver (layout in `x86/bf16.rs`):
/// out[q*2*ldb + 2j + t] = bf16(B(p0 + 2q + t, j0 + j)) for q < kc.div_ceil(2), j < nb; zero
/// for nb ≤ j < ldb and for the missing odd row of an odd kc. Frozen weights with aligned
/// blocks are decoded and rounded in one pass; anything else goes through the f32 `panel`
/// (kc rows of ldb) and `tmp` (8·kc) first. ldb is a multiple of 16, ≥ nb.
///
/// The caller ran `check(Isa::Avx512Bf16)`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b_bf16(
    src: BSrc,
    p0: usize,
    kc: usize,
    j0: usize,
    nb: usize,
    out: &mut [u16],
    ldb: usize,
    panel: &mut [f32],
    tmp: &mut [f32],
) {
    assert!(ldb.is_multiple_of(16) && ldb >= nb && out.len() >= kc.div_ceil(2) * 2 * ldb);
    let o = out.as_mut_ptr();
    match src {
        BSrc::Wt { w, row0 }
            if p0.is_multiple_of(32) && kc.is_multiple_of(32) && nb.is_multiple_of(8) =>
        {
            if let Some(rows) = block_rows(w, row0 + j0, nb, (p0 + kc) / 32) {
                // SAFETY: block_rows checked W rows row0+j0..+nb and their blocks up to
                // (p0+kc)/32; out holds kc/2 pair rows of 2·ldb, ldb ≥ nb; the caller ran
                // check(Avx512Bf16), which includes AVX2, FMA and F16C.
                unsafe { pack512::pack_wt_bf16(w.dtype, rows, nb, p0 / 32, kc / 32, o, ldb) };
                return;
            }
        }
        BSrc::W { w } if j0.is_multiple_of(32) && nb.is_multiple_of(32) => {
            if let Some(rows) = block_rows(w, p0, kc, (j0 + nb) / 32) {
                // SAFETY: block_rows checked W rows p0..p0+kc and their blocks up to
                // (j0+nb)/32; out holds kc.div_ceil(2) pair rows of 2·ldb, ldb ≥ nb; the
                // caller ran check(Avx512Bf16).
                unsafe { pack512::pack_w_bf16(w.dtype, rows, kc, j0 / 32, nb / 32, o, ldb) };
                return;
            }
        }
        _ => {}
    }
    pack_b(Isa::Avx512, src, p0, kc, j0, nb, panel, ldb, tmp);
    assert!(panel.len() >= kc * ldb);
    // SAFETY: the panel holds kc rows of ldb (a multiple of 16) f32; out has room for
    // kc.div_ceil(2)·2·ldb u16 (asserted above); the caller ran check(Avx512Bf16).
    unsafe { bf16::pack_b_pairs(panel.as_ptr(), kc, ldb, o) };
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::model::weights::Backing;
    use crate::quant::dequant::quantize_row;
    use crate::quant::{dequantize_row, GgmlType};
    use std::sync::Arc;

    const TYPES: [GgmlType; 6] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ];

    /// A [rows, cols] weight of type `ty` from pseudo-random values, and its exact f32
    /// dequantization by the scalar decoder (the reference).
    fn weight(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> (QMatrix, Vec<f32>) {
        let mut s = seed;
        let mut bytes = Vec::new();
        for _ in 0..rows {
            let row: Vec<f32> = (0..cols)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
                })
                .collect();
            quantize_row(ty, &row, &mut bytes);
        }
        let w = QMatrix::new("w", ty, rows, cols, Backing::Owned(Arc::new(bytes)), 0).unwrap();
        let mut deq = vec![0.0; rows * cols];
        for (r, out) in deq.chunks_exact_mut(cols).enumerate() {
            dequantize_row(ty, w.row(r), out);
        }
        (w, deq)
    }

    fn bf(x: f32) -> u16 {
        bf16::to_bf16(x)
    }

    #[test]
    fn direct_bf16_panels_equal_rounded_scalar_dequantization() {
        if !crate::cpu::dispatch::supported(Isa::Avx512Bf16) {
            eprintln!("no AVX512-BF16 here: skipped");
            return;
        }
        let (rows, cols) = (72, 160);
        for (ti, &ty) in TYPES.iter().enumerate() {
            let (w, deq) = weight(ty, rows, cols, 11 + ti as u64);
            // Wᵀ panels: B(p, j) = W[row0 + j0 + j, p]; k chunks of whole blocks.
            for &(row0, j0, nb, p0, kc) in &[
                (0usize, 0usize, 64usize, 0usize, 160usize),
                (8, 16, 40, 32, 64),
            ] {
                let ldb = nb.div_ceil(32) * 32;
                let mut out = vec![7u16; kc / 2 * 2 * ldb];
                // No f32 scratch: the fallback (f32 panel, then pairs) would fail on it, so
                // passing proves these aligned shapes take the direct decoder.
                let src = BSrc::Wt { w: &w, row0 };
                pack_b_bf16(src, p0, kc, j0, nb, &mut out, ldb, &mut [], &mut []);
                for q in 0..kc / 2 {
                    for j in 0..ldb {
                        for t in 0..2 {
                            let want = if j < nb {
                                bf(deq[(row0 + j0 + j) * cols + p0 + 2 * q + t])
                            } else {
                                0
                            };
                            let got = out[q * 2 * ldb + 2 * j + t];
                            assert_eq!(got, want, "{ty:?} Wt q {q} j {j} t {t}");
                        }
                    }
                }
            }
            // W panels: B(p, j) = W[p0 + p, j0 + j], with an odd kc (zero last pair half).
            for &(p0, kc, j0, nb) in &[
                (0usize, 72usize, 0usize, 160usize),
                (5, 33, 64, 64),
                (3, 8, 32, 32),
            ] {
                let ldb = nb.div_ceil(32) * 32 + 32;
                let mut out = vec![7u16; kc.div_ceil(2) * 2 * ldb];
                let src = BSrc::W { w: &w };
                pack_b_bf16(src, p0, kc, j0, nb, &mut out, ldb, &mut [], &mut []);
                for q in 0..kc.div_ceil(2) {
                    for j in 0..ldb {
                        for t in 0..2 {
                            let p = 2 * q + t;
                            let want = if j < nb && p < kc {
                                bf(deq[(p0 + p) * cols + j0 + j])
                            } else {
                                0
                            };
                            let got = out[q * 2 * ldb + 2 * j + t];
                            assert_eq!(got, want, "{ty:?} W p {p} j {j}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f32_w_panels_equal_scalar_dequantization() {
        let (rows, cols) = (40, 128);
        for isa in crate::cpu::available_isas() {
            for (ti, &ty) in TYPES.iter().enumerate() {
                let (w, deq) = weight(ty, rows, cols, 31 + ti as u64);
                for &(p0, kc, j0, nb) in &[
                    (0usize, 40usize, 0usize, 128usize),
                    (7, 9, 32, 64),
                    (1, 3, 96, 32),
                ] {
                    let ldb = nb + 16;
                    let mut panel = vec![7.0; kc * ldb];
                    let mut tmp = vec![0.0; 8 * kc];
                    pack_b(
                        isa,
                        BSrc::W { w: &w },
                        p0,
                        kc,
                        j0,
                        nb,
                        &mut panel,
                        ldb,
                        &mut tmp,
                    );
                    for p in 0..kc {
                        for j in 0..ldb {
                            let want = if j < nb {
                                deq[(p0 + p) * cols + j0 + j]
                            } else {
                                0.0
                            };
                            let got = panel[p * ldb + j];
                            assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} {ty:?} {p} {j}");
                        }
                    }
                }
            }
        }
    }
}
