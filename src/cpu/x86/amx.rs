//! AMX-BF16 microkernel (Intel Sapphire Rapids and later): the same operands as `bf16.rs`
//! — A rounded to bf16 in rows, B in k-pair panels — multiplied by the tile unit instead of
//! `vdpbf16ps`.
//!
//! The layouts need no repacking: a B tile is 16 rows of 64 bytes, and one pair row of a
//! `bf16.rs` panel, 16 columns × 2 k steps, is exactly one such row; an A tile is 16 rows of
//! 32 bf16 (16 k pairs), a slice of 16 packed A rows. `tdpbf16ps C, A, B` then adds, for each
//! of 16×16 outputs, Σ over 16 pairs of a[2q]·b[2q] + a[2q+1]·b[2q+1].
//!
//! Micro-tile: 32 rows × 32 columns in the eight tile registers:
//! tmm0..tmm3 = C [2 row halves × 2 column halves] of 16×16 f32, tmm4/tmm5 = A rows 0..16 /
//! 16..32, tmm6/tmm7 = B columns 0..16 / 16..32. One k step of 32 loads 4 tiles for 4
//! products (each 8,192 multiply-adds). The k pairs that do not fill a last tile of 16 go
//! through the `vdpbf16ps` kernel afterwards. Products of bf16 values are exact in f32 and
//! both units add them in k order into f32, so the two paths agree to f32 rounding (the tile
//! unit may round a pair's two products together), not bit for bit; each is deterministic.
//!
//! Linux hands out the tile state only after `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`
//! (`request_permission`, once per process, by `dispatch` before it lists the path). The
//! tile configuration (row counts follow the edge tile) is loaded only when a call needs a
//! different one than the thread's last: `ldtilecfg` cost a fifth of the kernel's time when
//! every call loaded and released its own. So a worker thread keeps its tiles configured
//! between calls, and the OS saves 8 KB of tile state when it switches such a thread out.

use super::bf16;
use std::arch::asm;
use std::cell::Cell;

thread_local! {
    /// The (r0, r1) row split of the tile configuration this thread loaded last, if any.
    static LOADED: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Rows of a micro-tile (two A tiles of 16).
pub(crate) const MR: usize = 32;
/// Columns of a micro-tile: the same as `bf16::NR`, so the panels are shared.
pub(crate) const NR: usize = bf16::NR;

/// True when the CPU reports AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and
/// Linux granted this process the tile data state.
pub(crate) fn request_permission() -> bool {
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (the caller's precondition for
    // listing this path); arch_prctl only changes this process's permission bits.
    unsafe {
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (tile, bf16) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 22 & 1 == 1);
        if !(tile && bf16) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The 64-byte LDTILECFG operand: palette 1, then per tile its bytes per row (u16 at
/// 16 + 2t) and its rows (u8 at 48 + t). A tile with 0 rows is unconfigured.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(r0: usize, r1: usize) -> Self {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        // (tile, rows): C(0,·) and A0 take r0 rows, C(1,·) and A1 r1, B tiles 16 pair rows.
        let shapes = [
            (0, r0),
            (1, r0),
            (2, r1),
            (3, r1),
            (4, r0),
            (5, r1),
            (6, 16),
            (7, 16),
        ];
        for (t, rows) in shapes {
            if rows > 0 {
                cfg[16 + 2 * t] = 64;
                cfg[48 + t] = rows as u8;
            }
        }
        TileConfig(cfg)
    }
}

/// C[i, j] (+)= Σ_{q < kp} Σ_{t < 2} A(i, 2q+t)·B(2q+t, j) for i < rows ≤ MR, j < NR: the
/// contract of `bf16::kernel` with 32 rows instead of 8.
///
/// # Safety
/// a holds `rows` rows of 2·kp u16 at stride lda; b holds kp pair rows of 2·NR u16 at stride
/// ldb2; C(i, j) for i < rows, j < NR is writable; the CPU has AVX512-BF16 and AMX-BF16 and
/// `request_permission` returned true.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn kernel(
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb2: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    overwrite: bool,
) {
    debug_assert!((1..=MR).contains(&rows));
    let k_tiles = kp / 16;
    if k_tiles > 0 {
        let (r0, r1) = (rows.min(16), rows.saturating_sub(16));
        if LOADED.get() != Some((r0, r1)) {
            let cfg = TileConfig::new(r0, r1);
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            LOADED.set(Some((r0, r1)));
        }
        // Byte strides of the three operands.
        let (sa, sb, sc) = (2 * lda, 2 * ldb2, 4 * ldc);
        let c1 = c.add(16 * ldc);
        if overwrite {
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
            if r1 > 0 {
                asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
        } else {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                c = in(reg) c, s = in(reg) sc, options(nostack, readonly)
            );
            if r1 > 0 {
                asm!(
                    "tileloadd tmm2, [{c} + {s}*1]",
                    "tileloadd tmm3, [{c} + {s}*1 + 64]",
                    c = in(reg) c1, s = in(reg) sc, options(nostack, readonly)
                );
            }
        }
        for t in 0..k_tiles {
            let ap = a.add(32 * t);
            let bp = b.add(16 * t * ldb2);
            asm!(
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a = in(reg) ap, sa = in(reg) sa, b = in(reg) bp, sb = in(reg) sb,
                options(nostack, readonly)
            );
            if r1 > 0 {
                asm!(
                    "tileloadd tmm5, [{a} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a = in(reg) ap.add(16 * lda), sa = in(reg) sa,
                    options(nostack, readonly)
                );
            }
        }
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            c = in(reg) c, s = in(reg) sc, options(nostack)
        );
        if r1 > 0 {
            asm!(
                "tilestored [{c} + {s}*1], tmm2",
                "tilestored [{c} + {s}*1 + 64], tmm3",
                c = in(reg) c1, s = in(reg) sc, options(nostack)
            );
        }
    }
    // The last kp mod 16 pairs, 8 rows at a time, after the tiles (still in k order).
    let done = 16 * k_tiles;
    if done < kp {
        for g in (0..rows).step_by(bf16::MR) {
            bf16::kernel(
                kp - done,
                a.add(g * lda + 2 * done),
                lda,
                b.add(done * ldb2),
                ldb2,
                c.add(g * ldc),
                ldc,
                bf16::MR.min(rows - g),
                overwrite && k_tiles == 0,
            );
        }
    }
}
