//! Causal 1-D convolutions that run both over whole clips and as streams.
//!
//! # Padding convention
//!
//! Write `k_eff = (kernel_size - 1) * dilation + 1` for the span of a kernel and `s` for the
//! stride.
//!
//! * [`CausalConv1d`]: output frame `t` reads the `k_eff`-sample window that *ends* at input
//!   sample `(t + 1) * s - 1`. When `k_eff >= s` the input is left-padded with
//!   `k_eff - s` zeros (the moshi / EnCodec causal convention), or with copies of the first
//!   sample under [`CausalPad::Replicate`] (a stream fills that context from each slot's
//!   first sample, again after a reset of the slot); when `k_eff < s` the first
//!   `s - k_eff` samples of every stride block are simply never read. Either way a `T`-sample
//!   clip gives exactly `T / s` frames (integer division, no right padding): a trailing partial
//!   stride block produces nothing, because a stream could not have produced it either.
//! * [`CausalConvTranspose1d`]: input frame `t` writes output samples
//!   `t * s .. t * s + k_eff`. The whole-clip output is cut to exactly `T * s` samples: the
//!   right-hand overlap tail of `k_eff - s` samples (which still awaits the next frame) is
//!   dropped, and when `k_eff < s` the gap up to `T * s` is filled with zeros (plus bias).
//!
//! # Streaming invariant
//!
//! For any split of a clip into chunks (any sizes, including empty ones), concatenating the
//! outputs of [`StreamingModule::step`] equals `forward` on the whole clip. The conv keeps the
//! not-yet-consumed input tail per slot and emits each frame as soon as its window is complete;
//! the transpose keeps the per-slot partial sums of the overlap region (overlap-add). Slots
//! step together as one batch, so every slot must stay at the same position inside a stride
//! block: a masked step of a strided conv needs a chunk length that is a multiple of the
//! stride, and a partial reset needs the batch to sit on a stride boundary. Both are the normal
//! case (one codec frame per step) and are checked with an error otherwise. The transpose has
//! no such restriction.
//!
//! # Why a differentiable conv-transpose
//!
//! candle 0.11's `Tensor::conv_transpose1d` has no backward pass, so a codec decoder built on it
//! cannot be trained. [`conv_transpose1d_differentiable`] computes the same function from ops
//! that do have one: a rank-2 matmul gives every input frame's `out x k` contribution, and
//! shifted block sums do the overlap-add. It costs about what the native kernel costs, so
//! [`CausalConvTranspose1d`] always uses it (training and inference share one path).
//!
//! # The inference path
//!
//! Without autograd, on the CPU in f32, both modules run [`conv1d_inference`] /
//! [`conv_transpose1d_inference`] (channel-major im2col or col2im plus one `gemm` per batch
//! item and group, bias fused, optional per-item lengths for exact batching; see `fast.rs`).
//! Every conv model (EnCodec, Mimi, SEANet, the OpenVoice converter, ECAPA) calls these, so
//! there is one fast conv for inference; training goes through the differentiable forms.
//!
//! # A candle 0.11.1 CPU bug this module steers around
//!
//! The CPU matmul folds a batched product into one big one when the rhs is broadcast over the
//! batch, without checking that the lhs rows are contiguous. With a transposed lhs and batch > 1
//! the result is wrong. candle's col2im `conv_transpose1d` (dilation 1, padding 0, output
//! padding 0, contiguous kernel) hits exactly that, and so does the input gradient of
//! `conv1d` (computed with that `conv_transpose1d`); a non-contiguous conv1d kernel is
//! mishandled too. Hence the transpose here never calls candle's, and [`CausalConv1d`] runs
//! [`conv1d_differentiable`] (im2col plus rank-2 matmuls) whenever autograd tracks its input or
//! weight, keeping candle's fast `conv1d` for inference. The gradient tests against PyTorch use
//! batch 2 and would catch a regression. On the CPU in f32 that im2col is a custom op with its
//! exact adjoint as backward (the training fast path); [`conv1d_composed`] is the portable
//! formulation used elsewhere and as its reference.

mod conv1d;
pub(crate) mod fast;
mod im2col;
mod train;
mod transpose;
mod winograd;

pub use conv1d::{conv1d_composed, conv1d_differentiable, CausalConv1d, CausalPad};
pub use fast::{
    conv1d_fused, conv1d_inference, conv_transpose1d_inference, conv_transpose1d_step, elu,
    leaky_relu, Conv1dOpts, ConvTranspose1dOpts, Fused, InputAct,
};
pub use transpose::{conv_transpose1d_differentiable, CausalConvTranspose1d};

use candle_core::{bail, Result, Tensor};

/// The checks every 1-D conv entry point makes first: stride, dilation and groups at least 1,
/// and a `[batch, in, time]` input with a rank-3 weight (`weight` names its layout in the error).
pub(crate) fn check_conv_args(
    f: &str,
    x: &Tensor,
    w: &Tensor,
    weight: &str,
    (stride, dilation, groups): (usize, usize, usize),
) -> Result<()> {
    if stride == 0 || dilation == 0 || groups == 0 {
        bail!("{f}: stride ({stride}), dilation ({dilation}) and groups ({groups}) must be >= 1");
    }
    if x.rank() != 3 || w.rank() != 3 {
        bail!(
            "{f}: input must be [batch, in, time] and weight {weight}, got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    }
    Ok(())
}

use crate::streaming::StreamMask;

/// Shape and options of a causal conv or conv-transpose.
///
/// For [`CausalConv1d`] the weight is `[out_channels, in_channels / groups, kernel_size]`; for
/// [`CausalConvTranspose1d`] it is `[in_channels, out_channels / groups, kernel_size]` (the
/// PyTorch layouts). The optional bias is `[out_channels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalConvConfig {
    /// Channels of the input `[batch, in_channels, time]`.
    pub in_channels: usize,
    /// Channels of the output.
    pub out_channels: usize,
    /// Taps of the kernel (before dilation).
    pub kernel_size: usize,
    /// Downsampling factor of the conv, upsampling factor of the transpose.
    pub stride: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
    /// Channel groups; both channel counts must be multiples of it.
    pub groups: usize,
    /// Whether a `[out_channels]` bias is added.
    pub bias: bool,
}

impl CausalConvConfig {
    /// A stride-1, dilation-1, single-group config with bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the dilation.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the number of channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Sets whether there is a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Span of the dilated kernel, `(kernel_size - 1) * dilation + 1`.
    pub fn effective_kernel(&self) -> usize {
        (self.kernel_size - 1) * self.dilation + 1
    }

    /// Rejects zero sizes and channel counts that do not split into `groups`.
    pub fn validate(&self, module: &str) -> Result<()> {
        let fields = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel_size", self.kernel_size),
            ("stride", self.stride),
            ("dilation", self.dilation),
            ("groups", self.groups),
        ];
        for (name, v) in fields {
            if v == 0 {
                bail!("{module}: {name} must be at least 1, got 0");
            }
        }
        if !self.in_channels.is_multiple_of(self.groups) {
            bail!(
                "{module}: in_channels ({}) is not divisible by groups ({})",
                self.in_channels,
                self.groups
            );
        }
        if !self.out_channels.is_multiple_of(self.groups) {
            bail!(
                "{module}: out_channels ({}) is not divisible by groups ({})",
                self.out_channels,
                self.groups
            );
        }
        Ok(())
    }
}

/// Reads `weight` of `shape` and, when `cfg.bias`, `bias` `[out]` from the root of `vb`.
fn load_params(
    cfg: &CausalConvConfig,
    vb: &candle_nn::VarBuilder,
    shape: (usize, usize, usize),
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = vb.get(shape, "weight")?;
    let bias = if cfg.bias {
        Some(vb.get(cfg.out_channels, "bias")?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// Checks that `w` has `expected` dims and that `bias` is present exactly when configured.
fn check_params(
    module: &str,
    cfg: &CausalConvConfig,
    weight: &Tensor,
    expected: (usize, usize, usize),
    bias: Option<&Tensor>,
) -> Result<()> {
    cfg.validate(module)?;
    let e = [expected.0, expected.1, expected.2];
    if weight.dims() != e {
        bail!(
            "{module}: weight has shape {:?}, expected {:?}",
            weight.dims(),
            e
        );
    }
    match (cfg.bias, bias) {
        (true, None) => bail!("{module}: config says bias = true but no bias tensor was given"),
        (false, Some(_)) => bail!("{module}: a bias tensor was given but config says bias = false"),
        (true, Some(b)) if b.dims() != [cfg.out_channels] => bail!(
            "{module}: bias has shape {:?}, expected [{}]",
            b.dims(),
            cfg.out_channels
        ),
        _ => Ok(()),
    }
}

/// Validates a `[batch, channels, time]` input and returns its dims.
fn check_input(module: &str, x: &Tensor, channels: usize) -> Result<(usize, usize, usize)> {
    if x.rank() != 3 {
        bail!(
            "{module}: input must be [batch, channels, time], got shape {:?}",
            x.dims()
        );
    }
    let (b, c, t) = x.dims3()?;
    if c != channels {
        bail!("{module}: input has {c} channels, expected {channels}");
    }
    Ok((b, c, t))
}

/// Rejects a per-slot mask whose length is not the batch size.
fn check_mask(module: &str, mask: &StreamMask, batch: usize) -> Result<()> {
    if let StreamMask::Slots(s) = mask {
        if s.len() != batch {
            bail!(
                "{module}: mask has {} slots but the stream batch has {batch}",
                s.len()
            );
        }
    }
    Ok(())
}

/// Adds a `[channels]` bias to a `[batch, channels, time]` tensor.
fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1))?),
    }
}
