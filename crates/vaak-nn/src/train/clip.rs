//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` (L2, `foreach=False`).
//!
//! The norm is reduced on the gradients' device ([`grad_norm_tensor`]) and read back once;
//! clipping scales every gradient by one device scalar, so a step costs one host sync for the
//! norm (needed to skip non-finite updates) and no host-to-device copies.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// The L2 norm over all gradients of `params` (those without a gradient are skipped) as an f32
/// scalar tensor on their device, `sqrt(sum of the squared entries)`, with no host sync;
/// `None` when no parameter has a gradient.
pub fn grad_norm_tensor(grads: &GradStore, params: &[&Var]) -> Result<Option<Tensor>> {
    let mut sumsq = Vec::new();
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            let g = if g.dtype() == DType::F32 {
                g.clone()
            } else {
                g.to_dtype(DType::F32)?
            };
            sumsq.push(g.sqr()?.sum_all()?);
        }
    }
    if sumsq.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::stack(&sumsq, 0)?.sum_all()?.sqrt()?))
}

/// The L2 norm over all gradients of `params` (those without a gradient are skipped), computed
/// in f32 like PyTorch (up to summation order).
pub fn grad_norm(grads: &GradStore, params: &[&Var]) -> Result<f64> {
    match grad_norm_tensor(grads, params)? {
        Some(t) => Ok(t.to_scalar::<f32>()? as f64),
        None => Ok(0.0),
    }
}

/// Scales all gradients by `max_norm / (total + 1e-6)` when that is below 1 and returns the
/// total norm before clipping. A non-finite norm is returned as is and the gradients are then
/// scaled to NaN, as in PyTorch; callers should skip such a step.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[&Var], max_norm: f64) -> Result<f64> {
    let Some(norm) = grad_norm_tensor(grads, params)? else {
        return Ok(0.0);
    };
    let total = norm.to_scalar::<f32>()? as f64;
    // PyTorch divides in f32: reproduce the rounding.
    let coef = (max_norm as f32) / (total as f32 + 1e-6f32);
    if coef >= 1.0 && total.is_finite() {
        return Ok(total);
    }
    // `coef` as a device scalar: max_norm / (norm + 1e-6), computed on the device from the
    // norm already there (no host-to-device copy).
    let coef_t = norm.affine(1.0, 1e-6)?.recip()?.affine(max_norm, 0.0)?;
    let mut by_dtype: Vec<(DType, Tensor)> = Vec::new();
    for p in params {
        if let Some(g) = grads.get(p.as_tensor()) {
            let dt = g.dtype();
            let c = match by_dtype.iter().find(|(d, _)| *d == dt) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = coef_t.to_dtype(dt)?;
                    by_dtype.push((dt, c.clone()));
                    c
                }
            };
            let scaled = g.broadcast_mul(&c)?;
            grads.insert(p.as_tensor(), scaled);
        }
    }
    Ok(total)
}
