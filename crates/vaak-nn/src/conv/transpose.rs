//! [`CausalConvTranspose1d`] and the autograd-friendly [`conv_transpose1d_differentiable`].

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Arc;

use super::fast::{conv_transpose1d_step, ConvTranspose1dOpts};
use super::{add_bias, check_input, check_mask, check_params, load_params, CausalConvConfig};
use crate::simd::{HalfWeight, StepWeights};
use crate::streaming::{zero_slots, StreamMask, StreamTensor, StreamingModule};

const NAME: &str = "CausalConvTranspose1d";

/// `conv_transpose1d` built only from ops that have a backward pass in candle 0.11, so it can
/// be trained; in value it equals PyTorch's `conv_transpose1d` (and candle's, where that one
/// is right: see the module docs).
///
/// `x` is `[batch, in, T]` and `w` is `[in, out / groups, k]`; the result is
/// `[batch, out, (T - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1]`.
///
/// How: one 2-D matmul turns every input frame into its `out x k_eff` contribution (the kernel
/// is dilated by zero insertion first), the kernel axis is cut into `ceil(k_eff / stride)`
/// blocks of `stride` samples, and the blocks are shifted by whole frames and summed
/// (overlap-add). Then `padding` is cut from both ends and `output_padding` zeros are added on
/// the right. The multiply-adds equal the native kernel's; the extra work is
/// `ceil(k_eff / stride)` tensor adds.
pub fn conv_transpose1d_differentiable(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    const F: &str = "conv_transpose1d_differentiable";
    super::check_conv_args(
        F,
        x,
        w,
        "[in, out/groups, kernel]",
        (stride, dilation, groups),
    )?;
    let (_, c_in, t) = x.dims3()?;
    let (w_in, c_out_g, k) = w.dims3()?;
    if w_in != c_in {
        bail!("{F}: input has {c_in} channels but the weight expects {w_in}");
    }
    if c_in % groups != 0 {
        bail!("{F}: in channels ({c_in}) are not divisible by groups ({groups})");
    }
    if k == 0 || t == 0 || c_out_g == 0 {
        bail!("{F}: empty kernel or input (kernel {k}, time {t}, out/groups {c_out_g})");
    }
    let k_eff = dilation * (k - 1) + 1;
    let full_len = (t - 1) * stride + k_eff;
    let l_out = (full_len + output_padding) as isize - 2 * padding as isize;
    if l_out <= 0 {
        bail!("{F}: output length would be {l_out} (padding {padding} too large for T = {t})");
    }
    let l_out = l_out as usize;
    if groups == 1 && x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return super::train::conv_transpose1d_train_cpu_f32(
            x, w, stride, padding, dilation, l_out,
        );
    }

    let full = if groups == 1 {
        overlap_add(x, w, stride, dilation)?
    } else {
        let xs = x.chunk(groups, 1)?;
        let ws = w.chunk(groups, 0)?;
        let parts = xs
            .iter()
            .zip(&ws)
            .map(|(x, w)| overlap_add(x, w, stride, dilation))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?
    };
    // Output sample n is full-length sample n + padding; past the end it is output padding.
    let needed = padding + l_out;
    let full = if needed > full_len {
        full.pad_with_zeros(2, 0, needed - full_len)?
    } else {
        full
    };
    full.narrow(2, padding, l_out)
}

/// Single-group, unpadded transpose: `[B, in, T]` x `[in, out, k]` to
/// `[B, out, (T - 1) * stride + k_eff]`.
fn overlap_add(x: &Tensor, w: &Tensor, stride: usize, dilation: usize) -> Result<Tensor> {
    let (b, c_in, t) = x.dims3()?;
    let (_, c_out, k) = w.dims3()?;
    let k_eff = dilation * (k - 1) + 1;
    let w = if dilation == 1 {
        w.clone()
    } else {
        w.unsqueeze(3)?
            .pad_with_zeros(3, 0, dilation - 1)?
            .reshape((c_in, c_out, k * dilation))?
            .narrow(2, 0, k_eff)?
    };
    let blocks = k_eff.div_ceil(stride);
    let w = w.pad_with_zeros(2, 0, blocks * stride - k_eff)?;
    // A rank-2 matmul on purpose: candle 0.11.1's CPU matmul folds batches wrongly when the
    // lhs is transposed and the rhs is broadcast (the bug behind its native conv_transpose1d).
    let cols = x
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * t, c_in))?
        .matmul(&w.reshape((c_in, c_out * blocks * stride))?)?
        .reshape((b, t, c_out, blocks, stride))?;
    let block = |j: usize| -> Result<Tensor> {
        cols.narrow(3, j, 1)?
            .squeeze(3)?
            .pad_with_zeros(1, j, blocks - 1 - j)
    };
    let mut acc = block(0)?;
    for j in 1..blocks {
        acc = acc.add(&block(j)?)?;
    }
    acc.permute((0, 2, 1, 3))?
        .reshape((b, c_out, (t + blocks - 1) * stride))?
        .narrow(2, 0, (t - 1) * stride + k_eff)
}

/// Per-slot overlap-add state: the not-yet-final tail of the output (bias excluded).
#[derive(Clone, Debug)]
struct State {
    batch: usize,
    /// `[batch, out_channels, k_eff - stride]`; `None` while all zeros or when there is no
    /// overlap.
    partial: Option<Tensor>,
}

/// A causal `ConvTranspose1d` (upsampling by `stride`); see the [module docs](super) for the
/// trimming convention. Groups are supported; padding is fixed by the causal convention.
#[derive(Clone, Debug)]
pub struct CausalConvTranspose1d {
    cfg: CausalConvConfig,
    weight: Tensor,
    bias: Option<Tensor>,
    state: Option<State>,
    /// The half copy of `weight` that streaming steps read ([`Self::set_step_weights`]).
    step_weight: Option<Arc<HalfWeight>>,
}

impl CausalConvTranspose1d {
    /// Loads `weight` `[in, out / groups, k]` and, if `cfg.bias`, `bias` `[out]` from the root
    /// of `vb`.
    pub fn new(cfg: CausalConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate(NAME)?;
        let (weight, bias) = load_params(
            &cfg,
            &vb,
            (
                cfg.in_channels,
                cfg.out_channels / cfg.groups,
                cfg.kernel_size,
            ),
        )?;
        Self::from_tensors(cfg, weight, bias)
    }

    /// Builds the conv-transpose from explicit tensors (e.g. a weight merged from weight norm).
    pub fn from_tensors(
        cfg: CausalConvConfig,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        check_params(
            NAME,
            &cfg,
            &weight,
            (
                cfg.in_channels,
                cfg.out_channels / cfg.groups,
                cfg.kernel_size,
            ),
            bias.as_ref(),
        )?;
        Ok(Self {
            cfg,
            weight,
            bias,
            state: None,
            step_weight: None,
        })
    }

    /// The configuration this module was built with.
    pub fn config(&self) -> &CausalConvConfig {
        &self.cfg
    }

    /// The (merged) weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Makes streaming steps over few frames (the fast path's few-frame case) read a
    /// half-precision copy of the weight, made once here; [`StepWeights::F32`] drops it.
    /// Whole-clip calls keep the f32 weight.
    pub fn set_step_weights(&mut self, kind: StepWeights) -> Result<()> {
        self.step_weight = HalfWeight::new(&self.weight, kind)?.map(Arc::new);
        Ok(())
    }

    /// The bias, if configured.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Samples of a frame's output that overlap the next frames: `max(k_eff - stride, 0)`.
    pub fn overlap(&self) -> usize {
        self.cfg.effective_kernel().saturating_sub(self.cfg.stride)
    }

    /// Output samples for a `t`-frame clip: `t * stride`.
    pub fn output_len(&self, t: usize) -> usize {
        t * self.cfg.stride
    }

    /// The untrimmed transpose of a non-empty chunk, `t * stride + overlap` samples, with the
    /// bias added when given: the fast inference path, or the differentiable one under
    /// autograd (inside [`conv_transpose1d_inference`]).
    /// `half`: the step weight, on the streaming path.
    fn raw(&self, x: &Tensor, bias: Option<&Tensor>, half: Option<&HalfWeight>) -> Result<Tensor> {
        let cfg = &self.cfg;
        // When k_eff < stride, output padding fills each last block up to a whole stride.
        let out_pad = cfg.stride.saturating_sub(cfg.effective_kernel());
        let opts = ConvTranspose1dOpts {
            stride: cfg.stride,
            padding: 0,
            output_padding: out_pad,
            dilation: cfg.dilation,
            groups: cfg.groups,
        };
        conv_transpose1d_step(x, &self.weight, half, bias, opts, None)
    }

    /// Whole-clip forward: `[B, in, T]` to `[B, out, T * stride]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, t) = check_input(NAME, x, self.cfg.in_channels)?;
        if t == 0 {
            return Tensor::zeros((b, self.cfg.out_channels, 0), x.dtype(), x.device());
        }
        self.raw(x, self.bias.as_ref(), None)?
            .narrow(2, 0, self.output_len(t))
    }
}

impl Module for CausalConvTranspose1d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        CausalConvTranspose1d::forward(self, xs)
    }
}

impl StreamingModule for CausalConvTranspose1d {
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        let Some(x) = xs.as_option() else {
            return Ok(StreamTensor::empty());
        };
        let (b, _, t) = check_input(NAME, x, self.cfg.in_channels)?;
        check_mask(NAME, mask, b)?;
        if t == 0 {
            return Ok(StreamTensor::empty());
        }
        let old = match &self.state {
            Some(s) if s.batch != b => {
                bail!(
                    "{NAME}: stream batch changed from {} to {b} without reset_state",
                    s.batch
                )
            }
            Some(s) => s.partial.clone(),
            None => None,
        };
        let n = self.output_len(t);
        let ov = self.overlap();
        let mut y = self.raw(x, None, self.step_weight.as_deref())?;
        if let Some(p) = &old {
            y = y.add(&p.pad_with_zeros(2, 0, n)?)?;
        }
        let out = add_bias(y.narrow(2, 0, n)?, self.bias.as_ref())?;
        let partial = if ov == 0 {
            None
        } else {
            let new = y.narrow(2, n, ov)?;
            Some(match (&old, mask.is_all()) {
                (_, true) => new,
                (Some(old), false) => mask.select(&new, old)?,
                (None, false) => mask.select(&new, &new.zeros_like()?)?,
            })
        };
        // Detached so the overlap carried to the next step does not hold this step's graph.
        let partial = partial.map(|p| p.detach());
        self.state = Some(State { batch: b, partial });
        Ok(StreamTensor::from_tensor(out))
    }

    fn reset_state(&mut self) {
        self.state = None;
    }

    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        check_mask(NAME, mask, state.batch)?;
        if mask.is_all() {
            self.state = None;
        } else if let Some(p) = &state.partial {
            state.partial = Some(zero_slots(p, mask)?.detach());
        }
        Ok(())
    }
}
