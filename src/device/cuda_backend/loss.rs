//! The fused response-masked NLL through nll.cu: per vocabulary chunk, logits [m, C] by cuBLAS
//! against the output matrix's rows decoded to f32, then the kernels' online log-sum-exp (pass 1)
//! and softmax − onehot gradient with dh += dlogits · W_chunk (pass 2). Only one [m, C] tile
//! exists at a time.

use super::gemm::{gemm, n, t as tr};
use super::kernels::{grid, per_value};
use super::mem::{addr, download, whole, DView, DViewMut, LossScratch};
use super::{check, Cuda};
use cudarc::driver::PushKernelArg;

impl Cuda<'_> {
    /// Each row's NLL (host f64) and dhs [m, d] = grad_scale · ∂Σnll/∂hs.
    pub(crate) fn nll(
        &self,
        sc: &mut LossScratch,
        hs: DView<'_>,
        targets: &[u32],
        grad_scale: f32,
        dhs: &DViewMut<'_>,
    ) -> Vec<f64> {
        let out = &self.w.output;
        let (m, d, vocab) = (targets.len(), out.cols, out.rows);
        assert!(
            hs.len == m * d && dhs.len == m * d,
            "fused loss: hs {} dhs {} for {m} rows of {d}",
            hs.len,
            dhs.len
        );
        if m == 0 {
            return Vec::new();
        }
        // nll_chunk_grad puts rows on the grid's y dimension.
        assert!(
            m <= 65535,
            "fused loss: {m} scored rows (at most 65535 per micro-batch)"
        );
        if let Some(&bad) = targets.iter().find(|&&y| y as usize >= vocab) {
            panic!("fused loss: target {bad} outside the vocabulary ({vocab})");
        }
        let st = self.stream();
        if sc.rows < m || sc.d != d || sc.chunk > vocab {
            *sc = LossScratch::new(st, m, d, vocab);
        }
        self.bind();
        let what = "fused loss";
        let tg: Vec<i32> = targets.iter().map(|&y| y as i32).collect();
        check(what, st.memcpy_htod(&tg, &mut sc.targets));
        check(
            what,
            st.memcpy_htod(&vec![f32::NEG_INFINITY; m], &mut sc.row_max),
        );
        check(
            what,
            st.memcpy_htod(&vec![grad_scale; m], &mut sc.row_scale),
        );
        check(what, st.memset_zeros(&mut sc.row_sum));
        check(what, st.memset_zeros(&mut sc.target_logit));
        let (logits, wtile) = (addr(&sc.logits), addr(&sc.wtile));
        let (tgt, mx, sm, tl) = (
            addr(&sc.targets),
            addr(&sc.row_max),
            addr(&sc.row_sum),
            addr(&sc.target_logit),
        );
        let (rs, loss) = (addr(&sc.row_scale), addr(&sc.loss));
        let chunk = sc.chunk;
        let mi = m as i32;
        // logits [m, cn] = hs [m, d] · W[c0..c0 + cn] [cn, d]ᵀ; returns the decoded rows.
        let logits_of = |c0: usize, cn: usize| {
            let wp = out.f32_rows(&self.k, st, c0, c0 + cn, wtile);
            let (a, b) = (n(hs.ptr, d), tr(wp, d));
            gemm(&self.blas, what, m, cn, d, 1.0, a, b, 0.0, logits);
            wp
        };

        // Pass 1: running max, sum of exp and the target's logit per row.
        for c0 in (0..vocab).step_by(chunk) {
            let cn = chunk.min(vocab - c0);
            logits_of(c0, cn);
            let (cni, c0i) = (cn as i32, c0 as i32);
            let mut b = st.launch_builder(&self.k.nll_chunk_stats);
            b.arg(&logits)
                .arg(&cni)
                .arg(&c0i)
                .arg(&tgt)
                .arg(&mx)
                .arg(&sm)
                .arg(&tl);
            // SAFETY: logits holds m · cn values (the scratch holds rows · chunk >= m · cn),
            // targets and the three statistics m values each (rows >= m); grid = m rows.
            check(what, unsafe { b.launch(grid((m as u32, 1, 1), 256)) });
        }
        let mut b = st.launch_builder(&self.k.nll_finalize);
        b.arg(&mx).arg(&sm).arg(&tl).arg(&mi).arg(&loss);
        // SAFETY: every buffer holds at least m values; one thread per row.
        check(what, unsafe { b.launch(per_value(m)) });

        // Pass 2: dlogits = (softmax − onehot) · grad_scale, dhs += dlogits · W_chunk.
        super::mem::memset_zero(st, dhs);
        for c0 in (0..vocab).step_by(chunk) {
            let cn = chunk.min(vocab - c0);
            let wp = logits_of(c0, cn);
            let (cni, c0i) = (cn as i32, c0 as i32);
            let mut b = st.launch_builder(&self.k.nll_chunk_grad);
            b.arg(&logits)
                .arg(&cni)
                .arg(&c0i)
                .arg(&tgt)
                .arg(&mx)
                .arg(&sm)
                .arg(&rs);
            // SAFETY: logits holds m · cn values, targets / statistics / row_scale m each;
            // grid (ceil(cn / 256), m) as nll.cu declares.
            check(what, unsafe {
                b.launch(grid(((cn as u32).div_ceil(256), m as u32, 1), 256))
            });
            // dhs [m, d] += dlogits [m, cn] · W_chunk [cn, d]
            gemm(
                &self.blas,
                what,
                m,
                d,
                cn,
                1.0,
                n(logits, cn),
                n(wp, d),
                1.0,
                dhs.ptr,
            );
        }
        download(st, whole(&sc.loss).sub(0, m))
            .into_iter()
            .map(f64::from)
            .collect()
    }
}
