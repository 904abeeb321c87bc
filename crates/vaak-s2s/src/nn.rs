//! Small shared pieces: a LayerNorm with a differentiable training path (candle's fused
//! `layer_norm` has no backward), a differentiable log-softmax cross-entropy, and id checks.

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm over the last axis: fused for inference, primitive ops for training.
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

impl LayerNorm {
    pub fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            w: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            b: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &self.w, &self.b, 1e-5);
        }
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

/// Per-position negative log-likelihood `[N]` of `targets: [N]` (u32) under `logits: [N, V]`,
/// from differentiable ops. Targets must be valid indices (masked positions use any id).
pub(crate) fn nll(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &m)?;
    let picked = logits.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?;
    (lse - picked)?.squeeze(1)
}
