//! What the tiled GEMM drivers (`gemm`, `gemm_bf16`, `gemm_f16`) share: the low-rank term a
//! product may fold in, the edge tile every microkernel call on a ragged border goes through,
//! and the C pointer their tasks share. Kept out of the drivers so imports run one way:
//! `gemm` calls `gemm_bf16` / `gemm_f16`, and all three take these types from here.

use super::panel::BSrc;

/// A low-rank term folded into a product: C += U·V with U [m, r] row-major and
/// V(p, j) = v[p*rs + j*cs] for p < r — LoRA's `us · Bᵀ` (forward) or `du · A` (backward).
/// The driver adds it to each output tile right after the tile's main k loop, while the
/// tile is still in cache, as one more (short) k chunk: no extra pass over C.
#[derive(Clone, Copy)]
pub(crate) struct LowRank<'a> {
    pub u: &'a [f32],
    pub r: usize,
    pub v: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> LowRank<'a> {
    pub(crate) fn check(&self, m: usize, n: usize) {
        assert!(
            self.u.len() >= m * self.r,
            "low-rank term: U must be [{m}, {}]",
            self.r
        );
        assert!(
            self.r == 0 || n == 0 || (self.r - 1) * self.rs + (n - 1) * self.cs < self.v.len(),
            "low-rank term: V too short"
        );
    }
    pub(crate) fn src(&self) -> BSrc<'a> {
        BSrc::F32 {
            b: self.v,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// A micro-tile of C at `c` (row stride `ldc`): `rows` × `ncols` real values, computed by a
/// kernel that always writes `nr` columns.
pub(crate) struct EdgeTile {
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub ncols: usize,
    pub nr: usize,
}

impl EdgeTile {
    /// Run `kernel(c, ldc)` on the tile: in place when all `nr` columns are real, otherwise
    /// through `scratch` (≥ rows·nr values), copying the real columns in (unless `overwrite`)
    /// and back out.
    ///
    /// # Safety
    /// The rows × ncols values at `c` (stride ldc) are valid and owned by the caller's task.
    #[inline]
    pub(crate) unsafe fn run(
        &self,
        scratch: &mut [f32],
        overwrite: bool,
        kernel: impl FnOnce(*mut f32, usize),
    ) {
        let (c, ldc, nr) = (self.c, self.ldc, self.nr);
        if self.ncols == nr {
            return kernel(c, ldc);
        }
        assert!(
            scratch.len() >= self.rows * nr,
            "edge tile: scratch too small"
        );
        if !overwrite {
            for r in 0..self.rows {
                for q in 0..self.ncols {
                    scratch[r * nr + q] = *c.add(r * ldc + q);
                }
            }
        }
        kernel(scratch.as_mut_ptr(), nr);
        for r in 0..self.rows {
            for q in 0..self.ncols {
                *c.add(r * ldc + q) = scratch[r * nr + q];
            }
        }
    }
}

/// A raw C pointer that tasks share; each task writes a disjoint tile.
#[derive(Clone, Copy)]
pub(crate) struct CPtr(pub *mut f32);
// SAFETY: tasks only write disjoint C tiles (see each driver), so sharing the pointer is sound.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}
