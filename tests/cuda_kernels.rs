//! Every kernel of `kernels/*.cu` run on the GPU against a CPU reference (issue 18): the GGUF
//! block decoders against `quant::dequantize_row` (ggml's reference), the rest against the
//! scalar formulas written out below. Built only with `--features cuda`; the PTX comes from
//! `scripts/cuda_check.py --ptx-out DIR` (compute_72, which every GPU from Xavier on runs) in
//! `EDGE_SFT_PTX_DIR` (default `target/ptx`). Without a GPU each test says it was skipped,
//! unless `EDGE_SFT_REQUIRE_GPU=1` (as `scripts/gpu_check.sh` sets), where that is a failure.
#![cfg(feature = "cuda")]

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use edge_sft::quant::{dequantize_row, GgmlType};
use std::sync::Arc;

struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// The GPU, or None (and a line saying so) where there is none and none is required.
fn gpu() -> Option<Gpu> {
    let required = std::env::var("EDGE_SFT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    // SAFETY: only dlopens libcuda to see whether it exists.
    let ctx = if unsafe { cudarc::driver::sys::is_culib_present() } {
        CudaContext::new(0).ok()
    } else {
        None
    };
    match ctx {
        Some(ctx) => {
            let stream = ctx.default_stream();
            Some(Gpu { ctx, stream })
        }
        None if required => panic!("EDGE_SFT_REQUIRE_GPU=1 but no CUDA device could be opened"),
        None => {
            eprintln!("skipped: no CUDA device");
            None
        }
    }
}

impl Gpu {
    fn function(&self, file: &str, name: &str) -> CudaFunction {
        let dir = std::env::var("EDGE_SFT_PTX_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/ptx").to_string());
        let path = format!("{dir}/{file}.compute_72.ptx");
        let src = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run scripts/cuda_check.py --ptx-out {dir})"));
        let module = self.ctx.load_module(Ptx::from_src(src)).unwrap();
        module.load_function(name).unwrap()
    }
}

fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}[{i}]: gpu {g} vs cpu {w} (rel err {err:e})"
        );
    }
}

/// Random blocks of `ty` whose f16 scale fields are small finite numbers.
fn random_blocks(ty: GgmlType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let size = ty.type_size();
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => unreachable!(),
    };
    let mut out = vec![0u8; blocks * size];
    for b in 0..blocks {
        let blk = &mut out[b * size..(b + 1) * size];
        for byte in blk.iter_mut() {
            *byte = rng.next() as u8;
        }
        for &o in scale_offsets {
            let d = half::f16::from_f32(rng.f32() * 0.05).to_le_bytes();
            blk[o..o + 2].copy_from_slice(&d);
        }
    }
    out
}

#[test]
fn dequant_kernels_match_the_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(0x5eed);
    let cases = [
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q4_1, "q4_1"),
        (GgmlType::Q5_0, "q5_0"),
        (GgmlType::Q5_1, "q5_1"),
        (GgmlType::Q8_0, "q8_0"),
        (GgmlType::Q4_K, "q4_k"),
        (GgmlType::Q5_K, "q5_k"),
        (GgmlType::Q6_K, "q6_k"),
    ];
    for (ty, name) in cases {
        let (rows, cols) = (3usize, 512usize);
        let blocks = rows * cols / ty.block_size();
        let src = random_blocks(ty, blocks, &mut rng);
        let mut want = vec![0f32; rows * cols];
        dequantize_row(ty, &src, &mut want);
        let n = (rows * cols) as i64;
        let src_d = g.stream.clone_htod(&src).unwrap();
        let mut out = g.stream.alloc_zeros::<f32>(rows * cols).unwrap();
        let f = g.function("dequant.cu", &format!("dequant_{name}_f32"));
        let mut b = g.stream.launch_builder(&f);
        b.arg(&src_d).arg(&mut out).arg(&n);
        // SAFETY: the kernel reads n / QK blocks of src and writes n floats of out; both hold that.
        unsafe { b.launch(cfg(((n as u32).div_ceil(256), 1, 1), 256)) }.unwrap();
        let got = g.stream.clone_dtoh(&out).unwrap();
        // A GPU may fuse d * q + m into one FMA where the reference rounds twice.
        assert_close(&format!("dequant {name}"), &got, &want, 1e-6);
    }
}

#[test]
fn rmsnorm_forward_and_backward_match_the_formula() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(7);
    let (rows, d, eps, offset) = (5usize, 96usize, 1e-6f32, 1.0f32);
    let (x, w, dy) = (
        rng.vec(rows * d, 2.0),
        rng.vec(d, 0.5),
        rng.vec(rows * d, 1.0),
    );
    let (mut y_ref, mut dx_ref) = (vec![0f32; rows * d], vec![0f32; rows * d]);
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let inv = 1.0 / (xr.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
        let dot: f32 = (0..d)
            .map(|j| dy[r * d + j] * (w[j] + offset) * xr[j])
            .sum();
        for j in 0..d {
            y_ref[r * d + j] = xr[j] * inv * (w[j] + offset);
            dx_ref[r * d + j] =
                inv * dy[r * d + j] * (w[j] + offset) - xr[j] * inv.powi(3) * dot / d as f32;
        }
    }
    let s = &g.stream;
    let (xd, wd, dyd) = (
        s.clone_htod(&x).unwrap(),
        s.clone_htod(&w).unwrap(),
        s.clone_htod(&dy).unwrap(),
    );
    let mut yd = s.alloc_zeros::<f32>(rows * d).unwrap();
    let mut dxd = s.alloc_zeros::<f32>(rows * d).unwrap();
    let mut inv = s.alloc_zeros::<f32>(rows).unwrap();
    let di = d as i32;
    let fwd = g.function("rmsnorm.cu", "rmsnorm_fwd");
    let mut b = s.launch_builder(&fwd);
    b.arg(&xd)
        .arg(&wd)
        .arg(&offset)
        .arg(&eps)
        .arg(&di)
        .arg(&mut yd)
        .arg(&mut inv);
    // SAFETY: one block per row of [rows, d] buffers sized as declared above.
    unsafe { b.launch(cfg((rows as u32, 1, 1), 256)) }.unwrap();
    let bwd = g.function("rmsnorm.cu", "rmsnorm_bwd");
    let mut b = s.launch_builder(&bwd);
    b.arg(&xd)
        .arg(&wd)
        .arg(&offset)
        .arg(&inv)
        .arg(&dyd)
        .arg(&di)
        .arg(&mut dxd);
    // SAFETY: as above; inv_rms holds rows values written by the forward.
    unsafe { b.launch(cfg((rows as u32, 1, 1), 256)) }.unwrap();
    assert_close("rmsnorm y", &s.clone_dtoh(&yd).unwrap(), &y_ref, 1e-5);
    assert_close("rmsnorm dx", &s.clone_dtoh(&dxd).unwrap(), &dx_ref, 1e-4);
}

#[test]
fn glu_forward_and_backward_match_the_formula() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(11);
    let n = 1000usize;
    let (gv, uv, dh) = (rng.vec(n, 4.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
    let s = &g.stream;
    let (gd, ud, dhd) = (
        s.clone_htod(&gv).unwrap(),
        s.clone_htod(&uv).unwrap(),
        s.clone_htod(&dh).unwrap(),
    );
    let nn = n as i64;
    for (fwd_name, bwd_name) in [("swiglu_fwd", "swiglu_bwd"), ("geglu_fwd", "geglu_bwd")] {
        let act = |x: f32| -> f32 {
            if fwd_name == "swiglu_fwd" {
                x / (1.0 + (-x).exp())
            } else {
                0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
            }
        };
        let h_ref: Vec<f32> = (0..n).map(|i| act(gv[i]) * uv[i]).collect();
        // d act / dx by central differences in f64 of the same formula
        let dg_ref: Vec<f32> = (0..n)
            .map(|i| {
                let e = 1e-3f32;
                dh[i] * uv[i] * (act(gv[i] + e) - act(gv[i] - e)) / (2.0 * e)
            })
            .collect();
        let du_ref: Vec<f32> = (0..n).map(|i| dh[i] * act(gv[i])).collect();
        let mut hd = s.alloc_zeros::<f32>(n).unwrap();
        let f = g.function("glu.cu", fwd_name);
        let mut b = s.launch_builder(&f);
        b.arg(&gd).arg(&ud).arg(&nn).arg(&mut hd);
        // SAFETY: n floats in every buffer.
        unsafe { b.launch(cfg(((n as u32).div_ceil(256), 1, 1), 256)) }.unwrap();
        let (mut dgd, mut dud) = (
            s.alloc_zeros::<f32>(n).unwrap(),
            s.alloc_zeros::<f32>(n).unwrap(),
        );
        let f = g.function("glu.cu", bwd_name);
        let mut b = s.launch_builder(&f);
        b.arg(&gd)
            .arg(&ud)
            .arg(&dhd)
            .arg(&nn)
            .arg(&mut dgd)
            .arg(&mut dud);
        // SAFETY: as above.
        unsafe { b.launch(cfg(((n as u32).div_ceil(256), 1, 1), 256)) }.unwrap();
        assert_close(fwd_name, &s.clone_dtoh(&hd).unwrap(), &h_ref, 1e-5);
        assert_close(bwd_name, &s.clone_dtoh(&dgd).unwrap(), &dg_ref, 2e-3);
        assert_close(bwd_name, &s.clone_dtoh(&dud).unwrap(), &du_ref, 1e-5);
    }
}

/// Naive attention over packed records (the kernels' contract): o and lse, then dq, dk, dv by
/// the chain rule, all in f64.
#[allow(clippy::type_complexity)]
fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    seg: &[i32],
    pos: &[i32],
    (hq, hkv, hd, window): (usize, usize, usize, i32),
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = seg.len();
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut o, mut dq) = (vec![0f64; rows * hq * hd], vec![0f64; rows * hq * hd]);
    let (mut dk, mut dv) = (vec![0f64; rows * hkv * hd], vec![0f64; rows * hkv * hd]);
    let seen = |i: usize, j: usize| {
        j <= i && seg[j] == seg[i] && (window <= 0 || pos[i] - pos[j] < window)
    };
    for h in 0..hq {
        let gh = h / (hq / hkv);
        for i in 0..rows {
            let qi = |t: usize| q[(i * hq + h) * hd + t] as f64;
            let kj = |j: usize, t: usize| k[(j * hkv + gh) * hd + t] as f64;
            let vj = |j: usize, t: usize| v[(j * hkv + gh) * hd + t] as f64;
            let js: Vec<usize> = (0..rows).filter(|&j| seen(i, j)).collect();
            let s: Vec<f64> = js
                .iter()
                .map(|&j| (0..hd).map(|t| qi(t) * kj(j, t)).sum::<f64>() * scale)
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            for t in 0..hd {
                o[(i * hq + h) * hd + t] = js.iter().zip(&p).map(|(&j, pj)| pj * vj(j, t)).sum();
            }
            let doi = |t: usize| dout[(i * hq + h) * hd + t] as f64;
            let dp: Vec<f64> = js
                .iter()
                .map(|&j| (0..hd).map(|t| doi(t) * vj(j, t)).sum())
                .collect();
            let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (idx, &j) in js.iter().enumerate() {
                let ds = p[idx] * (dp[idx] - dsum);
                for t in 0..hd {
                    dq[(i * hq + h) * hd + t] += ds * scale * kj(j, t);
                    dk[(j * hkv + gh) * hd + t] += ds * scale * qi(t);
                    dv[(j * hkv + gh) * hd + t] += p[idx] * doi(t);
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect();
    (f(o), f(dq), f(dk), f(dv))
}

#[test]
fn attention_forward_and_backward_match_the_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(13);
    // Two records packed (5 + 7 rows), 4 query heads over 2 kv heads, head_dim 64; then the
    // same with a sliding window of 3.
    let seg: Vec<i32> = [0; 5].into_iter().chain([1; 7]).collect();
    let pos: Vec<i32> = (0..5).chain(0..7).collect();
    let (rows, hq, hkv, hd) = (12usize, 4usize, 2usize, 64usize);
    let q = rng.vec(rows * hq * hd, 1.0);
    let k = rng.vec(rows * hkv * hd, 1.0);
    let v = rng.vec(rows * hkv * hd, 1.0);
    let dout = rng.vec(rows * hq * hd, 1.0);
    let s = &g.stream;
    for window in [0i32, 3] {
        let (o_ref, dq_ref, dk_ref, dv_ref) =
            attention_reference(&q, &k, &v, &dout, &seg, &pos, (hq, hkv, hd, window));
        let (qd, kd, vd, dod) = (
            s.clone_htod(&q).unwrap(),
            s.clone_htod(&k).unwrap(),
            s.clone_htod(&v).unwrap(),
            s.clone_htod(&dout).unwrap(),
        );
        let (segd, posd) = (s.clone_htod(&seg).unwrap(), s.clone_htod(&pos).unwrap());
        let mut od = s.alloc_zeros::<f32>(rows * hq * hd).unwrap();
        let mut lse = s.alloc_zeros::<f32>(hq * rows).unwrap();
        let mut dqd = s.alloc_zeros::<f32>(rows * hq * hd).unwrap();
        let mut delta = s.alloc_zeros::<f32>(hq * rows).unwrap();
        let mut dkd = s.alloc_zeros::<f32>(rows * hkv * hd).unwrap();
        let mut dvd = s.alloc_zeros::<f32>(rows * hkv * hd).unwrap();
        let (r, a, b_, d) = (rows as i32, hq as i32, hkv as i32, hd as i32);
        let scale = 1.0f32 / (hd as f32).sqrt();
        let grid = ((rows as u32).div_ceil(4), hq as u32, 1);
        let f = g.function("attention.cu", "attn_fwd");
        let mut b = s.launch_builder(&f);
        b.arg(&qd).arg(&kd).arg(&vd).arg(&segd).arg(&posd);
        b.arg(&r).arg(&a).arg(&b_).arg(&d).arg(&window).arg(&scale);
        b.arg(&mut od).arg(&mut lse);
        // SAFETY: buffers sized [rows, heads, hd] and [hq, rows] as attention.cu declares.
        unsafe { b.launch(cfg(grid, 128)) }.unwrap();
        let f = g.function("attention.cu", "attn_bwd_dq");
        let mut b = s.launch_builder(&f);
        b.arg(&qd)
            .arg(&kd)
            .arg(&vd)
            .arg(&od)
            .arg(&dod)
            .arg(&lse)
            .arg(&segd)
            .arg(&posd);
        b.arg(&r).arg(&a).arg(&b_).arg(&d).arg(&window).arg(&scale);
        b.arg(&mut dqd).arg(&mut delta);
        // SAFETY: as above.
        unsafe { b.launch(cfg(grid, 128)) }.unwrap();
        let f = g.function("attention.cu", "attn_bwd_dkdv");
        let mut b = s.launch_builder(&f);
        b.arg(&qd)
            .arg(&kd)
            .arg(&vd)
            .arg(&dod)
            .arg(&lse)
            .arg(&delta)
            .arg(&segd)
            .arg(&posd);
        b.arg(&r).arg(&a).arg(&b_).arg(&d).arg(&window).arg(&scale);
        b.arg(&mut dkd).arg(&mut dvd);
        // SAFETY: as above, one warp per (key row, kv head).
        unsafe { b.launch(cfg(((rows as u32).div_ceil(4), hkv as u32, 1), 128)) }.unwrap();
        let w = format!("window {window}");
        assert_close(
            &format!("attn o, {w}"),
            &s.clone_dtoh(&od).unwrap(),
            &o_ref,
            1e-4,
        );
        assert_close(
            &format!("attn dq, {w}"),
            &s.clone_dtoh(&dqd).unwrap(),
            &dq_ref,
            1e-4,
        );
        assert_close(
            &format!("attn dk, {w}"),
            &s.clone_dtoh(&dkd).unwrap(),
            &dk_ref,
            1e-4,
        );
        assert_close(
            &format!("attn dv, {w}"),
            &s.clone_dtoh(&dvd).unwrap(),
            &dv_ref,
            1e-4,
        );
    }
}

#[test]
fn chunked_nll_matches_a_full_log_softmax() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(17);
    let (rows, vocab, chunk) = (6usize, 1000usize, 256usize);
    let logits = rng.vec(rows * vocab, 8.0);
    let targets: Vec<i32> = (0..rows).map(|r| ((r * 337 + 11) % vocab) as i32).collect();
    let scale: Vec<f32> = vec![1.0 / rows as f32; rows];
    let (mut loss_ref, mut grad_ref) = (vec![0f32; rows], vec![0f32; rows * vocab]);
    for r in 0..rows {
        let z = &logits[r * vocab..(r + 1) * vocab];
        let m = z.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        loss_ref[r] = (lse - z[targets[r] as usize] as f64) as f32;
        for j in 0..vocab {
            let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
            grad_ref[r * vocab + j] =
                (((z[j] as f64 - lse).exp() - onehot) * scale[r] as f64) as f32;
        }
    }
    let s = &g.stream;
    let td = s.clone_htod(&targets).unwrap();
    let scd = s.clone_htod(&scale).unwrap();
    let mut mx = s.clone_htod(&vec![f32::NEG_INFINITY; rows]).unwrap();
    let mut sm = s.alloc_zeros::<f32>(rows).unwrap();
    let mut tl = s.alloc_zeros::<f32>(rows).unwrap();
    let stats = g.function("nll.cu", "nll_chunk_stats");
    let grad = g.function("nll.cu", "nll_chunk_grad");
    let chunk_of = |c0: usize| -> Vec<f32> {
        let cn = chunk.min(vocab - c0);
        (0..rows)
            .flat_map(|r| logits[r * vocab + c0..r * vocab + c0 + cn].to_vec())
            .collect()
    };
    for c0 in (0..vocab).step_by(chunk) {
        let cd = s.clone_htod(&chunk_of(c0)).unwrap();
        let (cn, c0i) = (chunk.min(vocab - c0) as i32, c0 as i32);
        let mut b = s.launch_builder(&stats);
        b.arg(&cd)
            .arg(&cn)
            .arg(&c0i)
            .arg(&td)
            .arg(&mut mx)
            .arg(&mut sm)
            .arg(&mut tl);
        // SAFETY: [rows, cn] logits, [rows] statistics.
        unsafe { b.launch(cfg((rows as u32, 1, 1), 256)) }.unwrap();
    }
    let mut lossd = s.alloc_zeros::<f32>(rows).unwrap();
    let fin = g.function("nll.cu", "nll_finalize");
    let ri = rows as i32;
    let mut b = s.launch_builder(&fin);
    b.arg(&mx).arg(&sm).arg(&tl).arg(&ri).arg(&mut lossd);
    // SAFETY: [rows] everywhere.
    unsafe { b.launch(cfg((1, 1, 1), 256)) }.unwrap();
    assert_close("nll loss", &s.clone_dtoh(&lossd).unwrap(), &loss_ref, 1e-5);
    for c0 in (0..vocab).step_by(chunk) {
        let cn = chunk.min(vocab - c0);
        let mut cd = s.clone_htod(&chunk_of(c0)).unwrap();
        let (cni, c0i) = (cn as i32, c0 as i32);
        let mut b = s.launch_builder(&grad);
        b.arg(&mut cd)
            .arg(&cni)
            .arg(&c0i)
            .arg(&td)
            .arg(&mx)
            .arg(&sm)
            .arg(&scd);
        // SAFETY: [rows, cn] logits turned into gradients in place.
        unsafe { b.launch(cfg(((cn as u32).div_ceil(256), rows as u32, 1), 256)) }.unwrap();
        let got = s.clone_dtoh(&cd).unwrap();
        let want: Vec<f32> = (0..rows)
            .flat_map(|r| grad_ref[r * vocab + c0..r * vocab + c0 + cn].to_vec())
            .collect();
        assert_close("nll grad", &got, &want, 1e-6);
    }
}

#[test]
fn rope_rotates_both_layouts_and_backward_undoes_it() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(23);
    let (rows, heads, hd) = (4usize, 3usize, 64usize);
    let x = rng.vec(rows * heads * hd, 1.0);
    let pos: Vec<i32> = vec![0, 1, 2, 0];
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 10000f32.powf(-2.0 * i as f32 / hd as f32))
        .collect();
    let s = &g.stream;
    let f = g.function("rope.cu", "rope_apply");
    let (posd, fd) = (
        s.clone_htod(&pos).unwrap(),
        s.clone_htod(&inv_freq).unwrap(),
    );
    for neox in [1i32, 0] {
        let mut want = x.clone();
        for r in 0..rows {
            for h in 0..heads {
                let v = &mut want[(r * heads + h) * hd..(r * heads + h + 1) * hd];
                for (i, freq) in inv_freq.iter().enumerate() {
                    let (a, b) = if neox == 1 {
                        (i, i + hd / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (sn, cs) = (pos[r] as f32 * freq).sin_cos();
                    let (x0, x1) = (v[a], v[b]);
                    v[a] = x0 * cs - x1 * sn;
                    v[b] = x0 * sn + x1 * cs;
                }
            }
        }
        let mut xd = s.clone_htod(&x).unwrap();
        let (hh, dd) = (heads as i32, hd as i32);
        for sign in [1f32, -1f32] {
            let mut b = s.launch_builder(&f);
            b.arg(&mut xd)
                .arg(&posd)
                .arg(&fd)
                .arg(&hh)
                .arg(&dd)
                .arg(&neox)
                .arg(&sign);
            // SAFETY: [rows, heads, hd] x, [rows] positions, [hd / 2] frequencies.
            unsafe { b.launch(cfg((rows as u32, heads as u32, 1), (hd / 2) as u32)) }.unwrap();
            let got = s.clone_dtoh(&xd).unwrap();
            let reference = if sign > 0.0 { &want } else { &x };
            assert_close(
                &format!("rope neox={neox} sign={sign}"),
                &got,
                reference,
                1e-5,
            );
        }
    }
}

#[test]
fn adamw_matches_torch_formula() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(19);
    let n = 300usize;
    let (p0, gr) = (rng.vec(n, 1.0), rng.vec(n, 0.1));
    let (lr, b1, b2, eps, wd, clip) = (1e-3f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32, 0.5f32);
    let s = &g.stream;
    let mut pd = s.clone_htod(&p0).unwrap();
    let gd = s.clone_htod(&gr).unwrap();
    let (mut md, mut vd) = (
        s.alloc_zeros::<f32>(n).unwrap(),
        s.alloc_zeros::<f32>(n).unwrap(),
    );
    let f = g.function("adamw.cu", "adamw_step");
    let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
    let nn = n as i64;
    for t in 1..=3 {
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for i in 0..n {
            let gi = gr[i] * clip;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] = p[i] * (1.0 - lr * wd) - lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
        }
        let mut b = s.launch_builder(&f);
        b.arg(&mut pd).arg(&gd).arg(&mut md).arg(&mut vd).arg(&nn);
        b.arg(&lr)
            .arg(&b1)
            .arg(&b2)
            .arg(&eps)
            .arg(&wd)
            .arg(&bc1)
            .arg(&bc2)
            .arg(&clip);
        // SAFETY: n floats in p, g, m, v.
        unsafe { b.launch(cfg(((n as u32).div_ceil(256), 1, 1), 256)) }.unwrap();
    }
    assert_close("adamw p", &s.clone_dtoh(&pd).unwrap(), &p, 1e-5);
}
