//! One adapted projection: the frozen weight decoded to f32 in scratch and multiplied by
//! cuBLAS, the LoRA term as two more SGEMMs (scale folded into alpha, the sum into beta = 1),
//! the bias by a row kernel; the backward as in `train::proj::proj_backward` without dropout.

use super::gemm::{gemm, n, t as tr};
use super::kernels::per_value;
use super::lora::CudaPair;
use super::mem::{addr, DView, DViewMut, Dev};
use super::{check, Cuda};
use crate::model::lora::Target;
use crate::train::backend::LoraBuf;
use cudarc::driver::PushKernelArg;

impl Cuda<'_> {
    /// y [t, out] = x [t, in] · Wᵀ (+ bias) (+ scale · (x · Aᵀ) · Bᵀ, keeping
    /// us = scale · x · Aᵀ [t, rank] in `lb`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn proj_fwd(
        &self,
        li: usize,
        tg: Target,
        x: DView<'_>,
        t: usize,
        pair: Option<&CudaPair>,
        scale: f32,
        y: &DViewMut<'_>,
        lb: Option<&LoraBuf<Dev>>,
    ) {
        let (w, bias) = self.w.weight(li, tg);
        let (din, dout) = (w.cols, w.rows);
        assert!(
            x.len == t * din && y.len == t * dout,
            "projection {tg:?} of block {li}: x {} y {} for {t} rows of {din} -> {dout}",
            x.len,
            y.len
        );
        if t == 0 {
            return;
        }
        self.bind();
        let what = "projection forward";
        {
            let sc = self.scratch();
            let wp = w.f32_rows(&self.k, self.stream(), 0, dout, addr(&sc.decode));
            // y [t, out] = x [t, in] · W [out, in]ᵀ; the scratch stays locked until queued.
            gemm(
                &self.blas,
                what,
                t,
                dout,
                din,
                1.0,
                n(x.ptr, din),
                tr(wp, din),
                0.0,
                y.ptr,
            );
        }
        if let (Some(p), Some(lb)) = (pair, lb) {
            let r = p.rank;
            assert!(
                p.in_dim == din && p.out_dim == dout && lb.us.len() >= t * r,
                "projection {tg:?} of block {li}: adapter {}x{} rank {r}, us {}",
                p.out_dim,
                p.in_dim,
                lb.us.len()
            );
            let (a, b) = p.addrs();
            let us = lb.us.ptr();
            // us [t, r] = scale · x [t, in] · A [r, in]ᵀ
            gemm(
                &self.blas,
                what,
                t,
                r,
                din,
                scale,
                n(x.ptr, din),
                tr(a, din),
                0.0,
                us,
            );
            // y += us [t, r] · B [out, r]ᵀ
            gemm(
                &self.blas,
                what,
                t,
                dout,
                r,
                1.0,
                n(us, r),
                tr(b, r),
                1.0,
                y.ptr,
            );
        }
        if let Some(bias) = bias {
            assert_eq!(bias.len(), dout, "bias length");
            let (b_ptr, nn, cols) = (addr(bias), (t * dout) as i64, dout as i32);
            let mut b = self.stream().launch_builder(&self.k.add_bias_rows);
            b.arg(&y.ptr).arg(&b_ptr).arg(&nn).arg(&cols);
            // SAFETY: y holds t · out values (asserted), the bias out; one thread per value.
            check("projection bias", unsafe { b.launch(per_value(t * dout)) });
        }
    }

    /// dx [t, in] (+)= dy [t, out] · W; with an adapter, its buffers and a gradient slot:
    /// dB += dyᵀ · us, du = scale · dy · B, dA += duᵀ · x, dx += du · A.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn proj_bwd(
        &self,
        li: usize,
        tg: Target,
        x: DView<'_>,
        t: usize,
        lora: Option<(&CudaPair, &LoraBuf<Dev>, &mut CudaPair)>,
        scale: f32,
        dy: DView<'_>,
        dx: &DViewMut<'_>,
        accumulate: bool,
        du: &DViewMut<'_>,
    ) {
        let (w, _) = self.w.weight(li, tg);
        let (din, dout) = (w.cols, w.rows);
        assert!(
            x.len == t * din && dx.len == t * din && dy.len == t * dout,
            "projection {tg:?} of block {li} backward: x {} dx {} dy {} for {t} rows of \
             {din} -> {dout}",
            x.len,
            dx.len,
            dy.len
        );
        if t == 0 {
            return;
        }
        self.bind();
        let what = "projection backward";
        let beta = if accumulate { 1.0 } else { 0.0 };
        {
            let sc = self.scratch();
            let wp = w.f32_rows(&self.k, self.stream(), 0, dout, addr(&sc.decode));
            // dx [t, in] (+)= dy [t, out] · W [out, in]
            gemm(
                &self.blas,
                what,
                t,
                din,
                dout,
                1.0,
                n(dy.ptr, dout),
                n(wp, din),
                beta,
                dx.ptr,
            );
        }
        let Some((p, lb, g)) = lora else { return };
        let r = p.rank;
        assert!(
            p.in_dim == din
                && p.out_dim == dout
                && lb.us.len() >= t * r
                && du.len >= t * r
                && g.a.len() == p.a.len()
                && g.b.len() == p.b.len(),
            "projection {tg:?} of block {li} backward: adapter or scratch sizes"
        );
        let (a, b) = p.addrs();
        let us = lb.us.ptr();
        let (ga, gb) = g.views_mut();
        // dB [out, r] += dy [t, out]ᵀ · us [t, r]
        gemm(
            &self.blas,
            what,
            dout,
            r,
            t,
            1.0,
            tr(dy.ptr, dout),
            n(us, r),
            1.0,
            gb.ptr,
        );
        // du [t, r] = scale · dy [t, out] · B [out, r]
        gemm(
            &self.blas,
            what,
            t,
            r,
            dout,
            scale,
            n(dy.ptr, dout),
            n(b, r),
            0.0,
            du.ptr,
        );
        // dA [r, in] += du [t, r]ᵀ · x [t, in]
        gemm(
            &self.blas,
            what,
            r,
            din,
            t,
            1.0,
            tr(du.ptr, r),
            n(x.ptr, din),
            1.0,
            ga.ptr,
        );
        // dx += du [t, r] · A [r, in]
        gemm(
            &self.blas,
            what,
            t,
            din,
            r,
            1.0,
            n(du.ptr, r),
            n(a, din),
            1.0,
            dx.ptr,
        );
    }
}
