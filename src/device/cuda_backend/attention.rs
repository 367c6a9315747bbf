//! Causal attention within records through attention.cu. Its layouts: q, o [T, hq, hd], k, v
//! [T, hkv, hd] (the arena's), lse and delta [hq, T] (the CPU keeps lse as [T, hq]; both fill
//! the arena's [T · heads] buffer, and only this backend reads what it wrote).
//!
//! attention.cu gives each lane head_dim / 32 values, so head_dim must be a multiple of 32.
//! Other head sizes (the tiny test models' 8 and 16) run on copies padded with zero columns to
//! the next multiple: zeros add nothing to q·k, give zero output columns from zero v columns
//! and zero gradient columns, so the unpadded results are exact.

use super::kernels::{grid, per_value};
use super::mem::{addr, DView, DViewMut};
use super::{check, grow, Cuda, CudaCtx};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, PushKernelArg};

/// attention_backward's inputs.
pub(crate) struct BwdIn<'a> {
    pub q: DView<'a>,
    pub k: DView<'a>,
    pub v: DView<'a>,
    pub o: DView<'a>,
    pub lse: DView<'a>,
    pub d_o: DView<'a>,
}

/// The shape of one block's attention call.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
    /// hd rounded up to a multiple of 32.
    hp: usize,
    window: i32,
    scale: f32,
}

impl Shape {
    fn q_len(&self) -> usize {
        self.rows * self.hq * self.hd
    }
    fn kv_len(&self) -> usize {
        self.rows * self.hkv * self.hd
    }
}

impl Cuda<'_> {
    fn attn_shape(&self, ctx: &CudaCtx, li: usize) -> Shape {
        let c = &self.model.config;
        Shape {
            rows: ctx.t,
            hq: c.n_heads,
            hkv: c.n_kv_heads,
            hd: c.head_dim,
            hp: c.head_dim.next_multiple_of(32),
            window: c.window(li) as i32,
            scale: c.attn_scale(),
        }
    }

    /// dst [n_rows, dst_w] columns 0..w = src [n_rows, src_w] columns 0..w.
    fn copy_cols(
        &self,
        src: CUdeviceptr,
        src_w: usize,
        w: usize,
        n_rows: usize,
        dst_w: usize,
        dst: CUdeviceptr,
    ) {
        let n = n_rows * w;
        if n == 0 {
            return;
        }
        let (sw, ww, nn, dw) = (src_w as i32, w as i32, n as i64, dst_w as i32);
        let mut b = self.stream().launch_builder(&self.k.copy_cols);
        b.arg(&src).arg(&sw).arg(&ww).arg(&nn).arg(&dw).arg(&dst);
        // SAFETY: callers pass src holding n_rows · src_w values and dst n_rows · dst_w, with
        // w <= both widths; one thread per copied value.
        check("attention head padding", unsafe { b.launch(per_value(n)) });
    }

    /// Padded copy: [rows · heads, hd] → [rows · heads, hp] (pad columns zeroed first).
    fn pad_into(&self, s: Shape, heads: usize, src: DView<'_>, dst: &CudaSlice<f32>) {
        let n_rows = s.rows * heads;
        assert!(src.len == n_rows * s.hd && dst.len() >= n_rows * s.hp);
        let dst_ptr = addr(dst);
        super::mem::zero_raw(self.stream(), dst_ptr, n_rows * s.hp);
        self.copy_cols(src.ptr, s.hd, s.hd, n_rows, s.hp, dst_ptr);
    }

    /// Unpadded copy: [rows · heads, hp] → [rows · heads, hd].
    fn unpad_into(&self, s: Shape, heads: usize, src: &CudaSlice<f32>, dst: &DViewMut<'_>) {
        let n_rows = s.rows * heads;
        assert!(dst.len == n_rows * s.hd && src.len() >= n_rows * s.hp);
        self.copy_cols(addr(src), s.hp, s.hd, n_rows, s.hd, dst.ptr);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attn_forward(
        &self,
        ctx: &CudaCtx,
        li: usize,
        q: DView<'_>,
        k: DView<'_>,
        v: DView<'_>,
        att: &DViewMut<'_>,
        lse: &DViewMut<'_>,
    ) {
        let s = self.attn_shape(ctx, li);
        assert!(
            q.len == s.q_len()
                && att.len == s.q_len()
                && k.len == s.kv_len()
                && v.len == s.kv_len()
                && lse.len == s.rows * s.hq,
            "attention: buffer sizes for {} rows",
            s.rows
        );
        if s.rows == 0 {
            return;
        }
        self.bind();
        if s.hp == s.hd {
            self.launch_fwd(ctx, s, [q.ptr, k.ptr, v.ptr, att.ptr, lse.ptr]);
            return;
        }
        let mut sc = self.scratch();
        let st = self.stream();
        for (i, n) in [(0, s.hq), (1, s.hkv), (2, s.hkv), (3, s.hq)] {
            grow(st, &mut sc.pad[i], s.rows * n * s.hp);
        }
        self.pad_into(s, s.hq, q, &sc.pad[0]);
        self.pad_into(s, s.hkv, k, &sc.pad[1]);
        self.pad_into(s, s.hkv, v, &sc.pad[2]);
        let p: Vec<CUdeviceptr> = sc.pad[..4].iter().map(addr).collect();
        self.launch_fwd(
            ctx,
            Shape { hd: s.hp, ..s },
            [p[0], p[1], p[2], p[3], lse.ptr],
        );
        self.unpad_into(s, s.hq, &sc.pad[3], att);
    }

    /// attn_fwd on [q, k, v, o, lse] laid out for `s.hd` (a multiple of 32).
    fn launch_fwd(&self, ctx: &CudaCtx, s: Shape, [q, k, v, o, lse]: [CUdeviceptr; 5]) {
        let (seg, pos) = (addr(&ctx.seg), addr(&ctx.pos));
        let (r, hq, hkv, hd) = (s.rows as i32, s.hq as i32, s.hkv as i32, s.hd as i32);
        let mut b = self.stream().launch_builder(&self.k.attn_fwd);
        b.arg(&q).arg(&k).arg(&v).arg(&seg).arg(&pos);
        b.arg(&r)
            .arg(&hq)
            .arg(&hkv)
            .arg(&hd)
            .arg(&s.window)
            .arg(&s.scale);
        b.arg(&o).arg(&lse);
        // SAFETY: q, o hold rows · hq · hd values and k, v rows · hkv · hd (asserted by the
        // caller, or the padded scratch grown to that); lse rows · hq; seg and pos hold the
        // batch's rows values (batch_ctx); hd is a multiple of 32 and at most 256 (Cuda::new).
        // Grid (ceil(rows / 4), hq), block 128 as attention.cu declares.
        check("attention forward", unsafe {
            b.launch(grid(((s.rows as u32).div_ceil(4), s.hq as u32, 1), 128))
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attn_backward(
        &self,
        ctx: &CudaCtx,
        li: usize,
        x: BwdIn<'_>,
        dq: &DViewMut<'_>,
        dk: &DViewMut<'_>,
        dv: &DViewMut<'_>,
    ) {
        let s = self.attn_shape(ctx, li);
        let (ql, kvl) = (s.q_len(), s.kv_len());
        assert!(
            [x.q.len, x.o.len, x.d_o.len, dq.len] == [ql; 4]
                && [x.k.len, x.v.len, dk.len, dv.len] == [kvl; 4]
                && x.lse.len == s.rows * s.hq,
            "attention backward: buffer sizes for {} rows",
            s.rows
        );
        if s.rows == 0 {
            return;
        }
        self.bind();
        let mut sc = self.scratch();
        let st = self.stream();
        grow(st, &mut sc.delta, s.rows * s.hq);
        let delta = addr(&sc.delta);
        if s.hp == s.hd {
            let ins = [
                x.q.ptr, x.k.ptr, x.v.ptr, x.o.ptr, x.d_o.ptr, x.lse.ptr, delta,
            ];
            self.launch_bwd(ctx, s, ins, [dq.ptr, dk.ptr, dv.ptr]);
            return;
        }
        // pad: q, k, v, o, do, dq, dk, dv
        let heads = [s.hq, s.hkv, s.hkv, s.hq, s.hq, s.hq, s.hkv, s.hkv];
        for (i, h) in heads.iter().enumerate() {
            grow(st, &mut sc.pad[i], s.rows * h * s.hp);
        }
        self.pad_into(s, s.hq, x.q, &sc.pad[0]);
        self.pad_into(s, s.hkv, x.k, &sc.pad[1]);
        self.pad_into(s, s.hkv, x.v, &sc.pad[2]);
        self.pad_into(s, s.hq, x.o, &sc.pad[3]);
        self.pad_into(s, s.hq, x.d_o, &sc.pad[4]);
        let p: Vec<CUdeviceptr> = sc.pad.iter().map(addr).collect();
        self.launch_bwd(
            ctx,
            Shape { hd: s.hp, ..s },
            [p[0], p[1], p[2], p[3], p[4], x.lse.ptr, delta],
            [p[5], p[6], p[7]],
        );
        self.unpad_into(s, s.hq, &sc.pad[5], dq);
        self.unpad_into(s, s.hkv, &sc.pad[6], dk);
        self.unpad_into(s, s.hkv, &sc.pad[7], dv);
    }

    /// attn_bwd_dq then attn_bwd_dkdv on buffers laid out for `s.hd` (a multiple of 32).
    fn launch_bwd(
        &self,
        ctx: &CudaCtx,
        s: Shape,
        [q, k, v, o, d_o, lse, delta]: [CUdeviceptr; 7],
        [dq, dk, dv]: [CUdeviceptr; 3],
    ) {
        let (seg, pos) = (addr(&ctx.seg), addr(&ctx.pos));
        let (r, hq, hkv, hd) = (s.rows as i32, s.hq as i32, s.hkv as i32, s.hd as i32);
        let blocks = (s.rows as u32).div_ceil(4);
        let mut b = self.stream().launch_builder(&self.k.attn_bwd_dq);
        b.arg(&q)
            .arg(&k)
            .arg(&v)
            .arg(&o)
            .arg(&d_o)
            .arg(&lse)
            .arg(&seg)
            .arg(&pos);
        b.arg(&r)
            .arg(&hq)
            .arg(&hkv)
            .arg(&hd)
            .arg(&s.window)
            .arg(&s.scale);
        b.arg(&dq).arg(&delta);
        // SAFETY: q, o, do, dq hold rows · hq · hd values, k, v rows · hkv · hd (asserted by
        // the caller, or the padded scratch grown to that); lse and delta (scratch grown to it)
        // rows · hq; seg, pos rows. Grid (ceil(rows / 4), hq), block 128 as declared.
        check("attention backward (dq)", unsafe {
            b.launch(grid((blocks, s.hq as u32, 1), 128))
        });
        let mut b = self.stream().launch_builder(&self.k.attn_bwd_dkdv);
        b.arg(&q)
            .arg(&k)
            .arg(&v)
            .arg(&d_o)
            .arg(&lse)
            .arg(&delta)
            .arg(&seg)
            .arg(&pos);
        b.arg(&r)
            .arg(&hq)
            .arg(&hkv)
            .arg(&hd)
            .arg(&s.window)
            .arg(&s.scale);
        b.arg(&dk).arg(&dv);
        // SAFETY: as above; dk, dv hold rows · hkv · hd values. Grid (ceil(rows / 4), hkv),
        // block 128, after attn_bwd_dq on the same stream (it reads delta).
        check("attention backward (dk, dv)", unsafe {
            b.launch(grid((blocks, s.hkv as u32, 1), 128))
        });
    }
}
