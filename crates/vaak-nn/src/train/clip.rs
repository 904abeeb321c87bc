//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` (L2, `foreach=False`).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// The L2 norm over all gradients of `params` (those without a gradient are skipped), as
/// the norm of the per-tensor norms, computed in f32 like PyTorch.
pub fn grad_norm(grads: &GradStore, params: &[&Var]) -> Result<f64> {
    let mut sumsq = Vec::new();
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            let n = g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?;
            sumsq.push(n.sqr()?);
        }
    }
    if sumsq.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sumsq, 0)?.sum_all()?.sqrt()?;
    Ok(total.to_scalar::<f32>()? as f64)
}

/// Scales all gradients by `max_norm / (total + 1e-6)` when that is below 1 and returns the
/// total norm before clipping. A non-finite norm is returned as is and the gradients are then
/// scaled to NaN, as in PyTorch; callers should skip such a step.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[&Var], max_norm: f64) -> Result<f64> {
    let total = grad_norm(grads, params)?;
    // PyTorch divides in f32: reproduce the rounding.
    let coef = (max_norm as f32) / (total as f32 + 1e-6f32);
    if coef >= 1.0 && total.is_finite() {
        return Ok(total);
    }
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            let coef_t = Tensor::new(coef, g.device())?.to_dtype(g.dtype())?;
            let scaled = g.broadcast_mul(&coef_t)?;
            grads.insert(p.as_tensor(), scaled);
        }
    }
    Ok(total)
}
