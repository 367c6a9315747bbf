//! The `cuda` feature's probe: open the driver at run time and read GPU 0's name, compute
//! capability and memory. No GPU, no driver: a status, never a panic.

use super::{CudaStatus, GpuInfo};
use cudarc::driver::{sys, CudaContext};

pub fn probe() -> CudaStatus {
    // SAFETY: only tries to dlopen libcuda under its known names; no symbol is called, and
    // cudarc's later calls (which would panic without the library) are skipped when it fails.
    if !unsafe { sys::is_culib_present() } {
        return CudaStatus::NoDriver;
    }
    match CudaContext::device_count() {
        Err(e) => return CudaStatus::DriverError(format!("{e:?}")),
        Ok(0) => return CudaStatus::NoDevice,
        Ok(_) => {}
    }
    let ctx = match CudaContext::new(0) {
        Ok(c) => c,
        Err(e) => return CudaStatus::DriverError(format!("{e:?}")),
    };
    let info = (ctx.name(), ctx.compute_capability(), ctx.total_mem());
    match info {
        (Ok(name), Ok(sm), Ok(memory_bytes)) => CudaStatus::Found(GpuInfo {
            name,
            sm,
            memory_bytes,
        }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            CudaStatus::DriverError(format!("{e:?}"))
        }
    }
}
