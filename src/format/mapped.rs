//! Memory-mapping model files, and what happens when a mapped file changes underneath us.
//!
//! Models are mapped read-only and used in place. Two ways another process can change the file:
//!
//! - **Replaced by rename** (write a new file, `rename` it over the old name: how the daemon,
//!   package managers and careful tools update files). The map keeps the old inode alive, so
//!   reads go on returning the old bytes, consistently. Nothing to do; `tests/mapped_file.rs`
//!   checks it.
//! - **Truncated or rewritten in place.** Pages past the new end no longer exist, and touching
//!   them raises SIGBUS; `MAP_PRIVATE` does not help (private pages not yet copied still read
//!   the file). Copying the model into memory would cost the RAM mapping saves, and checking
//!   the size before every read is both slow and racy. So we take option (a) of issue 16, in
//!   its one safe form: a SIGBUS handler that, when the faulting address lies inside a mapping
//!   registered here, writes "edge-sft: error: <file> was truncated or changed while in use"
//!   to stderr and ends the process with `_exit(74)` (EX_IOERR). It does not try to recover
//!   (no longjmp out of the fault: Rust code that was mid-read cannot be resumed or unwound
//!   safely); it only turns a bare "Bus error" into an error that names the file. The handler
//!   uses only async-signal-safe calls (`write`, `_exit`, `sigaction`) and reads only atomics.
//!   A SIGBUS at any other address (not ours) restores the default action and returns, so the
//!   fault repeats and the process dies as it would have without us.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

/// Mappings the handler knows about; the oldest slot is reused past this many.
const SLOTS: usize = 64;
/// Bytes of each slot's message (a longer path is cut).
const MSG_LEN: usize = 512;
/// Exit status after a fault in a registered mapping (sysexits' EX_IOERR).
pub const EXIT_MAPPED_FILE_CHANGED: i32 = 74;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    msg_len: AtomicUsize,
    msg: [AtomicU8; MSG_LEN],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    msg_len: AtomicUsize::new(0),
    msg: [const { AtomicU8::new(0) }; MSG_LEN],
};
static SLOTS_TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Map `file` (opened from `path`) read-only and register it with the SIGBUS handler.
pub fn map_file(path: &Path, file: &File) -> Result<Arc<Mmap>> {
    // SAFETY: a read-only map of a file we opened. Rust's rules assume the bytes cannot change
    // while borrowed; another process can still truncate or rewrite the file. A rename over it
    // is harmless (we keep the old inode); an in-place change is what the SIGBUS handler of
    // this module turns into a clear error and exit, as the module comment explains.
    let mmap = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
    register(path, mmap.as_ptr() as usize, mmap.len());
    Ok(Arc::new(mmap))
}

fn register(path: &Path, start: usize, len: usize) {
    INSTALL.call_once(install_handler);
    let msg = format!(
        "edge-sft: error: {}: the file was truncated or changed while in use (it is \
         memory-mapped); replace model files by writing a new file and renaming it over the \
         old one\n",
        path.display()
    );
    let bytes = msg.as_bytes();
    let n = bytes.len().min(MSG_LEN);
    let slot = &SLOTS_TABLE[NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS];
    // Invalidate the slot while its message is rewritten.
    slot.len.store(0, Ordering::SeqCst);
    for (dst, &b) in slot.msg.iter().zip(&bytes[..n]) {
        dst.store(b, Ordering::Relaxed);
    }
    slot.msg_len.store(n, Ordering::Relaxed);
    slot.start.store(start, Ordering::SeqCst);
    slot.len.store(len, Ordering::SeqCst);
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid starting value; we set the handler, SA_SIGINFO (the
    // handler takes siginfo) and SA_NODEFER|SA_RESETHAND are not used, so a second fault while
    // in the handler is blocked until it exits (it never returns after a match).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; si_addr is the fault
    // address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS_TABLE {
        let (start, len) = (
            slot.start.load(Ordering::SeqCst),
            slot.len.load(Ordering::SeqCst),
        );
        if len > 0 && addr >= start && addr - start < len {
            let mut buf = [0u8; MSG_LEN];
            let n = slot.msg_len.load(Ordering::Relaxed).min(MSG_LEN);
            for (dst, src) in buf.iter_mut().zip(&slot.msg[..n]) {
                *dst = src.load(Ordering::Relaxed);
            }
            // SAFETY: write(2) and _exit(2) are async-signal-safe; buf outlives the call.
            unsafe {
                libc::write(2, buf.as_ptr().cast(), n);
                libc::_exit(EXIT_MAPPED_FILE_CHANGED);
            }
        }
    }
    // Not one of our mappings: fall back to the default action; returning re-runs the faulting
    // access, which now ends the process with the usual SIGBUS.
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}
