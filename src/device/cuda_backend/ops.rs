//! The element-wise and per-row operations of a block: RMSNorm forward and backward, RoPE, the
//! gated activations, adds, and row gathers / scatters.

use super::kernels::{grid, per_value};
use super::mem::{addr, DView, DViewMut};
use super::{check, grow, Cuda, CudaCtx};
use crate::model::config::{Activation, RopeStyle};
use crate::train::backend::Norm;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::PushKernelArg;

impl Cuda<'_> {
    /// dst += scale · src (lora.cu's `lora_axpy`).
    pub(crate) fn axpy(&self, src: DView<'_>, scale: f32, dst: &DViewMut<'_>) {
        assert_eq!(src.len, dst.len, "add: lengths differ");
        if src.len == 0 {
            return;
        }
        let n = src.len as i64;
        let mut b = self.stream().launch_builder(&self.k.lora_axpy);
        b.arg(&src.ptr).arg(&scale).arg(&n).arg(&dst.ptr);
        // SAFETY: src and dst hold n f32 each (asserted equal); one thread per value.
        check("add", unsafe { b.launch(per_value(src.len)) });
    }

    /// gather (dst [k, width] = src rows) or scatter (dst rows = src [k, width]).
    pub(crate) fn rows_op(
        &self,
        gather: bool,
        src: DView<'_>,
        rows: &[usize],
        width: usize,
        dst: DViewMut<'_>,
    ) {
        let what = if gather {
            "gather rows"
        } else {
            "scatter rows"
        };
        let n = rows.len() * width;
        if n == 0 {
            return;
        }
        // The indexed side must hold every named row.
        let indexed = if gather { src.len } else { dst.len };
        let packed = if gather { dst.len } else { src.len };
        let max_row = rows.iter().copied().max().unwrap_or(0);
        assert!(
            (max_row + 1) * width <= indexed && n <= packed,
            "{what}: row {max_row} of width {width} outside {indexed} values, or {n} > {packed}"
        );
        let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        self.bind();
        let idx_d = check(what, self.stream().clone_htod(&idx));
        let (idx_p, w, nn) = (addr(&idx_d), width as i32, n as i64);
        let f = if gather {
            &self.k.gather_rows
        } else {
            &self.k.scatter_rows
        };
        let mut b = self.stream().launch_builder(f);
        b.arg(&src.ptr).arg(&idx_p).arg(&w).arg(&nn).arg(&dst.ptr);
        // SAFETY: idx holds rows.len() indices, each row < max_row + 1, whose rows of `width`
        // lie inside the indexed buffer (asserted); the packed side holds n = rows.len() * width
        // values; one thread per packed value. idx_d lives until the launch is queued and is
        // freed in stream order after it.
        check(what, unsafe { b.launch(per_value(n)) });
    }

    /// h = rmsnorm(x) · weight and, if given, r = 1/rms per row (else a scratch takes it).
    pub(crate) fn rms_forward(
        &self,
        n: Norm,
        x: DView<'_>,
        h: &DViewMut<'_>,
        r: Option<&DViewMut<'_>>,
    ) {
        let w = self.w.norm(n);
        let d = w.len();
        let rows = x.len / d;
        assert!(
            x.len == rows * d && h.len == x.len,
            "rmsnorm: x {} h {} width {d}",
            x.len,
            h.len
        );
        if rows == 0 {
            return;
        }
        let mut sc = self.scratch();
        let r_ptr: CUdeviceptr = match r {
            Some(r) => {
                assert_eq!(r.len, rows, "rmsnorm: 1/rms length");
                r.ptr
            }
            None => {
                grow(self.stream(), &mut sc.rows, rows);
                addr(&sc.rows)
            }
        };
        let (w_ptr, offset, eps, di) = (addr(w), 0f32, self.model.config.rms_eps, d as i32);
        let mut b = self.stream().launch_builder(&self.k.rmsnorm_fwd);
        b.arg(&x.ptr)
            .arg(&w_ptr)
            .arg(&offset)
            .arg(&eps)
            .arg(&di)
            .arg(&h.ptr)
            .arg(&r_ptr);
        // SAFETY: one block per row of x, h [rows, d]; w holds d values; r (or the scratch,
        // grown to rows) holds rows values. The scratch lock is held until the launch is queued;
        // later users of the scratch run after it on the same stream.
        check("rmsnorm", unsafe {
            b.launch(grid((rows as u32, 1, 1), 256))
        });
    }

    /// dx (+)= the gradient through h = rmsnorm(x) · weight of dy [rows, d] at `dy_ptr` (which
    /// may be dx itself when not accumulating: the in-place form).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_backward(
        &self,
        n: Norm,
        x: DView<'_>,
        r: DView<'_>,
        dy_ptr: CUdeviceptr,
        dy_len: usize,
        dx: &DViewMut<'_>,
        accumulate: bool,
    ) {
        let w = self.w.norm(n);
        let d = w.len();
        let rows = x.len / d;
        assert!(
            x.len == rows * d && dy_len == x.len && dx.len == x.len && r.len == rows,
            "rmsnorm backward: x {} dy {dy_len} dx {} r {} width {d}",
            x.len,
            dx.len,
            r.len
        );
        if rows == 0 {
            return;
        }
        let (w_ptr, di, acc) = (addr(w), d as i32, i32::from(accumulate));
        let mut b = self.stream().launch_builder(&self.k.rmsnorm_bwd_acc);
        b.arg(&x.ptr)
            .arg(&w_ptr)
            .arg(&r.ptr)
            .arg(&dy_ptr)
            .arg(&di)
            .arg(&acc)
            .arg(&dx.ptr);
        // SAFETY: one block per row of x, dy, dx [rows, d] (asserted); w holds d values, r rows
        // values. dy == dx only in the in-place form, which the kernel allows.
        check("rmsnorm backward", unsafe {
            b.launch(grid((rows as u32, 1, 1), 256))
        });
    }

    /// RoPE of block `li` (or its transpose) on x [T, width] in place.
    pub(crate) fn rope(
        &self,
        ctx: &CudaCtx,
        li: usize,
        x: &DViewMut<'_>,
        width: usize,
        inverse: bool,
    ) {
        let c = &self.model.config;
        let hd = c.head_dim;
        let heads = width / hd;
        assert!(
            heads * hd == width && x.len == ctx.t * width,
            "rope: x {} for {} rows of width {width}",
            x.len,
            ctx.t
        );
        if x.len == 0 {
            return;
        }
        let ti = self.model.rope_index(li);
        let (cos, sin) = (addr(&ctx.cos[ti]), addr(&ctx.sin[ti]));
        let neox = i32::from(c.rope_style == RopeStyle::Half);
        let sign = if inverse { -1f32 } else { 1f32 };
        let (h, d) = (heads as i32, hd as i32);
        let mut b = self.stream().launch_builder(&self.k.rope_table);
        b.arg(&x.ptr)
            .arg(&cos)
            .arg(&sin)
            .arg(&h)
            .arg(&d)
            .arg(&neox)
            .arg(&sign);
        // SAFETY: grid (T, heads) over x [T, heads, hd] (asserted); the tables hold T · hd/2
        // values each (batch_ctx built them for these T positions); block = hd / 2 threads.
        check("rope", unsafe {
            b.launch(grid((ctx.t as u32, heads as u32, 1), (hd / 2) as u32))
        });
    }

    /// act = f(gate) · up.
    pub(crate) fn glu_forward(&self, gate: DView<'_>, up: DView<'_>, act: &DViewMut<'_>) {
        assert!(
            gate.len == up.len && act.len == gate.len,
            "gated activation: lengths"
        );
        if gate.len == 0 {
            return;
        }
        let f = match self.model.config.block.activation {
            Activation::SwiGlu => &self.k.swiglu_fwd,
            Activation::GeGluTanh => &self.k.geglu_fwd,
        };
        let n = gate.len as i64;
        let mut b = self.stream().launch_builder(f);
        b.arg(&gate.ptr).arg(&up.ptr).arg(&n).arg(&act.ptr);
        // SAFETY: gate, up and act hold n values each (asserted); one thread per value.
        check("gated activation", unsafe { b.launch(per_value(gate.len)) });
    }

    /// d_gate, d_up from d_act through act = f(gate) · up.
    pub(crate) fn glu_backward(
        &self,
        gate: DView<'_>,
        up: DView<'_>,
        d_act: DView<'_>,
        d_gate: &DViewMut<'_>,
        d_up: &DViewMut<'_>,
    ) {
        let n = gate.len;
        assert!(
            up.len == n && d_act.len == n && d_gate.len == n && d_up.len == n,
            "gated activation backward: lengths"
        );
        if n == 0 {
            return;
        }
        let f = match self.model.config.block.activation {
            Activation::SwiGlu => &self.k.swiglu_bwd,
            Activation::GeGluTanh => &self.k.geglu_bwd,
        };
        let nn = n as i64;
        let mut b = self.stream().launch_builder(f);
        b.arg(&gate.ptr)
            .arg(&up.ptr)
            .arg(&d_act.ptr)
            .arg(&nn)
            .arg(&d_gate.ptr)
            .arg(&d_up.ptr);
        // SAFETY: all five buffers hold n values (asserted); one thread per value.
        check("gated activation backward", unsafe {
            b.launch(per_value(n))
        });
    }
}
