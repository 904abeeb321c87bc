//! What every hand-written CPU kernel in vaak starts from: whether a tensor is one it may read
//! directly (CPU, f32, not tracked by autograd), its f32 data, the thread count the kernels
//! split over, the one form in which they call the `gemm` crate, and the output pointer their
//! tasks share.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};
use gemm::Parallelism;
use std::sync::OnceLock;

/// Whether `t` is a CPU f32 tensor outside any autograd graph: the tensors the fast paths take
/// (anything else goes through candle's differentiable, device-generic ops).
pub fn is_untracked_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op()
}

/// Runs `f` on the f32 data of a contiguous CPU tensor (`op` names the caller in the error).
pub fn with_contiguous_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        bail!("{op}: expected a CPU f32 tensor");
    };
    Ok(f(contiguous_f32(s, layout, op)?))
}

/// All the f32 data of `storage` (a tensor's, held through `storage_and_layout`), from element
/// 0: for kernels that address a strided layout themselves.
pub fn storage_f32<'a>(storage: &'a Storage, op: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
        _ => bail!("{op}: expected a CPU f32 tensor"),
    }
}

/// The f32 data of contiguous CPU storage at `layout` (a custom op's input, or a tensor's
/// storage held through `storage_and_layout`).
pub fn contiguous_f32<'a>(s: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expected a CPU f32 tensor");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: input is not contiguous");
    };
    Ok(&v[start..end])
}

/// The thread count candle's CPU kernels use (`candle_core::utils::get_num_threads`), read
/// cheaply: with `RAYON_NUM_THREADS` unset, candle 0.11 counts the physical cores by parsing
/// `/proc/cpuinfo` on every call, and the kernels ask once per op (14% of a streaming Mimi
/// frame). That default cannot change while the process runs, so it is counted once.
pub fn candle_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return candle_core::utils::get_num_threads();
    }
    *DEFAULT.get_or_init(candle_core::utils::get_num_threads)
}

/// Runs `f` on a thread of the global rayon pool (the calling thread waits), or right here
/// when this already is one. A model call made from outside the pool pays, on every parallel
/// kernel inside it, for injecting the work and waking every worker; from inside, the calling
/// worker takes its share at once and only the others are woken.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Threads the CPU kernels split over: candle's count, capped by the rayon pool they run in.
pub(crate) fn threads() -> usize {
    candle_threads().min(rayon::current_num_threads()).max(1)
}

/// The thread count candle's CPU kernels use, as a `gemm` parallelism.
pub(crate) fn parallelism() -> Parallelism {
    match candle_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A strided f32 matrix of [`gemm`]: base pointer, row stride and column stride, in elements.
pub(crate) type Mat = (*const f32, isize, isize);

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, each operand given as (pointer, row
/// stride, column stride): the one form in which vaak's CPU kernels call the `gemm` crate
/// (`accumulate` reads `dst`, otherwise it is only written; no scaling, no conjugation).
///
/// # Safety
/// Each operand holds its `m x n`, `m x k` or `k x n` elements at its strides; `dst` is not
/// read or written by anything else during the call.
pub(crate) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    par: Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m, n, k, dst.0, dst.2, dst.1, accumulate, lhs.0, lhs.2, lhs.1, rhs.0, rhs.2, rhs.1,
            1.0, 1.0, false, false, false, par,
        );
    }
}

/// A raw output pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes its own disjoint region (see the callers).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` floats in (a method, so closures capture the `Send` wrapper whole).
    ///
    /// # Safety
    /// `i` must lie inside the buffer.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps `i` inside the buffer.
        unsafe { self.0.add(i) }
    }
}
