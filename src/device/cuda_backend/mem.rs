//! Device memory for the step: buffers ([`DevBuf`]) are `CudaSlice<f32>` on the backend's one
//! stream, and views are (device address, length) pairs that borrow the buffer they were cut
//! from. No allocation is ever of 0 bytes (`cuMemAlloc` refuses those): an empty buffer holds
//! one unused value.
//!
//! cudarc's own `CudaView` is not `Copy` and a `CudaViewMut` cannot be split into two that
//! outlive the call, so the views here carry the raw address: every kernel and cuBLAS call of
//! the backend takes addresses, and the one stream orders all of them (cudarc's per-buffer event
//! tracking only matters with several streams, which this backend never creates).

use super::check;
use crate::train::backend::Mem;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr};
use std::marker::PhantomData;
use std::sync::Arc;

/// Bytes of one f32.
pub(crate) const F32: u64 = 4;

/// The first values of a device buffer, read-only.
#[derive(Clone, Copy, Debug)]
pub struct DView<'a> {
    pub(crate) ptr: CUdeviceptr,
    pub(crate) len: usize,
    _b: PhantomData<&'a CudaSlice<f32>>,
}

/// The first values of a device buffer, writable. Two of them never overlap: they come from
/// distinct `&mut` buffers or from `split_mut`.
#[derive(Debug)]
pub struct DViewMut<'a> {
    pub(crate) ptr: CUdeviceptr,
    pub(crate) len: usize,
    _b: PhantomData<&'a mut CudaSlice<f32>>,
}

impl<'a> DView<'a> {
    /// Values `[off, off + len)` of this view.
    pub(crate) fn sub(self, off: usize, len: usize) -> DView<'a> {
        assert!(
            off + len <= self.len,
            "device view: {off}+{len} > {}",
            self.len
        );
        DView {
            ptr: self.ptr + off as u64 * F32,
            len,
            _b: PhantomData,
        }
    }
}

impl DViewMut<'_> {
    /// The same values, read-only, for as long as this view is borrowed.
    pub(crate) fn as_view(&self) -> DView<'_> {
        DView {
            ptr: self.ptr,
            len: self.len,
            _b: PhantomData,
        }
    }
}

/// The device address of a whole buffer (one stream: no event bookkeeping to honour).
pub(crate) fn addr<T>(b: &CudaSlice<T>) -> CUdeviceptr {
    let (p, _record) = b.device_ptr(b.stream());
    p
}

/// A read view of a whole buffer.
pub(crate) fn whole(b: &CudaSlice<f32>) -> DView<'_> {
    DView {
        ptr: addr(b),
        len: b.len(),
        _b: PhantomData,
    }
}

/// A write view of a whole buffer.
pub(crate) fn whole_mut(b: &mut CudaSlice<f32>) -> DViewMut<'_> {
    DViewMut {
        ptr: addr(b),
        len: b.len(),
        _b: PhantomData,
    }
}

/// `n` f32 zeros on `stream` (at least one value: no 0-byte allocation).
pub(crate) fn zeros(stream: &Arc<CudaStream>, n: usize) -> CudaSlice<f32> {
    stream
        .alloc_zeros::<f32>(n.max(1))
        .unwrap_or_else(|e| panic!("cuda backend: allocating {n} f32 values: {e:?}"))
}

/// `v` copied to the device (at least one value: an empty `v` gives one zero).
pub(crate) fn upload_i32(stream: &Arc<CudaStream>, v: &[i32]) -> CudaSlice<i32> {
    if v.is_empty() {
        stream.alloc_zeros::<i32>(1)
    } else {
        stream.clone_htod(v)
    }
    .unwrap_or_else(|e| panic!("cuda backend: uploading {} i32 values: {e:?}", v.len()))
}

/// `v` copied to the device (at least one value: an empty `v` gives one zero).
pub(crate) fn upload_f32(stream: &Arc<CudaStream>, v: &[f32]) -> CudaSlice<f32> {
    if v.is_empty() {
        zeros(stream, 0)
    } else {
        stream
            .clone_htod(v)
            .unwrap_or_else(|e| panic!("cuda backend: uploading {} f32 values: {e:?}", v.len()))
    }
}

/// One buffer of the step: `len` f32 values (the allocation holds at least one).
pub struct DevBuf {
    data: CudaSlice<f32>,
    len: usize,
}

impl DevBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Its device address.
    pub(crate) fn ptr(&self) -> CUdeviceptr {
        addr(&self.data)
    }
}

/// Host values into device memory at `dst` (at least `src.len()` values); waits for the copy.
pub(crate) fn upload_to(stream: &CudaStream, src: &[f32], dst: DViewMut<'_>) {
    assert!(src.len() <= dst.len, "upload: {} > {}", src.len(), dst.len);
    if src.is_empty() {
        return;
    }
    stream
        .context()
        .bind_to_thread()
        .and_then(|_| {
            // SAFETY: dst is a live device buffer of at least src.len() f32 (checked above);
            // the stream is synchronized before `src` can be dropped.
            unsafe { result::memcpy_htod_async(dst.ptr, src, stream.cu_stream()) }
        })
        .and_then(|_| stream.synchronize())
        .unwrap_or_else(|e| panic!("cuda backend: host-to-device copy: {e:?}"));
}

/// Device values `src` to a new host vector; waits for the copy.
pub(crate) fn download(stream: &CudaStream, src: DView<'_>) -> Vec<f32> {
    let mut out = vec![0f32; src.len];
    if src.len == 0 {
        return out;
    }
    stream
        .context()
        .bind_to_thread()
        .and_then(|_| {
            // SAFETY: src holds src.len f32 of a live buffer, out as many; synchronized
            // before `out` is read or dropped.
            unsafe { result::memcpy_dtoh_async(&mut out, src.ptr, stream.cu_stream()) }
        })
        .and_then(|_| stream.synchronize())
        .unwrap_or_else(|e| panic!("cuda backend: device-to-host copy: {e:?}"));
    out
}

/// dst = src on the stream (same length).
pub(crate) fn copy_dtod(stream: &CudaStream, dst: &DViewMut<'_>, src: DView<'_>) {
    assert_eq!(dst.len, src.len, "device copy: lengths differ");
    if src.len == 0 {
        return;
    }
    let r = stream.context().bind_to_thread().and_then(|_| {
        // SAFETY: both ranges hold src.len f32 of live buffers, and a write view never
        // overlaps another view in use (they come from distinct buffers or split_mut).
        unsafe { result::memcpy_dtod_async(dst.ptr, src.ptr, src.len * 4, stream.cu_stream()) }
    });
    check("copy", r);
}

/// dst = 0 on the stream.
pub(crate) fn memset_zero(stream: &CudaStream, dst: &DViewMut<'_>) {
    zero_raw(stream, dst.ptr, dst.len);
}

/// `n` f32 at `ptr` = 0 on the stream; the caller guarantees `ptr` holds `n` values of a live
/// buffer it may write.
pub(crate) fn zero_raw(stream: &CudaStream, ptr: CUdeviceptr, n: usize) {
    if n == 0 {
        return;
    }
    let r = stream.context().bind_to_thread().and_then(|_| {
        // SAFETY: (the caller's guarantee) ptr holds n f32 of a live buffer.
        unsafe { result::memset_d8_async(ptr, 0, n * 4, stream.cu_stream()) }
    });
    check("zero", r);
}

/// The fused loss's device scratch: one [rows, chunk] logits tile, a [chunk, d] f32 tile of the
/// output matrix, and the per-row statistics of nll.cu.
pub struct LossScratch {
    pub(crate) rows: usize,
    pub(crate) chunk: usize,
    pub(crate) d: usize,
    pub(crate) logits: CudaSlice<f32>,
    pub(crate) wtile: CudaSlice<f32>,
    pub(crate) row_max: CudaSlice<f32>,
    pub(crate) row_sum: CudaSlice<f32>,
    pub(crate) target_logit: CudaSlice<f32>,
    pub(crate) row_scale: CudaSlice<f32>,
    pub(crate) loss: CudaSlice<f32>,
    pub(crate) targets: CudaSlice<i32>,
}

/// Vocabulary rows per chunk of the fused loss on the GPU.
pub(crate) const NLL_CHUNK: usize = 4096;

impl LossScratch {
    pub(crate) fn new(stream: &Arc<CudaStream>, rows: usize, d: usize, vocab: usize) -> Self {
        let chunk = NLL_CHUNK.min(vocab).max(1);
        let targets = upload_i32(stream, &vec![0; rows]);
        LossScratch {
            rows,
            chunk,
            d,
            logits: zeros(stream, rows * chunk),
            wtile: zeros(stream, chunk * d),
            row_max: zeros(stream, rows),
            row_sum: zeros(stream, rows),
            target_logit: zeros(stream, rows),
            row_scale: zeros(stream, rows),
            loss: zeros(stream, rows),
            targets,
        }
    }

    fn values(&self) -> usize {
        self.logits.len() + self.wtile.len() + 6 * self.rows
    }
}

/// Device memory of one CUDA context: every buffer is allocated on `stream`.
pub struct Dev {
    pub(crate) stream: Arc<CudaStream>,
}

impl Mem for Dev {
    type Buf = DevBuf;
    type View<'a> = DView<'a>;
    type ViewMut<'a> = DViewMut<'a>;
    type LossScratch = LossScratch;

    fn alloc(&self, n: usize) -> DevBuf {
        DevBuf {
            data: zeros(&self.stream, n),
            len: n,
        }
    }
    fn len(b: &DevBuf) -> usize {
        b.len
    }
    fn view(b: &DevBuf, n: usize) -> DView<'_> {
        assert!(
            n <= b.len,
            "device view of {n} values of a {} buffer",
            b.len
        );
        DView {
            ptr: b.ptr(),
            len: n,
            _b: PhantomData,
        }
    }
    fn view_mut(b: &mut DevBuf, n: usize) -> DViewMut<'_> {
        assert!(
            n <= b.len,
            "device view of {n} values of a {} buffer",
            b.len
        );
        DViewMut {
            ptr: b.ptr(),
            len: n,
            _b: PhantomData,
        }
    }
    fn split<'a>(v: Self::View<'a>, mid: usize) -> (Self::View<'a>, Self::View<'a>) {
        (v.sub(0, mid), v.sub(mid, v.len - mid))
    }
    fn split_mut<'a>(v: Self::ViewMut<'a>, mid: usize) -> (Self::ViewMut<'a>, Self::ViewMut<'a>) {
        assert!(mid <= v.len, "device split at {mid} of {}", v.len);
        (
            DViewMut {
                ptr: v.ptr,
                len: mid,
                _b: PhantomData,
            },
            DViewMut {
                ptr: v.ptr + mid as u64 * F32,
                len: v.len - mid,
                _b: PhantomData,
            },
        )
    }
    fn loss_scratch(&self, rows: usize, d: usize, vocab: usize) -> LossScratch {
        LossScratch::new(&self.stream, rows, d, vocab)
    }
    fn loss_scratch_values(s: &LossScratch) -> usize {
        s.values()
    }
}
