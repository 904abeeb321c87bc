//! A LayerNorm with a differentiable training path (candle's fused `layer_norm` has no
//! backward; vaak-nn's has).

use candle_core::Tensor;
use candle_nn::VarBuilder;

/// LayerNorm over the last axis: candle's kernel for inference, vaak-nn's differentiable one
/// for training.
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
        vaak_nn::fused::layer_norm(x, &self.w, &self.b, 1e-5)
    }
}
