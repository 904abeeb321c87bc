//! The two checks every hand-written CPU inference kernel in vaak starts with: whether a tensor
//! is one it may read directly (CPU, f32, not tracked by autograd), and its contiguous f32 data.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};

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
