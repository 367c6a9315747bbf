//! B panels for the GEMM driver: f32 [kc, ldb] tiles of the right-hand matrix, cut from a
//! strided f32 buffer or dequantized from a frozen weight (as W or as Wᵀ), zero-padded to a
//! multiple of the microkernel's width.

use super::dispatch::Isa;
use super::vecops::dequant_unchecked;
use crate::model::weights::QMatrix;

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

/// Dequantize W[r, c0..c0+len] (block-aligned) into `out`.
fn dequant_segment(isa: Isa, w: &QMatrix, r: usize, c0: usize, out: &mut [f32]) {
    let bs = w.dtype.block_size();
    let ts = w.dtype.type_size();
    debug_assert!(c0.is_multiple_of(bs) && out.len().is_multiple_of(bs));
    let row = w.row(r);
    let bytes = &row[c0 / bs * ts..(c0 + out.len()) / bs * ts];
    dequant_unchecked(isa, w.dtype, bytes, out);
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

/// dst[p*ldb + r] = W[r0 + r, p0 + p] for r < 8, p < kc (multiples of 32), decoded straight
/// into the transposed panel by the ISA's code; false if the ISA has no such code.
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
        Isa::Avx2 | Isa::Avx512 => {
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
            for (p, prow) in panel.chunks_exact_mut(ldb).take(kc).enumerate() {
                dequant_segment(isa, w, p0 + p, j0, &mut prow[..nb]);
                prow[nb..].fill(0.0);
            }
        }
    }
}
