//! [`CausalConv1d`]: a causal, optionally strided / dilated / grouped conv that streams.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Arc;

use super::fast::{conv1d_fused, conv1d_inference, Conv1dOpts, Fused};
use super::{check_input, check_mask, check_params, load_params, CausalConvConfig};
use crate::simd::{HalfWeight, StepWeights};
use crate::streaming::{zero_slots, StreamMask, StreamTensor, StreamingModule};

const NAME: &str = "CausalConv1d";

/// `conv1d` (PyTorch semantics, symmetric zero `padding`) with correct gradients: an explicit
/// im2col and one rank-2 matmul per group, so that its gradients never come from candle
/// 0.11.1's conv1d backward, which is wrong for batch > 1 on the CPU.
///
/// On the CPU with f32 input and weight the im2col is one custom op whose backward is its
/// exact adjoint (col2im), much cheaper to differentiate; elsewhere (CUDA, Metal, other
/// dtypes) it is [`conv1d_composed`]. Both compute the same function to float rounding.
///
/// `x` is `[batch, in, L]`, `w` is `[out, in / groups, k]`; the result is
/// `[batch, out, (L + 2 * padding - dilation * (k - 1) - 1) / stride + 1]`.
pub fn conv1d_differentiable(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let spec = Spec {
        padding,
        stride,
        dilation,
        groups,
    };
    spec.check("conv1d_differentiable", x, w)?;
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32) {
        return spec.composed(x, w);
    }
    if groups == 1 {
        let pads = (padding, padding);
        return super::train::conv1d_train_cpu_f32(x, w, pads, stride, dilation);
    }
    let x = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
    } else {
        x.clone()
    };
    let cols = super::im2col::im2col_cpu_f32(&x, w.dim(2)?, stride, dilation)?;
    cols_times_weight(&cols, w, groups, x.dim(0)?)?.contiguous()
}

/// [`conv1d_differentiable`]'s portable formulation, on any device and dtype: the im2col out
/// of `k` narrowed slices, a cat and a permute, so that autograd differentiates plain candle
/// ops. It is also the reference the CPU fast path is tested against.
pub fn conv1d_composed(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let spec = Spec {
        padding,
        stride,
        dilation,
        groups,
    };
    spec.check("conv1d_composed", x, w)?;
    spec.composed(x, w)
}

/// A `conv1d`'s options (PyTorch's).
#[derive(Clone, Copy, Debug)]
struct Spec {
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
}

impl Spec {
    /// Rejects zero sizes, weights that do not fit the input and inputs shorter than the
    /// kernel; `f` names the function in the error.
    fn check(&self, f: &str, x: &Tensor, w: &Tensor) -> Result<()> {
        let Self {
            padding,
            stride,
            dilation,
            groups,
        } = *self;
        super::check_conv_args(
            f,
            x,
            w,
            "[out, in/groups, kernel]",
            (stride, dilation, groups),
        )?;
        let (_, c_in, l) = x.dims3()?;
        let (c_out, c_in_g, k) = w.dims3()?;
        if c_in_g * groups != c_in || c_out % groups != 0 || k == 0 {
            bail!(
                "{f}: weight {:?} does not fit input {:?} with {groups} groups",
                w.dims(),
                x.dims()
            );
        }
        let k_eff = dilation * (k - 1) + 1;
        if l + 2 * padding < k_eff {
            bail!("{f}: input of length {l} (+ 2 x {padding} padding) is shorter than the kernel span {k_eff}");
        }
        Ok(())
    }

    /// The slice-and-cat im2col of [`conv1d_composed`] (arguments checked).
    fn composed(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let Self {
            padding,
            stride,
            dilation,
            groups,
        } = *self;
        let (b, c_in, l) = x.dims3()?;
        let k = w.dim(2)?;
        let k_eff = dilation * (k - 1) + 1;
        let l_out = (l + 2 * padding - k_eff) / stride + 1;
        let x = x.pad_with_zeros(2, padding, padding)?;
        let taps = (0..k)
            .map(|j| {
                let t = x.narrow(2, j * dilation, (l_out - 1) * stride + 1)?;
                if stride == 1 {
                    t.unsqueeze(3)
                } else {
                    t.pad_with_zeros(2, 0, stride - 1)?
                        .reshape((b, c_in, l_out, stride))?
                        .narrow(3, 0, 1)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // [B, L_out, C_in, k]: one im2col row per output frame.
        let cols = Tensor::cat(&taps, 3)?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((b * l_out, c_in * k))?;
        cols_times_weight(&cols, w, groups, b)
    }
}

/// im2col rows `[B * L_out, C_in * k]` times the weight `[C_out, C_in / groups, k]`, one rank-2
/// matmul (batched over the groups): `[B, C_out, L_out]` (a transposed view).
fn cols_times_weight(cols: &Tensor, w: &Tensor, groups: usize, b: usize) -> Result<Tensor> {
    let (rows, _) = cols.dims2()?;
    let (c_out, c_in_g, k) = w.dims3()?;
    let c_out_g = c_out / groups;
    let y = if groups == 1 {
        cols.matmul(&w.reshape((c_out, c_in_g * k))?.t()?)?
    } else {
        // One batched matmul over the groups, [g, rows, ck] x [g, ck, c_out_g]: slicing the
        // columns per group instead costs, in the backward, a zero-padded full-size copy per
        // group (320 of them for a 320-channel depthwise conv).
        let ck = c_in_g * k;
        let cg = cols
            .reshape((rows, groups, ck))?
            .transpose(0, 1)?
            .contiguous()?;
        let wg = w.reshape((groups, c_out_g, ck))?.transpose(1, 2)?;
        cg.matmul(&wg)?.transpose(0, 1)?.reshape((rows, c_out))?
    };
    y.reshape((b, rows / b, c_out))?.transpose(1, 2)
}

/// What a [`CausalConv1d`] puts in front of a clip (or a stream) as its left context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CausalPad {
    /// Zeros (`pad_mode = "constant"`).
    #[default]
    Zeros,
    /// Copies of the first sample (`pad_mode = "replicate"`, as Mimi's downsampling conv).
    Replicate,
}

/// Per-slot streaming state: the input not yet consumed by an emitted frame, left padding
/// included. Every slot has the same length `pad + phase`.
#[derive(Clone, Debug)]
struct State {
    batch: usize,
    /// `[batch, in_channels, pad + phase]`; `None` when that length is zero.
    buf: Option<Tensor>,
    /// Samples received since the last stride boundary, `0 <= phase < stride`.
    phase: usize,
    /// Per slot: its left padding still waits for the slot's first sample (replicate padding
    /// only; such a slot always sits at phase 0, as it has consumed nothing yet).
    fresh: Vec<bool>,
}

/// A causal `Conv1d`; see the [module docs](super) for the padding convention.
#[derive(Clone, Debug)]
pub struct CausalConv1d {
    cfg: CausalConvConfig,
    weight: Tensor,
    bias: Option<Tensor>,
    pad: CausalPad,
    state: Option<State>,
    /// The half copy of `weight` that streaming steps read ([`Self::set_step_weights`]).
    step_weight: Option<Arc<HalfWeight>>,
}

impl CausalConv1d {
    /// Loads `weight` `[out, in / groups, k]` and, if `cfg.bias`, `bias` `[out]` from the root
    /// of `vb`.
    pub fn new(cfg: CausalConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate(NAME)?;
        let (weight, bias) = load_params(
            &cfg,
            &vb,
            (
                cfg.out_channels,
                cfg.in_channels / cfg.groups,
                cfg.kernel_size,
            ),
        )?;
        Self::from_tensors(cfg, weight, bias)
    }

    /// Builds the conv from explicit tensors (e.g. a weight already merged from weight norm).
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
                cfg.out_channels,
                cfg.in_channels / cfg.groups,
                cfg.kernel_size,
            ),
            bias.as_ref(),
        )?;
        Ok(Self {
            cfg,
            weight,
            bias,
            pad: CausalPad::Zeros,
            state: None,
            step_weight: None,
        })
    }

    /// Sets what fills the left context (zeros by default); streaming follows it too.
    pub fn with_pad(mut self, pad: CausalPad) -> Self {
        self.pad = pad;
        self.state = None;
        self
    }

    /// What fills the left context.
    pub fn pad(&self) -> CausalPad {
        self.pad
    }

    /// The configuration this module was built with.
    pub fn config(&self) -> &CausalConvConfig {
        &self.cfg
    }

    /// The (merged) weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Makes streaming steps that produce few frames (the fast path's few-column case, e.g.
    /// 2 frames at a codec's frame rate) read a half-precision copy of the weight, made once
    /// here; [`StepWeights::F32`] drops it. A step with few frames is bound by reading the
    /// weight from memory. Whole-clip calls keep the f32 weight.
    pub fn set_step_weights(&mut self, kind: StepWeights) -> Result<()> {
        self.step_weight = HalfWeight::new_row_blocks(&self.weight, kind)?.map(Arc::new);
        Ok(())
    }

    /// The bias, if configured.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Samples put in front of the clip (zeros or copies of the first, see [`CausalPad`]):
    /// `max(k_eff - stride, 0)`.
    pub fn left_padding(&self) -> usize {
        self.cfg.effective_kernel().saturating_sub(self.cfg.stride)
    }

    /// Input samples skipped at the start of each stride block when `k_eff < stride`.
    fn block_offset(&self) -> usize {
        self.cfg.stride.saturating_sub(self.cfg.effective_kernel())
    }

    /// Output frames for a `t`-sample clip: `t / stride`.
    pub fn output_len(&self, t: usize) -> usize {
        t / self.cfg.stride
    }

    /// Runs the conv over exactly `frames` windows of an already left-padded signal.
    /// `half`: the step weight, on the streaming path.
    fn conv_frames(
        &self,
        padded: &Tensor,
        frames: usize,
        half: Option<&HalfWeight>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let span = (frames - 1) * cfg.stride + cfg.effective_kernel();
        let window = padded.narrow(2, self.block_offset(), span)?;
        // Training goes through the differentiable formulation inside (candle 0.11.1's conv1d
        // input gradient is wrong on the CPU for batch > 1, see the module docs); inference
        // through the fast path.
        let fused = Fused {
            step_weight: half,
            ..Default::default()
        };
        conv1d_fused(
            &window,
            &self.weight,
            self.bias.as_ref(),
            self.opts(0),
            None,
            fused,
        )
    }

    /// The conv's options with `pad_left` zeros in front.
    fn opts(&self, pad_left: usize) -> Conv1dOpts {
        Conv1dOpts {
            pad_left,
            pad_right: 0,
            stride: self.cfg.stride,
            dilation: self.cfg.dilation,
            groups: self.cfg.groups,
        }
    }

    /// [`Self::forward`] with zero left padding: the padding is read as zeros by the conv,
    /// not copied in front of the clip.
    fn forward_zero_padded(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let cfg = &self.cfg;
        let left = self.left_padding();
        // The samples the frames read: [left zeros ; x[offset .. offset + span - left]].
        let span = (frames - 1) * cfg.stride + cfg.effective_kernel();
        let window = x.narrow(2, self.block_offset(), span - left)?;
        conv1d_inference(
            &window,
            &self.weight,
            self.bias.as_ref(),
            self.opts(left),
            None,
        )
    }

    /// Whole-clip forward: `[B, in, T]` to `[B, out, T / stride]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, t) = check_input(NAME, x, self.cfg.in_channels)?;
        let frames = self.output_len(t);
        if frames == 0 {
            return Tensor::zeros((b, self.cfg.out_channels, 0), x.dtype(), x.device());
        }
        match self.pad {
            CausalPad::Zeros => self.forward_zero_padded(x, frames),
            CausalPad::Replicate => {
                self.conv_frames(&x.pad_with_same(2, self.left_padding(), 0)?, frames, None)
            }
        }
    }

    fn fresh_state(&self, x: &Tensor, batch: usize) -> Result<State> {
        let pad = self.left_padding();
        let buf = if pad == 0 {
            None
        } else {
            Some(Tensor::zeros(
                (batch, self.cfg.in_channels, pad),
                x.dtype(),
                x.device(),
            )?)
        };
        let fresh = buf.is_some() && self.pad == CausalPad::Replicate;
        Ok(State {
            batch,
            buf,
            phase: 0,
            fresh: vec![fresh; batch],
        })
    }

    /// Replicate padding: fills the left context of every fresh slot active in `mask` with
    /// copies of its first sample in `x`, and marks those slots as started. Zero padding, or
    /// no fresh slot, leaves the state as it is.
    fn fill_fresh(&self, state: &mut State, x: &Tensor, mask: &StreamMask) -> Result<()> {
        let fill: Vec<bool> = (0..state.batch)
            .map(|i| state.fresh[i] && mask.is_active(i))
            .collect();
        if !fill.iter().any(|&f| f) {
            return Ok(());
        }
        let Some(buf) = &state.buf else {
            return Ok(());
        };
        let first = x.narrow(2, 0, 1)?.broadcast_as(buf.shape())?.contiguous()?;
        state.buf = Some(StreamMask::from_slots(&fill).select(&first, buf)?.detach());
        for (f, done) in state.fresh.iter_mut().zip(fill) {
            *f &= !done;
        }
        Ok(())
    }
}

impl Module for CausalConv1d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        CausalConv1d::forward(self, xs)
    }
}

impl StreamingModule for CausalConv1d {
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor> {
        let Some(x) = xs.as_option() else {
            return Ok(StreamTensor::empty());
        };
        let (b, _, t) = check_input(NAME, x, self.cfg.in_channels)?;
        check_mask(NAME, mask, b)?;
        if t == 0 {
            return Ok(StreamTensor::empty());
        }
        let stride = self.cfg.stride;
        let mut state = match self.state.take() {
            Some(s) if s.batch == b => s,
            Some(s) => {
                let prev = s.batch;
                self.state = Some(s);
                bail!("{NAME}: stream batch changed from {prev} to {b} without reset_state");
            }
            None => self.fresh_state(x, b)?,
        };
        let partial = !mask.is_all();
        if partial && t % stride != 0 {
            self.state = Some(state);
            bail!(
                "{NAME}: a masked step needs a chunk length that is a multiple of the stride \
                 ({stride}) so all slots stay aligned, got {t}"
            );
        }
        self.fill_fresh(&mut state, x, mask)?;

        let full = match &state.buf {
            Some(buf) => Tensor::cat(&[buf, x], 2)?,
            None => x.clone(),
        };
        let pad = self.left_padding();
        let total = pad + state.phase + t;
        let needed = pad + stride;
        let frames = if total >= needed {
            (total - needed) / stride + 1
        } else {
            0
        };
        let out = if frames > 0 {
            let half = self.step_weight.as_deref();
            StreamTensor::from_tensor(self.conv_frames(&full, frames, half)?)
        } else {
            StreamTensor::empty()
        };
        let kept = total - frames * stride;
        let rest = if kept == 0 {
            None
        } else {
            Some(full.narrow(2, frames * stride, kept)?)
        };
        let buf = match (rest, &state.buf) {
            // t % stride == 0 keeps the buffer length, so old and new rows line up.
            (Some(new), Some(old)) if partial => Some(mask.select(&new, old)?),
            (rest, _) => rest,
        };
        self.state = Some(State {
            batch: b,
            // Detached: the carried context must not keep the autograd graph of every earlier
            // step alive (with trainable weights each buffer would chain to the previous one
            // and a stream's memory would grow per step without bound).
            buf: buf.map(|t| t.detach()),
            phase: kept - pad,
            fresh: state.fresh,
        });
        Ok(out)
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
            return Ok(());
        }
        if state.phase != 0 {
            bail!(
                "{NAME}: cannot reset single slots {} samples into a stride block of {}; \
                 the other slots would no longer line up (reset all slots, or step in \
                 multiples of the stride)",
                state.phase,
                self.cfg.stride
            );
        }
        if let Some(buf) = &state.buf {
            state.buf = Some(zero_slots(buf, mask)?.detach());
            if self.pad == CausalPad::Replicate {
                // The zeros are placeholders until the slot's next first sample arrives.
                for (i, f) in state.fresh.iter_mut().enumerate() {
                    *f |= mask.is_active(i);
                }
            }
        }
        Ok(())
    }
}
