//! speechbrain 1.1.2's `ECAPA_TDNN` (inference only), tensor names as in its state dict.
//!
//! Written here from speechbrain's module structure (candle-transformers has no ECAPA):
//! `TDNNBlock` = "same"-padded `Conv1d` (reflect padding of `dilation * (k - 1) / 2` frames each
//! side), ReLU, then `BatchNorm1d` (eval: running stats, eps 1e-5); `SERes2NetBlock` = 1x1 TDNN,
//! Res2Net (scale-1 dilated TDNNs on channel chunks, each fed the previous chunk's output), 1x1
//! TDNN, squeeze-excitation over the valid frames, plus a residual (1x1 conv when the channel
//! count changes); multi-layer aggregation of the SE blocks' outputs; attentive statistics
//! pooling with global context; BatchNorm; a 1x1 conv to `lin_neurons`.
//!
//! Frame validity comes as [`FrameLengths`]:
//! * [`FrameLengths::Relative`] reproduces speechbrain exactly for a padded batch: masks are
//!   `t < rel * T` in `f32`, and the convolutions reflect at the *batch* end, so the padding of a
//!   short clip leaks into its last frames (as it does in speechbrain).
//! * [`FrameLengths::Frames`] gives every clip exactly what it would get alone: each time
//!   convolution reflects at the clip's own last frame (per-item gather), and masks use the
//!   integer frame count. Frames past a clip's end are computed but never read.

use candle_core::{DType, Device, IndexOp, Tensor};
use vaak_nn::conv::{conv1d_inference, Conv1dOpts};
use vaak_nn::weights::Weights;

use super::hyperparams::EcapaConfig;
use crate::error::{Result, TeacherError};

/// speechbrain `BatchNorm1d` default.
const BN_EPS: f64 = 1e-5;
/// `AttentiveStatisticsPooling.eps`: floor of the pooled variance.
const POOL_EPS: f64 = 1e-12;

/// Which frames of each batch item are real.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameLengths {
    /// speechbrain's relative lengths (`wav_lens`), one per item, in `(0, 1]`.
    Relative(Vec<f32>),
    /// Exact frame counts, one per item, each `>= 1` and `<= T`.
    Frames(Vec<usize>),
}

/// Per-forward masks and reflect-padding gathers.
struct Ctx {
    /// `[B, 1, T]`, 1 on valid frames.
    mask: Tensor,
    /// `[B, 1, T]`, 0 on valid frames and -inf elsewhere.
    neg_inf: Tensor,
    /// Valid frames per item for the per-clip gathers; `None` reflects at the batch end.
    frames: Option<Vec<usize>>,
    t: usize,
}

impl Ctx {
    fn new(lengths: &FrameLengths, b: usize, t: usize, device: &Device) -> Result<Self> {
        let (valid, frames): (Vec<Vec<bool>>, _) = match lengths {
            FrameLengths::Relative(rel) => {
                check_len(rel.len(), b)?;
                if let Some(r) = rel.iter().find(|r| !(**r > 0.0 && **r <= 1.0)) {
                    return Err(TeacherError::BadInput(format!(
                        "relative length {r} outside (0, 1]"
                    )));
                }
                // length_to_mask(lengths * L, max_len=L): arange(L) < rel * L, all in f32.
                let tf = t as f32;
                let v = rel
                    .iter()
                    .map(|&r| (0..t).map(|i| (i as f32) < r * tf).collect())
                    .collect();
                (v, None)
            }
            FrameLengths::Frames(n) => {
                check_len(n.len(), b)?;
                if let Some(k) = n.iter().find(|&&k| k == 0 || k > t) {
                    return Err(TeacherError::BadInput(format!(
                        "frame count {k} outside 1..={t}"
                    )));
                }
                let v = n.iter().map(|&k| (0..t).map(|i| i < k).collect()).collect();
                (v, Some(n.clone()))
            }
        };
        let m: Vec<f32> = valid.iter().flatten().map(|&v| v as u8 as f32).collect();
        let ni: Vec<f32> = valid
            .iter()
            .flatten()
            .map(|&v| if v { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Ok(Self {
            mask: Tensor::from_vec(m, (b, 1, t), device)?,
            neg_inf: Tensor::from_vec(ni, (b, 1, t), device)?,
            frames,
            t,
        })
    }

    /// Reflect-pads the time axis by `p` frames each side, at the batch end or at each clip's
    /// own end.
    fn pad(&self, x: &Tensor, p: usize) -> Result<Tensor> {
        if p == 0 {
            return Ok(x.clone());
        }
        let device = x.device();
        // index_select needs a contiguous source (Res2Net chunks are channel narrows).
        let x = &x.contiguous()?;
        match &self.frames {
            None => {
                if self.t <= p {
                    return Err(TeacherError::BadInput(format!(
                        "{} frames are too few for reflect padding of {p}",
                        self.t
                    )));
                }
                let idx = Tensor::new(reflect_indices(self.t, self.t, p), device)?;
                Ok(x.index_select(&idx, 2)?)
            }
            Some(frames) => {
                let mut items = Vec::with_capacity(frames.len());
                for (i, &n) in frames.iter().enumerate() {
                    if n <= p {
                        return Err(TeacherError::BadInput(format!(
                            "item {i}: {n} frames are too few for reflect padding of {p}"
                        )));
                    }
                    let idx = Tensor::new(reflect_indices(n, self.t, p), device)?;
                    items.push(x.i(i..i + 1)?.index_select(&idx, 2)?);
                }
                Ok(Tensor::cat(&items, 0)?)
            }
        }
    }
}

fn check_len(got: usize, b: usize) -> Result<()> {
    if got != b {
        return Err(TeacherError::BadInput(format!(
            "{got} lengths for a batch of {b}"
        )));
    }
    Ok(())
}

/// Source frame of each of the `t + 2p` padded positions, reflecting (`torch.nn.functional.pad`
/// mode "reflect") around a clip of `n` valid frames; positions past `n + p` repeat the last
/// valid frame (their outputs are past the clip and never read).
fn reflect_indices(n: usize, t: usize, p: usize) -> Vec<u32> {
    let last = n as isize - 1;
    (0..t + 2 * p)
        .map(|j| {
            let u = j as isize - p as isize;
            let r = if u < 0 {
                -u
            } else if u > last {
                2 * last - u
            } else {
                u
            };
            r.clamp(0, last) as u32
        })
        .collect()
}

/// speechbrain `Conv1d` (padding "same", reflect) over `[B, C, T]`.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    dilation: usize,
    groups: usize,
    pad: usize,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &Weights,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Self> {
        // The kernel must be contiguous: candle's CPU conv1d is wrong otherwise.
        let weight = w
            .get_with_shape(&format!("{name}.weight"), &[cout, cin / groups, k])?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let bias = w
            .get_with_shape(&format!("{name}.bias"), &[cout])?
            .to_dtype(DType::F32)?;
        Ok(Self {
            weight,
            bias,
            dilation,
            groups,
            pad: dilation * (k - 1) / 2,
        })
    }

    /// vaak-nn's inference conv (one gemm per item and group, bias fused) on the reflect-padded
    /// input.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let x = ctx.pad(x, self.pad)?;
        let opts = Conv1dOpts::new(0, 1, self.dilation, self.groups);
        Ok(conv1d_inference(
            &x,
            &self.weight,
            Some(&self.bias),
            opts,
            None,
        )?)
    }

    /// A 1x1 conv on `[B, C, 1]` statistics (no time axis to pad).
    fn forward_pointwise(&self, x: &Tensor) -> Result<Tensor> {
        let opts = Conv1dOpts::new(0, 1, 1, self.groups);
        Ok(conv1d_inference(
            x,
            &self.weight,
            Some(&self.bias),
            opts,
            None,
        )?)
    }
}

/// Eval-mode BatchNorm folded into a per-channel scale and shift.
struct Bn {
    scale: Tensor,
    shift: Tensor,
}

impl Bn {
    fn load(w: &Weights, name: &str, c: usize) -> Result<Self> {
        let get = |p: &str| -> Result<Tensor> {
            Ok(w.get_with_shape(&format!("{name}.{p}"), &[c])?
                .to_dtype(DType::F32)?)
        };
        let (gamma, beta, mean, var) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        let scale = gamma.div(&(var + BN_EPS)?.sqrt()?)?;
        let shift = beta.sub(&mean.mul(&scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, c, 1))?,
            shift: shift.reshape((1, c, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }
}

/// Conv, ReLU, BatchNorm.
struct Tdnn {
    conv: Conv,
    bn: Bn,
}

impl Tdnn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        w: &Weights,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv::load(
                w,
                &format!("{name}.conv.conv"),
                cin,
                cout,
                k,
                dilation,
                groups,
            )?,
            bn: Bn::load(w, &format!("{name}.norm.norm"), cout)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x, ctx)?.relu()?)
    }
}

struct SeRes2Net {
    tdnn1: Tdnn,
    res2net: Vec<Tdnn>,
    scale: usize,
    tdnn2: Tdnn,
    se1: Conv,
    se2: Conv,
    shortcut: Option<Conv>,
}

impl SeRes2Net {
    fn load(w: &Weights, name: &str, cfg: &EcapaConfig, i: usize) -> Result<Self> {
        let (cin, cout) = (cfg.channels[i - 1], cfg.channels[i]);
        let (k, d, g, s) = (
            cfg.kernel_sizes[i],
            cfg.dilations[i],
            cfg.groups[i],
            cfg.res2net_scale,
        );
        let hidden = cout / s;
        let res2net = (0..s.saturating_sub(1))
            .map(|j| {
                Tdnn::load(
                    w,
                    &format!("{name}.res2net_block.blocks.{j}"),
                    hidden,
                    hidden,
                    k,
                    d,
                    1,
                )
            })
            .collect::<Result<_>>()?;
        let shortcut = if cin != cout {
            Some(Conv::load(
                w,
                &format!("{name}.shortcut.conv"),
                cin,
                cout,
                1,
                1,
                1,
            )?)
        } else {
            None
        };
        Ok(Self {
            tdnn1: Tdnn::load(w, &format!("{name}.tdnn1"), cin, cout, 1, 1, g)?,
            res2net,
            scale: s,
            tdnn2: Tdnn::load(w, &format!("{name}.tdnn2"), cout, cout, 1, 1, g)?,
            se1: Conv::load(
                w,
                &format!("{name}.se_block.conv1.conv"),
                cout,
                cfg.se_channels,
                1,
                1,
                1,
            )?,
            se2: Conv::load(
                w,
                &format!("{name}.se_block.conv2.conv"),
                cfg.se_channels,
                cout,
                1,
                1,
                1,
            )?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let residual = match &self.shortcut {
            Some(c) => c.forward(x, ctx)?,
            None => x.clone(),
        };
        let h = self.tdnn1.forward(x, ctx)?;
        // Res2Net: chunk i (i >= 1) goes through block i-1 after adding the previous output.
        let width = h.dim(1)? / self.scale;
        let mut ys: Vec<Tensor> = Vec::with_capacity(self.scale);
        for i in 0..self.scale {
            let xi = h.narrow(1, i * width, width)?;
            let yi = match i {
                0 => xi,
                1 => self.res2net[0].forward(&xi, ctx)?,
                _ => self.res2net[i - 1].forward(&(xi + &ys[i - 1])?, ctx)?,
            };
            ys.push(yi);
        }
        let h = self.tdnn2.forward(&Tensor::cat(&ys, 1)?, ctx)?;
        // Squeeze-excitation over the valid frames.
        let total = ctx.mask.sum_keepdim(2)?;
        let s = h
            .broadcast_mul(&ctx.mask)?
            .sum_keepdim(2)?
            .broadcast_div(&total)?;
        let s = self.se1.forward_pointwise(&s)?.relu()?;
        let s = candle_nn::ops::sigmoid(&self.se2.forward_pointwise(&s)?)?;
        Ok((h.broadcast_mul(&s)? + residual)?)
    }
}

/// Weighted mean and std over time; `w` is `[B, 1|C, T]` and sums to 1 over time.
fn weighted_stats(x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = x.broadcast_mul(w)?.sum_keepdim(2)?;
    let var = x
        .broadcast_sub(&mean)?
        .sqr()?
        .broadcast_mul(w)?
        .sum_keepdim(2)?
        .clamp(POOL_EPS, f64::INFINITY)?;
    Ok((mean, var.sqrt()?))
}

struct Asp {
    tdnn: Tdnn,
    conv: Conv,
    global_context: bool,
}

impl Asp {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let attn_in = if self.global_context {
            let total = ctx.mask.sum_keepdim(2)?;
            let (mean, std) = weighted_stats(x, &ctx.mask.broadcast_div(&total)?)?;
            let shape = x.shape();
            Tensor::cat(
                &[
                    x.clone(),
                    mean.broadcast_as(shape)?.contiguous()?,
                    std.broadcast_as(shape)?.contiguous()?,
                ],
                1,
            )?
        } else {
            x.clone()
        };
        let a = self.tdnn.forward(&attn_in, ctx)?.tanh()?;
        let a = self.conv.forward(&a, ctx)?.broadcast_add(&ctx.neg_inf)?;
        let a = candle_nn::ops::softmax_last_dim(&a.contiguous()?)?;
        let (mean, std) = weighted_stats(x, &a)?;
        Ok(Tensor::cat(&[mean, std], 1)?)
    }
}

/// The ECAPA-TDNN embedding model.
pub struct EcapaTdnn {
    cfg: EcapaConfig,
    block0: Tdnn,
    blocks: Vec<SeRes2Net>,
    mfa: Tdnn,
    asp: Asp,
    asp_bn: Bn,
    fc: Conv,
}

impl EcapaTdnn {
    /// Builds the model from an `embedding_model.ckpt` state dict. A missing tensor or one of the
    /// wrong shape is a [`vaak_nn::Error`] naming it.
    pub fn load(w: &Weights, cfg: &EcapaConfig) -> Result<Self> {
        cfg.validate().map_err(TeacherError::Msg)?;
        let n = cfg.channels.len();
        let ch = &cfg.channels;
        let block0 = Tdnn::load(
            w,
            "blocks.0",
            cfg.input_size,
            ch[0],
            cfg.kernel_sizes[0],
            cfg.dilations[0],
            cfg.groups[0],
        )?;
        let blocks = (1..n - 1)
            .map(|i| SeRes2Net::load(w, &format!("blocks.{i}"), cfg, i))
            .collect::<Result<_>>()?;
        let mfa = Tdnn::load(
            w,
            "mfa",
            ch[n - 2] * (n - 2),
            ch[n - 1],
            cfg.kernel_sizes[n - 1],
            cfg.dilations[n - 1],
            cfg.groups[n - 1],
        )?;
        let c = ch[n - 1];
        let ctx_in = if cfg.global_context { 3 * c } else { c };
        let asp = Asp {
            tdnn: Tdnn::load(w, "asp.tdnn", ctx_in, cfg.attention_channels, 1, 1, 1)?,
            conv: Conv::load(w, "asp.conv.conv", cfg.attention_channels, c, 1, 1, 1)?,
            global_context: cfg.global_context,
        };
        Ok(Self {
            cfg: cfg.clone(),
            block0,
            blocks,
            mfa,
            asp,
            asp_bn: Bn::load(w, "asp_bn.norm", 2 * c)?,
            fc: Conv::load(w, "fc.conv", 2 * c, cfg.lin_neurons, 1, 1, 1)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EcapaConfig {
        &self.cfg
    }

    /// Embeddings `[B, lin_neurons]` of normalised features `[B, T, input_size]`.
    pub fn forward(&self, feats: &Tensor, lengths: &FrameLengths) -> Result<Tensor> {
        let (b, t, f) = feats.dims3()?;
        if f != self.cfg.input_size {
            return Err(TeacherError::BadInput(format!(
                "features have {f} bins, the model takes {}",
                self.cfg.input_size
            )));
        }
        let ctx = Ctx::new(lengths, b, t, feats.device())?;
        let mut x = self
            .block0
            .forward(&feats.transpose(1, 2)?.contiguous()?, &ctx)?;
        let mut outs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(&x, &ctx)?;
            outs.push(x.clone());
        }
        let x = self.mfa.forward(&Tensor::cat(&outs, 1)?, &ctx)?;
        let x = self.asp_bn.forward(&self.asp.forward(&x, &ctx)?)?;
        Ok(self.fc.forward_pointwise(&x)?.squeeze(2)?)
    }
}

#[cfg(test)]
mod tests {
    use super::reflect_indices;

    #[test]
    fn reflect_indices_match_torch_reflect() {
        // F.pad(arange(5), (2, 2), mode="reflect") = [2, 1, 0, 1, 2, 3, 4, 3, 2]
        assert_eq!(reflect_indices(5, 5, 2), vec![2, 1, 0, 1, 2, 3, 4, 3, 2]);
        // A 4-frame clip in a 7-frame batch: reflect at its own end, then repeat.
        assert_eq!(
            reflect_indices(4, 7, 2),
            vec![2, 1, 0, 1, 2, 3, 2, 1, 0, 0, 0]
        );
    }
}
