//! Every CPU kernel on every ISA this host can run, against the f64 scalar reference
//! (`edge_sft::cpu::reference`), for each weight type and awkward sizes (tails of every
//! micro-tile, k across several panel chunks).
//!
//! Tolerance for sums: the fast kernels accumulate in f32 in a different order than the f64
//! reference. Summing K terms in f32 has error ≤ K·u·Σ|terms| in the worst case and about
//! √K·u·Σ|terms| in practice (u = 2⁻²⁴ ≈ 6e-8); for K ≤ 1536 that is ≈ 2.3e-6·Σ|terms|, so we
//! allow 1e-5·Σ|terms| (plus 1e-30 for exact zeros). A wrong index, a lost tail or a
//! mis-decoded nibble gives errors of the order of a whole term, far above that.

use edge_sft::cpu::{self, reference, Isa};
use edge_sft::model::weights::{Backing, QMatrix};
use edge_sft::quant::GgmlType;
use half::{bf16, f16};
use std::sync::Arc;

const REL_TOL: f32 = 1e-5;

/// Tolerance of the bf16 path (`Isa::Avx512Bf16`, tiled products only). Rounding an f32 to
/// bf16 (8 significant bits, round to nearest even) has relative error |δ| ≤ 2⁻⁹, so a term
/// bf16(a)·bf16(b) = a·b·(1+δa)(1+δb) is off by at most (2·2⁻⁹ + 2⁻¹⁸)·|a·b| ≈ 3.91e-3·|a·b|
/// (the product itself is exact in f32). Summed over k terms that is a worst-case bound of
/// 3.91e-3·Σ|terms|, plus the f32 accumulation error above (1e-5·Σ|terms|): 4e-3·Σ|terms|
/// is therefore a hard bound, not a statistical one (typical errors are ~√k smaller).
const REL_TOL_BF16: f32 = 4e-3;

/// Tolerance of the f16-weight paths (`Isa::NeonFp16`, `Isa::Avx2F16`, tiled products with a
/// frozen weight only). f16 has 11 significant bits: rounding a weight (round to nearest even)
/// has relative error |δ| ≤ 2⁻¹¹ ≈ 4.88e-4; the activation stays f32 and the product
/// a·f16(w) is formed exactly inside the FMA, so each term is off by at most 2⁻¹¹·|a·w| and the
/// sum by at most 2⁻¹¹·Σ|terms| (a hard bound), plus the f32 accumulation error (REL_TOL).
/// Subnormal weights (|w| < 6.1e-5) carry an absolute error ≤ 2⁻²⁵ instead, ≤ 3e-8·k·max|a|,
/// below 1e-6 of Σ|terms| for these inputs (|a| ~ 1, typical |w| ≳ 1e-2). 2⁻¹¹ + REL_TOL
/// = 4.98e-4 < 5e-4: 8× tighter than the bf16 bound, as only one operand is rounded, with
/// 3 more bits.
const REL_TOL_F16: f32 = 5e-4;

/// The sum tolerance for a product computed on `isa`.
fn tol(isa: Isa) -> f32 {
    match isa {
        Isa::NeonFp16 | Isa::Avx2F16 => REL_TOL_F16,
        _ if isa.reduced_precision() => REL_TOL_BF16,
        _ => REL_TOL,
    }
}

/// xorshift64*: deterministic test data without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

const ALL_TYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

/// The types with no fused SIMD block decoder (decoded into f32 rows and panels: Q4_K and Q6_K
/// by the x86 row decoders, all but Q8_K by the NEON row decoders, the rest by the scalar
/// code); the K-quants need rows of whole 256-value super-blocks.
const ROW_DECODED_TYPES: [GgmlType; 6] = [
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Random blocks of one of `ROW_DECODED_TYPES` for `cols` values: random bytes, then small
/// finite super-block scales written over the scale fields.
fn random_blocks(rng: &mut Rng, ty: GgmlType, cols: usize, bytes: &mut Vec<u8>) {
    // Byte offsets of the f16 scale fields (d first).
    let f16_fields: &[usize] = match ty {
        GgmlType::Q5_0 => &[0],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for _ in 0..cols / ty.block_size() {
        let mut blk: Vec<u8> = (0..ty.type_size()).map(|_| rng.byte()).collect();
        for (i, &off) in f16_fields.iter().enumerate() {
            let v = rng.f() * if i == 0 { 0.01 } else { 0.2 };
            blk[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        if ty == GgmlType::Q8_K {
            blk[..4].copy_from_slice(&(rng.f() * 0.01).to_le_bytes());
        }
        bytes.extend_from_slice(&blk);
    }
}

/// A random [rows, cols] matrix of type `ty` with valid (finite) scales.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut bytes = Vec::new();
    for _ in 0..rows {
        match ty {
            GgmlType::F32 => {
                for _ in 0..cols {
                    bytes.extend_from_slice(&rng.f().to_le_bytes());
                }
            }
            GgmlType::F16 => {
                for _ in 0..cols {
                    bytes.extend_from_slice(&f16::from_f32(rng.f()).to_le_bytes());
                }
            }
            GgmlType::BF16 => {
                for _ in 0..cols {
                    bytes.extend_from_slice(&bf16::from_f32(rng.f()).to_le_bytes());
                }
            }
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                for _ in 0..cols / 32 {
                    bytes.extend_from_slice(&f16::from_f32(rng.f() * 0.05).to_le_bytes());
                    if ty == GgmlType::Q4_1 {
                        bytes.extend_from_slice(&f16::from_f32(rng.f() * 0.3).to_le_bytes());
                    }
                    let nq = if ty == GgmlType::Q8_0 { 32 } else { 16 };
                    for _ in 0..nq {
                        bytes.push(rng.byte());
                    }
                }
            }
            _ => random_blocks(&mut rng, ty, cols, &mut bytes),
        }
    }
    QMatrix::new(
        format!("test.{}", ty.name()),
        ty,
        rows,
        cols,
        Backing::Owned(Arc::new(bytes)),
        0,
    )
    .expect("test matrix fits")
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Assert |got − want| ≤ REL_TOL·mag + 1e-30 elementwise, where mag = Σ|terms| per element.
fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32]) {
    assert_close_tol(what, got, want, mag, REL_TOL)
}

/// Assert |got − want| ≤ rel·mag + 1e-30 elementwise.
fn assert_close_tol(what: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * m + 1e-30;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (|Δ| = {}, tol {tol})",
            (g - w).abs()
        );
    }
}

#[test]
fn active_isa_is_available() {
    let avail = cpu::available_isas();
    assert_eq!(avail[0], Isa::Scalar);
    assert!(avail.contains(&cpu::active_isa()));
    for isa in avail {
        assert!(!cpu::isa_name(isa).is_empty());
    }
}

#[test]
fn dequantize_is_bit_exact_with_quant_reference() {
    for ty in ALL_TYPES {
        for cols in [32, 64, 96, 576] {
            let w = random_matrix(ty, 3, cols, cols as u64);
            let mut want = vec![0.0f32; cols];
            let mut got = vec![0.0f32; cols];
            for r in 0..3 {
                edge_sft::quant::dequantize_row(ty, w.row(r), &mut want);
                for isa in cpu::available_isas() {
                    cpu::dequantize_row_with(isa, ty, w.row(r), &mut got);
                    for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            wv.to_bits(),
                            "{} {:?} row {r} col {i}: {g} vs {wv}",
                            ty.name(),
                            isa
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_wt_matches_reference() {
    // (n, rows, cols): GEMV sizes, micro-tile tails, k spanning several 256-deep panels.
    let shapes = [
        (1, 67, 96),
        (2, 33, 64),
        (3, 96, 576),
        (4, 41, 96),
        (5, 40, 64),
        (17, 131, 320),
        (64, 64, 32),
        (100, 70, 544),
    ];
    for ty in ALL_TYPES {
        for (si, &(n, rows, cols)) in shapes.iter().enumerate() {
            let w = random_matrix(ty, rows, cols, 7 + si as u64);
            let x = Rng(99 + si as u64).vec(n * cols, 1.0);
            let mut want = vec![0.0f32; n * rows];
            reference::matmul_wt(&x, n, &w, &mut want);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
            let mut mag = vec![0.0f32; n * rows];
            reference::matmul_wt(&abs(&x), n, &wabs, &mut mag);
            for isa in cpu::available_isas() {
                let mut got = vec![f32::NAN; n * rows];
                cpu::matmul_wt_with(isa, &x, n, &w, &mut got);
                let what = format!("matmul_wt {} {:?} n={n} {rows}x{cols}", ty.name(), isa);
                assert_close_tol(&what, &got, &want, &mag, tol(isa));
            }
        }
    }
}

#[test]
fn float_weights_with_odd_widths_match_reference() {
    // Plain float types have no 32-value blocks: widths like 33 take the unfused GEMV and the
    // scalar tails of the SIMD transposes.
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for (si, &(n, rows, cols)) in [(1, 10, 33), (3, 9, 7), (9, 21, 45)].iter().enumerate() {
            let w = random_matrix(ty, rows, cols, 40 + si as u64);
            let x = Rng(41 + si as u64).vec(n * cols, 1.0);
            let dy = Rng(42 + si as u64).vec(n * rows, 1.0);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
            let mut want = vec![0.0f32; n * rows];
            let mut mag = vec![0.0f32; n * rows];
            reference::matmul_wt(&x, n, &w, &mut want);
            reference::matmul_wt(&abs(&x), n, &wabs, &mut mag);
            let mut want_dx = vec![0.0f32; n * cols];
            let mut mag_dx = vec![0.0f32; n * cols];
            reference::matmul_w(&dy, n, &w, &mut want_dx);
            reference::matmul_w(&abs(&dy), n, &wabs, &mut mag_dx);
            for isa in cpu::available_isas() {
                let mut got = vec![f32::NAN; n * rows];
                cpu::matmul_wt_with(isa, &x, n, &w, &mut got);
                let what = format!("matmul_wt {} {isa:?} n={n} {rows}x{cols}", ty.name());
                assert_close_tol(&what, &got, &want, &mag, tol(isa));
                let mut got = vec![f32::NAN; n * cols];
                cpu::matmul_w_with(isa, &dy, n, &w, &mut got);
                let what = format!("matmul_w {} {isa:?} n={n} {rows}x{cols}", ty.name());
                assert_close_tol(&what, &got, &want_dx, &mag_dx, tol(isa));
            }
        }
    }
}

#[test]
fn unaligned_weights_give_identical_results() {
    // Safetensors data (and a sliced mapping) need not be aligned: the same bytes one byte
    // off must give bit-identical products on every path.
    for ty in ALL_TYPES {
        for &(n, rows, cols) in &[(1, 13, 64), (3, 9, 96), (20, 40, 64)] {
            let w = random_matrix(ty, rows, cols, 77);
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(w.bytes());
            let w1 = QMatrix::new("odd", ty, rows, cols, Backing::Owned(Arc::new(shifted)), 1)
                .expect("fits");
            let x = Rng(78).vec(n * cols, 1.0);
            let dy = Rng(79).vec(n * rows, 1.0);
            for isa in cpu::available_isas() {
                let (mut y0, mut y1) = (vec![0.0f32; n * rows], vec![0.0f32; n * rows]);
                cpu::matmul_wt_with(isa, &x, n, &w, &mut y0);
                cpu::matmul_wt_with(isa, &x, n, &w1, &mut y1);
                assert!(
                    y0 == y1,
                    "matmul_wt {} {isa:?} n={n}: unaligned differs",
                    ty.name()
                );
                let (mut d0, mut d1) = (vec![0.0f32; n * cols], vec![0.0f32; n * cols]);
                cpu::matmul_w_with(isa, &dy, n, &w, &mut d0);
                cpu::matmul_w_with(isa, &dy, n, &w1, &mut d1);
                assert!(
                    d0 == d1,
                    "matmul_w {} {isa:?} n={n}: unaligned differs",
                    ty.name()
                );
            }
        }
    }
}

#[test]
fn matmul_wt_range_is_a_slice_of_the_full_product() {
    let (n, rows, cols) = (9, 150, 128);
    let w = random_matrix(GgmlType::Q8_0, rows, cols, 5);
    let x = Rng(3).vec(n * cols, 1.0);
    for isa in cpu::available_isas() {
        let mut full = vec![0.0f32; n * rows];
        cpu::matmul_wt_with(isa, &x, n, &w, &mut full);
        let r = 37..101;
        let mut part = vec![0.0f32; n * r.len()];
        cpu::matmul_wt_range_with(isa, &x, n, &w, r.clone(), &mut part);
        let mut mag = vec![0.0f32; n * rows];
        let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
        reference::matmul_wt(&abs(&x), n, &wabs, &mut mag);
        for i in 0..n {
            let what = format!("matmul_wt_range {isa:?} row {i}");
            let want = &full[i * rows + r.start..i * rows + r.end];
            let m = &mag[i * rows + r.start..i * rows + r.end];
            assert_close(&what, &part[i * r.len()..(i + 1) * r.len()], want, m);
        }
    }
}

#[test]
fn matmul_w_matches_reference() {
    // dx[n, cols] = dy[n, rows] · W ; rows is the reduction dimension here.
    let shapes = [(1, 64, 96), (3, 300, 64), (17, 67, 160), (40, 576, 96)];
    for ty in ALL_TYPES {
        for (si, &(n, rows, cols)) in shapes.iter().enumerate() {
            let w = random_matrix(ty, rows, cols, 11 + si as u64);
            let dy = Rng(5 + si as u64).vec(n * rows, 1.0);
            let mut want = vec![0.0f32; n * cols];
            reference::matmul_w(&dy, n, &w, &mut want);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
            let mut mag = vec![0.0f32; n * cols];
            reference::matmul_w(&abs(&dy), n, &wabs, &mut mag);
            for isa in cpu::available_isas() {
                let mut got = vec![f32::NAN; n * cols];
                cpu::matmul_w_with(isa, &dy, n, &w, &mut got);
                let what = format!("matmul_w {} {:?} n={n} {rows}x{cols}", ty.name(), isa);
                assert_close_tol(&what, &got, &want, &mag, tol(isa));
            }
        }
    }
}

#[test]
fn row_decoded_types_match_reference_everywhere() {
    // Q5_0, Q5_1 and the K-quants have no fused GEMV block decoders: every ISA decodes them
    // into f32 rows and panels (GEMV rows, Wᵀ panels, and W panels whose 32- to 128-column
    // tiles cut through 256-value super-blocks), Q4_K and Q6_K with the x86 row decoders, all
    // but Q8_K with the NEON ones; on x86, Q5_0 and Q5_1 Wᵀ panels (n > 4 rows, 8 W rows at a
    // time) are decoded block by block in registers by the AVX2 packer. Exact dequantization, products within the usual tolerance, and
    // bit-identical results from unaligned bytes.
    let wt_shapes = [
        (1, 67, 256),
        (3, 96, 512),
        (4, 41, 256),
        (17, 131, 768),
        (100, 70, 512),
    ];
    // (24, 40, 2048): wide enough that K-quant tasks are one super-block wide (gemm_lr).
    let w_shapes = [
        (1, 64, 256),
        (3, 300, 512),
        (17, 67, 768),
        (40, 576, 256),
        (24, 40, 2048),
    ];
    for ty in ROW_DECODED_TYPES {
        let w = random_matrix(ty, 3, 768, 3);
        let mut want = vec![0.0f32; 768];
        let mut got = vec![0.0f32; 768];
        for r in 0..3 {
            edge_sft::quant::dequantize_row(ty, w.row(r), &mut want);
            for isa in cpu::available_isas() {
                cpu::dequantize_row_with(isa, ty, w.row(r), &mut got);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "dequantize {} {isa:?} row {r}",
                    ty.name()
                );
            }
        }
        for (si, &(n, rows, cols)) in wt_shapes.iter().enumerate() {
            let w = random_matrix(ty, rows, cols, 50 + si as u64);
            let x = Rng(51 + si as u64).vec(n * cols, 1.0);
            let mut want = vec![0.0f32; n * rows];
            reference::matmul_wt(&x, n, &w, &mut want);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
            let mut mag = vec![0.0f32; n * rows];
            reference::matmul_wt(&abs(&x), n, &wabs, &mut mag);
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(w.bytes());
            let w1 = QMatrix::new("odd", ty, rows, cols, Backing::Owned(Arc::new(shifted)), 1)
                .expect("fits");
            for isa in cpu::available_isas() {
                let mut got = vec![f32::NAN; n * rows];
                cpu::matmul_wt_with(isa, &x, n, &w, &mut got);
                let what = format!("matmul_wt {} {isa:?} n={n} {rows}x{cols}", ty.name());
                assert_close_tol(&what, &got, &want, &mag, tol(isa));
                let mut got1 = vec![f32::NAN; n * rows];
                cpu::matmul_wt_with(isa, &x, n, &w1, &mut got1);
                assert!(got == got1, "{what}: unaligned differs");
            }
        }
        for (si, &(n, rows, cols)) in w_shapes.iter().enumerate() {
            let w = random_matrix(ty, rows, cols, 60 + si as u64);
            let dy = Rng(61 + si as u64).vec(n * rows, 1.0);
            let mut want = vec![0.0f32; n * cols];
            reference::matmul_w(&dy, n, &w, &mut want);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&reference::dequantize(&w)));
            let mut mag = vec![0.0f32; n * cols];
            reference::matmul_w(&abs(&dy), n, &wabs, &mut mag);
            for isa in cpu::available_isas() {
                let mut got = vec![f32::NAN; n * cols];
                cpu::matmul_w_with(isa, &dy, n, &w, &mut got);
                let what = format!("matmul_w {} {isa:?} n={n} {rows}x{cols}", ty.name());
                assert_close_tol(&what, &got, &want, &mag, tol(isa));
            }
        }
    }
}

type F32Gemm = fn(Isa, &[f32], &[f32], &mut [f32], usize, usize, usize, bool);
type RefGemm = fn(&[f32], &[f32], &mut [f32], usize, usize, usize, bool);

#[test]
fn f32_gemms_match_reference() {
    let variants: [(&str, F32Gemm, RefGemm); 3] = [
        ("nn", cpu::matmul_f32_nn_with, reference::matmul_f32_nn),
        ("nt", cpu::matmul_f32_nt_with, reference::matmul_f32_nt),
        ("tn", cpu::matmul_f32_tn_with, reference::matmul_f32_tn),
    ];
    let shapes = [
        (1, 1, 1),
        (1, 7, 33),
        (2, 40, 300),
        (4, 64, 1000),
        // Small m, big enough to run the column pieces in parallel.
        (1, 64, 20000),
        (5, 64, 8),
        (17, 33, 67),
        (64, 300, 64),
        (130, 16, 100),
        (3, 0, 5),
    ];
    for (name, fast, slow) in variants {
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let mut rng = Rng(1000 + si as u64);
            let a = rng.vec(m * k, 1.0);
            let b = rng.vec(k * n, 1.0);
            let c0 = rng.vec(m * n, 1.0);
            for accumulate in [false, true] {
                let mut want = c0.clone();
                slow(&a, &b, &mut want, m, k, n, accumulate);
                let mut mag = if accumulate {
                    abs(&c0)
                } else {
                    vec![0.0; m * n]
                };
                slow(&abs(&a), &abs(&b), &mut mag, m, k, n, true);
                for isa in cpu::available_isas() {
                    let mut got = if accumulate {
                        c0.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    fast(isa, &a, &b, &mut got, m, k, n, accumulate);
                    let what = format!("matmul_f32_{name} {isa:?} {m}x{k}x{n} acc={accumulate}");
                    assert_close_tol(&what, &got, &want, &mag, tol(isa));
                }
            }
        }
    }
}

#[test]
fn products_are_deterministic_across_runs_and_thread_counts() {
    // Large enough to take the parallel path with many tasks.
    let (n, rows, cols) = (200, 320, 576);
    let w = random_matrix(GgmlType::Q4_1, rows, cols, 21);
    let x = Rng(22).vec(n * cols, 1.0);
    let x1 = Rng(23).vec(cols, 1.0);
    for isa in cpu::available_isas() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = vec![0.0f32; n * rows];
                cpu::matmul_wt_with(isa, &x, n, &w, &mut y);
                let mut y1 = vec![0.0f32; rows];
                cpu::matmul_wt_with(isa, &x1, 1, &w, &mut y1);
                let mut dx = vec![0.0f32; n * cols];
                cpu::matmul_w_with(isa, &y, n, &w, &mut dx);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                (bits(&y), bits(&y1), bits(&dx))
            })
        };
        let a = run(2);
        assert!(a == run(2), "{isa:?}: two runs differ");
        assert!(a == run(1), "{isa:?}: 1 thread differs from 2 threads");
        assert!(a == run(3), "{isa:?}: 3 threads differ from 2 threads");
    }
}

const LENS: [usize; 10] = [0, 1, 7, 8, 15, 16, 17, 33, 100, 1000];

#[test]
fn dot_axpy_scale_match_reference() {
    for (li, &len) in LENS.iter().enumerate() {
        let mut rng = Rng(300 + li as u64);
        let a = rng.vec(len, 2.0);
        let b = rng.vec(len, 2.0);
        let want = reference::dot(&a, &b);
        let mag = reference::dot(&abs(&a), &abs(&b));
        for isa in cpu::available_isas() {
            let what = format!("dot {isa:?} len={len}");
            assert_close(&what, &[cpu::dot_with(isa, &a, &b)], &[want], &[mag]);

            let mut y = b.clone();
            let mut y_ref = b.clone();
            cpu::axpy_with(isa, -0.75, &a, &mut y);
            reference::axpy(-0.75, &a, &mut y_ref);
            let mag: Vec<f32> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| 0.75 * x.abs() + y.abs())
                .collect();
            assert_close(&format!("axpy {isa:?} len={len}"), &y, &y_ref, &mag);

            let mut s = a.clone();
            let mut s_ref = a.clone();
            cpu::scale_with(isa, 1.7, &mut s);
            reference::scale(1.7, &mut s_ref);
            assert_close(
                &format!("scale {isa:?} len={len}"),
                &s,
                &s_ref,
                &abs(&s_ref),
            );
        }
    }
}

#[test]
fn rmsnorm_matches_reference() {
    for &(n, d) in &[(1, 1), (3, 17), (5, 576), (2, 64)] {
        let mut rng = Rng(n as u64 * 31 + d as u64);
        let x = rng.vec(n * d, 3.0);
        let w = rng.vec(d, 1.5);
        let mut want = vec![0.0f32; n * d];
        reference::rmsnorm(&x, &w, 1e-5, d, &mut want);
        for isa in cpu::available_isas() {
            let mut got = vec![f32::NAN; n * d];
            cpu::rmsnorm_with(isa, &x, &w, 1e-5, d, &mut got);
            // A few roundings per element (sum of squares, sqrt, two products).
            assert_close(
                &format!("rmsnorm {isa:?} {n}x{d}"),
                &got,
                &want,
                &abs(&want),
            );
        }
    }
}

#[test]
fn silu_mul_matches_reference() {
    for (li, &len) in LENS.iter().enumerate() {
        let mut rng = Rng(500 + li as u64);
        let mut g = rng.vec(len, 12.0);
        if len > 8 {
            // Extremes: exp overflow/underflow territory must still give finite results.
            g[0] = 100.0;
            g[1] = -100.0;
            g[2] = 0.0;
            g[3] = -87.0;
            g[4] = 89.0;
        }
        let u = rng.vec(len, 2.0);
        let mut want = vec![0.0f32; len];
        reference::silu_mul(&g, &u, &mut want);
        for isa in cpu::available_isas() {
            let mut got = vec![f32::NAN; len];
            cpu::silu_mul_with(isa, &g, &u, &mut got);
            // exp is a polynomial approximation on SIMD paths (a few ulp): 1e-5 relative.
            let mag: Vec<f32> = want.iter().map(|v| v.abs() + 1e-35).collect();
            assert_close(&format!("silu_mul {isa:?} len={len}"), &got, &want, &mag);
        }
    }
}

#[test]
fn softmax_and_logsumexp_match_reference() {
    for (li, &len) in LENS.iter().enumerate().skip(1) {
        let mut rng = Rng(700 + li as u64);
        let mut x = rng.vec(len, 20.0);
        x[0] += 1000.0; // stability: a huge maximum must not overflow
        if len > 2 {
            x[len / 2] = f32::NEG_INFINITY; // a masked position must give exactly 0
        }
        let want_lse = reference::logsumexp(&x);
        let mut want = x.clone();
        reference::softmax_inplace(&mut want);
        for isa in cpu::available_isas() {
            let lse = cpu::logsumexp_with(isa, &x);
            // ln of a sum of positive terms: relative error of the sum becomes absolute.
            assert!(
                (lse - want_lse).abs() <= 1e-5 * (1.0 + want_lse.abs()),
                "logsumexp {isa:?} len={len}: {lse} vs {want_lse}"
            );
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(cpu::max_with(isa, &x), want_max, "max {isa:?} len={len}");
            // Online-softmax step: x ← exp(x − shift), Σ returned.
            let shift = want_max - 3.0;
            let want_e: Vec<f32> = x
                .iter()
                .map(|&v| ((v - shift) as f64).exp() as f32)
                .collect();
            let want_s: f64 = want_e.iter().map(|&v| v as f64).sum();
            let mut e = x.clone();
            let s = cpu::exp_sub_inplace_with(isa, &mut e, shift);
            let mag: Vec<f32> = want_e.iter().map(|v| v + 1e-30).collect();
            assert_close(
                &format!("exp_sub_inplace {isa:?} len={len}"),
                &e,
                &want_e,
                &mag,
            );
            assert!(
                ((s as f64) - want_s).abs() <= 1e-5 * want_s,
                "exp_sub_inplace sum {isa:?} len={len}: {s} vs {want_s}"
            );
            let mut got = x.clone();
            cpu::softmax_inplace_with(isa, &mut got);
            let mag: Vec<f32> = want.iter().map(|v| v + 1e-7).collect();
            assert_close(&format!("softmax {isa:?} len={len}"), &got, &want, &mag);
            if len > 2 {
                assert_eq!(got[len / 2], 0.0, "softmax {isa:?}: masked entry");
            }
        }
    }
    for isa in cpu::available_isas() {
        assert_eq!(cpu::logsumexp_with(isa, &[]), f32::NEG_INFINITY);
        assert_eq!(cpu::max_with(isa, &[]), f32::NEG_INFINITY);
        assert_eq!(
            cpu::logsumexp_with(isa, &[f32::NEG_INFINITY; 3]),
            f32::NEG_INFINITY
        );
    }
}

/// Round every value to bf16 (round to nearest even, as the hardware conversion does).
fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// Round every value to f16 (round to nearest even).
fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

fn keep(v: &[f32]) -> Vec<f32> {
    v.to_vec()
}

/// What a reduced-precision path rounds: (activations of weight products, weights, both
/// operands of f32·f32 products).
type Rounding = (
    fn(&[f32]) -> Vec<f32>,
    fn(&[f32]) -> Vec<f32>,
    fn(&[f32]) -> Vec<f32>,
);

fn rounding(isa: Isa) -> Rounding {
    match isa {
        // Weight panel in f16, activations and f32 products untouched.
        Isa::NeonFp16 | Isa::Avx2F16 => (keep, round_f16, keep),
        // Both operands of every tiled product in bf16 (f32 products only from 32 rows).
        _ => (round_bf16, round_bf16, round_bf16),
    }
}

#[test]
fn reduced_precision_gemm_is_exact_product_of_rounded_operands() {
    // A sharper check than the 4e-3 bound: a reduced-precision path must equal the f64
    // product of its rounded operands (bf16 both, or f16 weights only) up to f32
    // accumulation error (REL_TOL), and must really round (differ from its f32 twin), on
    // every tiled product: x·Wᵀ, dy·W and the three f32 forms (those from 32 rows: fewer,
    // like LoRA's dA with rank rows, stay f32 on every path).
    for isa in cpu::available_isas()
        .into_iter()
        .filter(|i| i.reduced_precision())
    {
        let (round_x, round_w, round_f32) = rounding(isa);
        // (n, rows, cols): edge tiles (n, rows not multiples of 8 / 32), k over 2+ chunks,
        // odd k for the f32 weight (padded k pair).
        for (si, &(ty, n, rows, cols)) in [
            (GgmlType::Q4_1, 100, 70, 544),
            (GgmlType::Q8_0, 9, 33, 64),
            (GgmlType::Q4_0, 256, 64, 576),
            (GgmlType::F32, 19, 45, 33),
        ]
        .iter()
        .enumerate()
        {
            let w = random_matrix(ty, rows, cols, 300 + si as u64);
            let wr = round_w(&reference::dequantize(&w));
            let wq = QMatrix::from_f32("w_bf16", rows, cols, &wr);
            let wabs = QMatrix::from_f32("abs", rows, cols, &abs(&wr));
            let x = Rng(310 + si as u64).vec(n * cols, 1.0);
            let xr = round_x(&x);
            let (mut want, mut mag) = (vec![0.0f32; n * rows], vec![0.0f32; n * rows]);
            reference::matmul_wt(&xr, n, &wq, &mut want);
            reference::matmul_wt(&abs(&xr), n, &wabs, &mut mag);
            let mut got = vec![f32::NAN; n * rows];
            cpu::matmul_wt_with(isa, &x, n, &w, &mut got);
            let what = format!("bf16 matmul_wt {} {isa:?} n={n} {rows}x{cols}", ty.name());
            assert_close(&what, &got, &want, &mag);
            let mut f32_path = vec![0.0f32; n * rows];
            cpu::matmul_wt_with(isa.f32_isa(), &x, n, &w, &mut f32_path);
            assert!(f32_path != got, "{what}: no different from the f32 path");

            let dy = Rng(320 + si as u64).vec(n * rows, 1.0);
            let dyr = round_x(&dy);
            let (mut want, mut mag) = (vec![0.0f32; n * cols], vec![0.0f32; n * cols]);
            reference::matmul_w(&dyr, n, &wq, &mut want);
            reference::matmul_w(&abs(&dyr), n, &wabs, &mut mag);
            let mut got = vec![f32::NAN; n * cols];
            cpu::matmul_w_with(isa, &dy, n, &w, &mut got);
            let what = format!("bf16 matmul_w {} {isa:?} n={n} {rows}x{cols}", ty.name());
            assert_close(&what, &got, &want, &mag);
        }
        let variants: [(&str, F32Gemm, RefGemm); 3] = [
            ("nn", cpu::matmul_f32_nn_with, reference::matmul_f32_nn),
            ("nt", cpu::matmul_f32_nt_with, reference::matmul_f32_nt),
            ("tn", cpu::matmul_f32_tn_with, reference::matmul_f32_tn),
        ];
        for (name, fast, slow) in variants {
            let shapes = [
                (17, 33, 67),
                (64, 300, 64),
                (130, 7, 100),
                (9, 513, 40),
                (45, 37, 50),
            ];
            for &(m, k, n) in &shapes {
                let mut rng = Rng(400 + (m * k * n) as u64);
                let (a, b, c0) = (
                    rng.vec(m * k, 1.0),
                    rng.vec(k * n, 1.0),
                    rng.vec(m * n, 1.0),
                );
                let (ar, br) = if m >= 32 {
                    (round_f32(&a), round_f32(&b))
                } else {
                    (a.clone(), b.clone())
                };
                let mut want = c0.clone();
                slow(&ar, &br, &mut want, m, k, n, true);
                let mut mag = abs(&c0);
                slow(&abs(&ar), &abs(&br), &mut mag, m, k, n, true);
                let mut got = c0.clone();
                fast(isa, &a, &b, &mut got, m, k, n, true);
                let what = format!("bf16 matmul_f32_{name} {isa:?} {m}x{k}x{n}");
                assert_close(&what, &got, &want, &mag);
            }
        }
    }
}

#[test]
fn tile_unit_gemm_matches_the_bf16_vector_gemm() {
    // The AMX path multiplies the same bf16 operands as avx512bf16; only the adder differs,
    // so the two agree to f32 summation error (REL_TOL), far inside the bf16 tolerance, on
    // every edge: rows 1..=70 (partial 16- and 32-row tiles), k with and without a tail of
    // k pairs short of a 32-deep tile, k over several 256-deep chunks, odd n.
    if !cpu::available_isas().contains(&Isa::AmxBf16) {
        eprintln!("no AMX-BF16 on this host: tile-unit GEMM not exercised");
        return;
    }
    for m in (1..=70).step_by(3).chain([32, 33, 64]) {
        for &(k, n) in &[(33, 40), (64, 67), (300, 33), (544, 100), (7, 64)] {
            let mut rng = Rng(900 + (m * 1000 + k * 10 + n) as u64);
            let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
            let c0 = rng.vec(m * n, 1.0);
            let mut mag = abs(&c0);
            reference::matmul_f32_nn(&abs(&a), &abs(&b), &mut mag, m, k, n, true);
            let (mut vec, mut tiles) = (c0.clone(), c0.clone());
            cpu::matmul_f32_nn_with(Isa::Avx512Bf16, &a, &b, &mut vec, m, k, n, true);
            cpu::matmul_f32_nn_with(Isa::AmxBf16, &a, &b, &mut tiles, m, k, n, true);
            assert_close(
                &format!("amx vs avx512bf16 nn {m}x{k}x{n}"),
                &tiles,
                &vec,
                &mag,
            );

            let w = random_matrix(GgmlType::Q4_1, n, k.div_ceil(32) * 32, 950 + m as u64);
            let kk = w.cols;
            let x = rng.vec(m * kk, 1.0);
            let (mut vec, mut tiles) = (vec![0.0; m * n], vec![0.0; m * n]);
            cpu::matmul_wt_with(Isa::Avx512Bf16, &x, m, &w, &mut vec);
            cpu::matmul_wt_with(Isa::AmxBf16, &x, m, &w, &mut tiles);
            let wabs = QMatrix::from_f32("abs", n, kk, &abs(&reference::dequantize(&w)));
            let mut mag = vec![0.0; m * n];
            reference::matmul_wt(&abs(&x), m, &wabs, &mut mag);
            assert_close(
                &format!("amx vs avx512bf16 wt {m}x{kk}x{n}"),
                &tiles,
                &vec,
                &mag,
            );
        }
    }
}
