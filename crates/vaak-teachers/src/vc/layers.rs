//! The building blocks of OpenVoice's `SynthesizerTrn` (VITS): WaveNet-style `WN`, the
//! mean-only residual coupling flow, HiFi-GAN's generator and resblocks, and the reference
//! encoder (weight-normed 2-D convs + GRU).
//!
//! Our own candle code: candle-transformers has no VITS. Every conv and conv-transpose goes
//! through vaak-nn's inference conv (`conv1d_inference`, `conv_transpose1d_inference`: one
//! gemm per item, bias fused; candle 0.11.1's native transpose is wrong for batch > 1). The
//! generator takes per-clip frame lengths so that a padded batch gives each clip exactly its
//! one-clip output (every conv reads the samples past a clip's end as zeros, as the one-clip
//! call's zero padding does); the WN stacks get the same from their masks. Every linear layer is a rank-2 matmul on contiguous data (the transposed-lhs
//! batched-matmul trap). Weight norm (`weight_g`/`weight_v`, or the parametrization spelling,
//! or a merged `weight`) is folded at load time by `vaak_nn::weights::weight_norm`.

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use candle_nn::ops::sigmoid;
use candle_nn::VarBuilder;
use vaak_nn::conv::{
    conv1d_fused, conv_transpose1d_inference, leaky_relu, Conv1dOpts, ConvTranspose1dOpts, Fused,
    InputAct,
};
use vaak_nn::weights::weight_norm;

/// HiFi-GAN's leaky-ReLU slope inside the generator.
pub const LRELU_SLOPE: f64 = 0.1;
/// `F.leaky_relu`'s default, used once before `conv_post`.
const TORCH_DEFAULT_LRELU: f64 = 0.01;

/// A `Conv1d` (optionally weight-normed; both load the same way) with symmetric padding.
#[derive(Clone, Debug)]
pub struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
}

impl Conv1d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        dilation: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = weight_norm(vb, &[c_out, c_in, k], Some(0))?.contiguous()?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            padding,
            dilation,
        })
    }

    /// "Same" padding for an odd kernel at this dilation (`commons.get_padding`).
    pub fn load_same(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        d: usize,
    ) -> Result<Self> {
        Self::load(vb, c_in, c_out, k, d, (k * d - d) / 2, true)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_lengths(x, None)
    }

    /// As [`Self::forward`], reading the samples of item `i` past `lengths[i]` as zeros.
    pub fn forward_lengths(&self, x: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
        self.forward_fused(x, lengths, Fused::default())
    }

    /// As [`Self::forward_lengths`] of `fused.input_act(x)`, plus `fused.residual`, in one
    /// pass (see `vaak_nn::conv::conv1d_fused`).
    pub fn forward_fused(
        &self,
        x: &Tensor,
        lengths: Option<&[usize]>,
        fused: Fused<'_>,
    ) -> Result<Tensor> {
        let opts = Conv1dOpts::new(self.padding, 1, self.dilation, 1);
        conv1d_fused(x, &self.weight, self.bias.as_ref(), opts, lengths, fused)
    }
}

/// `modules.WN`: gated dilated convs with a global condition, summed skip outputs.
#[derive(Clone, Debug)]
pub struct Wn {
    hidden: usize,
    in_layers: Vec<Conv1d>,
    res_skip: Vec<Conv1d>,
    cond: Conv1d,
}

impl Wn {
    pub fn load(
        vb: &VarBuilder,
        hidden: usize,
        kernel: usize,
        dilation_rate: usize,
        n_layers: usize,
        gin: usize,
    ) -> Result<Self> {
        let cond = Conv1d::load(
            &vb.pp("cond_layer"),
            gin,
            2 * hidden * n_layers,
            1,
            1,
            0,
            true,
        )?;
        let mut in_layers = Vec::with_capacity(n_layers);
        let mut res_skip = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let d = dilation_rate.pow(i as u32);
            in_layers.push(Conv1d::load_same(
                &vb.pp(format!("in_layers.{i}")),
                hidden,
                2 * hidden,
                kernel,
                d,
            )?);
            let out = if i + 1 < n_layers { 2 * hidden } else { hidden };
            res_skip.push(Conv1d::load(
                &vb.pp(format!("res_skip_layers.{i}")),
                hidden,
                out,
                1,
                1,
                0,
                true,
            )?);
        }
        Ok(Self {
            hidden,
            in_layers,
            res_skip,
            cond,
        })
    }

    /// `x`: `[B, hidden, T]`, `mask`: `[B, 1, T]`, `g`: `[B, gin, 1]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, g: Option<&Tensor>) -> Result<Tensor> {
        let h = self.hidden;
        let n = self.in_layers.len();
        let g = g.map(|g| self.cond.forward(g)).transpose()?;
        let mut x = x.clone();
        let mut out: Option<Tensor> = None;
        for i in 0..n {
            let x_in = self.in_layers[i].forward(&x)?;
            let g_i = g
                .as_ref()
                .map(|g| g.narrow(1, i * 2 * h, 2 * h))
                .transpose()?;
            let acts = vaak_nn::activation::gated_tanh_sigmoid(&x_in, g_i.as_ref())?;
            let rs = self.res_skip[i].forward(&acts)?;
            let skip = if i + 1 < n {
                x = (x + rs.narrow(1, 0, h)?)?.broadcast_mul(mask)?;
                rs.narrow(1, h, h)?
            } else {
                rs
            };
            out = Some(match out {
                Some(o) => (o + skip)?,
                None => skip,
            });
        }
        out.expect("WN has at least one layer").broadcast_mul(mask)
    }
}

/// `models.PosteriorEncoder`: spectrogram to the latent's mean and log-scale.
#[derive(Clone, Debug)]
pub struct PosteriorEncoder {
    out_channels: usize,
    pre: Conv1d,
    enc: Wn,
    proj: Conv1d,
}

impl PosteriorEncoder {
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        hidden: usize,
        gin: usize,
    ) -> Result<Self> {
        // SynthesizerTrn hard-codes kernel 5, dilation rate 1, 16 layers.
        Ok(Self {
            out_channels: c_out,
            pre: Conv1d::load(&vb.pp("pre"), c_in, hidden, 1, 1, 0, true)?,
            enc: Wn::load(&vb.pp("enc"), hidden, 5, 1, 16, gin)?,
            proj: Conv1d::load(&vb.pp("proj"), hidden, 2 * c_out, 1, 1, 0, true)?,
        })
    }

    /// `(m, logs)`, each `[B, inter, T]`, masked.
    pub fn stats(&self, spec: &Tensor, mask: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.pre.forward(spec)?.broadcast_mul(mask)?;
        let x = self.enc.forward(&x, mask, Some(g))?;
        let stats = self.proj.forward(&x)?.broadcast_mul(mask)?;
        let c = self.out_channels;
        Ok((stats.narrow(1, 0, c)?, stats.narrow(1, c, c)?))
    }
}

/// `modules.ResidualCouplingLayer` with `mean_only=True` (the only kind the converter uses).
#[derive(Clone, Debug)]
struct CouplingLayer {
    half: usize,
    pre: Conv1d,
    enc: Wn,
    post: Conv1d,
}

impl CouplingLayer {
    fn shift(&self, x0: &Tensor, mask: &Tensor, g: &Tensor) -> Result<Tensor> {
        let h = self.pre.forward(x0)?.broadcast_mul(mask)?;
        let h = self.enc.forward(&h, mask, Some(g))?;
        self.post.forward(&h)?.broadcast_mul(mask)
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, g: &Tensor, reverse: bool) -> Result<Tensor> {
        let x0 = x.narrow(1, 0, self.half)?;
        let x1 = x.narrow(1, self.half, self.half)?;
        let m = self.shift(&x0, mask, g)?;
        // mean_only: logs = 0, so the scale exp(+-logs) is 1.
        let x1 = if reverse {
            (x1 - m)?.broadcast_mul(mask)?
        } else {
            (m + x1.broadcast_mul(mask)?)?
        };
        Tensor::cat(&[&x0, &x1], 1)
    }
}

/// `models.ResidualCouplingBlock`: 4 coupling layers, each followed by a channel flip.
#[derive(Clone, Debug)]
pub struct Flow {
    layers: Vec<CouplingLayer>,
    flip: Tensor,
}

impl Flow {
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        hidden: usize,
        gin: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = channels / 2;
        // SynthesizerTrn: kernel 5, dilation rate 1, 4 WN layers, 4 flows; odd indices are Flip.
        let layers = (0..4)
            .map(|i| {
                let vb = vb.pp(format!("flows.{}", 2 * i));
                Ok(CouplingLayer {
                    half,
                    pre: Conv1d::load(&vb.pp("pre"), half, hidden, 1, 1, 0, true)?,
                    enc: Wn::load(&vb.pp("enc"), hidden, 5, 1, 4, gin)?,
                    post: Conv1d::load(&vb.pp("post"), hidden, half, 1, 1, 0, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let idx: Vec<u32> = (0..channels as u32).rev().collect();
        Ok(Self {
            layers,
            flip: Tensor::new(idx, device)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: &Tensor, g: &Tensor, reverse: bool) -> Result<Tensor> {
        let mut x = x.clone();
        if reverse {
            for l in self.layers.iter().rev() {
                x = x.index_select(&self.flip, 1)?;
                x = l.forward(&x, mask, g, true)?;
            }
        } else {
            for l in &self.layers {
                x = l.forward(&x, mask, g, false)?;
                x = x.index_select(&self.flip, 1)?;
            }
        }
        Ok(x)
    }
}

/// HiFi-GAN `ResBlock1` (pairs of dilated + plain convs) or `ResBlock2` (single convs).
#[derive(Clone, Debug)]
enum ResBlock {
    One(Vec<(Conv1d, Conv1d)>),
    Two(Vec<Conv1d>),
}

impl ResBlock {
    fn load(vb: &VarBuilder, kind: &str, ch: usize, k: usize, dil: &[usize]) -> Result<Self> {
        if kind == "1" {
            let pairs = (0..3)
                .map(|j| {
                    Ok((
                        Conv1d::load_same(&vb.pp(format!("convs1.{j}")), ch, ch, k, dil[j])?,
                        Conv1d::load_same(&vb.pp(format!("convs2.{j}")), ch, ch, k, 1)?,
                    ))
                })
                .collect::<Result<_>>()?;
            Ok(Self::One(pairs))
        } else {
            let convs = (0..2)
                .map(|j| Conv1d::load_same(&vb.pp(format!("convs.{j}")), ch, ch, k, dil[j]))
                .collect::<Result<_>>()?;
            Ok(Self::Two(convs))
        }
    }

    /// `lengths`: valid samples per item (see [`Generator::forward_lengths`]).
    fn forward(&self, x: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
        // Each conv reads leaky_relu(input) and the residual add is the initial value of the
        // second conv's output: no pass over the signal besides the convs themselves.
        fn act(residual: Option<&Tensor>) -> Fused<'_> {
            Fused {
                input_act: InputAct::LeakyRelu(LRELU_SLOPE as f32),
                residual,
                // A vocoder's audio tolerates Winograd's few extra roundings.
                winograd: true,
                ..Default::default()
            }
        }
        let mut x = x.clone();
        match self {
            Self::One(pairs) => {
                for (c1, c2) in pairs {
                    let xt = c1.forward_fused(&x, lengths, act(None))?;
                    x = c2.forward_fused(&xt, lengths, act(Some(&x)))?;
                }
            }
            Self::Two(convs) => {
                for c in convs {
                    x = c.forward_fused(&x, lengths, act(Some(&x)))?;
                }
            }
        }
        Ok(x)
    }
}

/// One weight-normed `ConvTranspose1d` of the generator.
#[derive(Clone, Debug)]
struct Upsample {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// `models.Generator` (HiFi-GAN) with a global condition added after `conv_pre`.
#[derive(Clone, Debug)]
pub struct Generator {
    conv_pre: Conv1d,
    cond: Conv1d,
    ups: Vec<Upsample>,
    resblocks: Vec<ResBlock>,
    n_kernels: usize,
    conv_post: Conv1d,
}

impl Generator {
    pub fn load(vb: &VarBuilder, cfg: &super::ModelConfig) -> Result<Self> {
        let init = cfg.upsample_initial_channel;
        let conv_pre = Conv1d::load(&vb.pp("conv_pre"), cfg.inter_channels, init, 7, 1, 3, true)?;
        let cond = Conv1d::load(&vb.pp("cond"), cfg.gin_channels, init, 1, 1, 0, true)?;
        let mut ups = Vec::new();
        let mut resblocks = Vec::new();
        let mut ch = init;
        for (i, (&u, &k)) in cfg
            .upsample_rates
            .iter()
            .zip(&cfg.upsample_kernel_sizes)
            .enumerate()
        {
            let (c_in, c_out) = (init >> i, init >> (i + 1));
            let uvb = vb.pp(format!("ups.{i}"));
            // ConvTranspose1d weight is [in, out, k]; weight norm's default dim 0 is `in`.
            let weight = weight_norm(&uvb, &[c_in, c_out, k], Some(0))?.contiguous()?;
            let bias = uvb.get(c_out, "bias")?;
            ups.push(Upsample {
                weight,
                bias,
                stride: u,
                padding: (k - u) / 2,
            });
            ch = c_out;
            for (j, (&rk, rd)) in cfg
                .resblock_kernel_sizes
                .iter()
                .zip(&cfg.resblock_dilation_sizes)
                .enumerate()
            {
                let idx = i * cfg.resblock_kernel_sizes.len() + j;
                resblocks.push(ResBlock::load(
                    &vb.pp(format!("resblocks.{idx}")),
                    &cfg.resblock,
                    ch,
                    rk,
                    rd,
                )?);
            }
        }
        let conv_post = Conv1d::load(&vb.pp("conv_post"), ch, 1, 7, 1, 3, false)?;
        Ok(Self {
            conv_pre,
            cond,
            ups,
            resblocks,
            n_kernels: cfg.resblock_kernel_sizes.len(),
            conv_post,
        })
    }

    /// `z`: `[B, inter, T]`, `g`: `[B, gin, 1]` -> `[B, 1, T * prod(upsample_rates)]`.
    pub fn forward(&self, z: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.forward_lengths(z, g, None)
    }

    /// As [`Self::forward`] for a padded batch: item `i` has `frames[i]` valid frames, and its
    /// first `frames[i] * prod(upsample_rates)` output samples equal [`Self::forward`] on its
    /// valid frames alone (every conv reads what lies past the item's end as zeros).
    pub fn forward_lengths(
        &self,
        z: &Tensor,
        g: &Tensor,
        frames: Option<&[usize]>,
    ) -> Result<Tensor> {
        let mut lengths: Option<Vec<usize>> = frames.map(<[usize]>::to_vec);
        let mut x = self
            .conv_pre
            .forward_lengths(z, lengths.as_deref())?
            .broadcast_add(&self.cond.forward(g)?)?;
        for (i, up) in self.ups.iter().enumerate() {
            x = leaky_relu(&x, LRELU_SLOPE)?;
            let opts = ConvTranspose1dOpts {
                stride: up.stride,
                padding: up.padding,
                output_padding: 0,
                dilation: 1,
                groups: 1,
            };
            x = conv_transpose1d_inference(
                &x,
                &up.weight,
                Some(&up.bias),
                opts,
                lengths.as_deref(),
            )?;
            if let Some(l) = lengths.as_mut() {
                l.iter_mut().for_each(|n| *n *= up.stride);
            }
            let mut xs: Option<Tensor> = None;
            for rb in &self.resblocks[i * self.n_kernels..(i + 1) * self.n_kernels] {
                let y = rb.forward(&x, lengths.as_deref())?;
                xs = Some(match xs {
                    Some(s) => (s + y)?,
                    None => y,
                });
            }
            x = (xs.expect("at least one resblock kernel") / self.n_kernels as f64)?;
        }
        let post = Fused {
            input_act: InputAct::LeakyRelu(TORCH_DEFAULT_LRELU as f32),
            residual: None,
            ..Default::default()
        };
        self.conv_post
            .forward_fused(&x, lengths.as_deref(), post)?
            .tanh()
    }
}

/// A weight-normed `Conv2d` with kernel 3, stride 2, padding 1.
#[derive(Clone, Debug)]
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
}

/// Single-layer unidirectional GRU in PyTorch's gate order `[r, z, n]`.
#[derive(Clone, Debug)]
struct Gru {
    hidden: usize,
    /// Transposed, `[input, 3H]` and `[H, 3H]`, so each step is one rank-2 matmul.
    w_ih_t: Tensor,
    w_hh_t: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

impl Gru {
    /// `x`: `[B, T, input]` -> the last hidden state `[B, H]` (h0 = 0).
    fn last_hidden(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = self.hidden;
        let xi = x
            .contiguous()?
            .reshape((b * t, d))?
            .matmul(&self.w_ih_t)?
            .broadcast_add(&self.b_ih)?
            .reshape((b, t, 3 * h))?;
        let mut state = Tensor::zeros((b, h), x.dtype(), x.device())?;
        for step in 0..t {
            let gi = xi.i((.., step, ..))?;
            let gh = state.matmul(&self.w_hh_t)?.broadcast_add(&self.b_hh)?;
            let r = sigmoid(&(gi.narrow(1, 0, h)? + gh.narrow(1, 0, h)?)?)?;
            let z = sigmoid(&(gi.narrow(1, h, h)? + gh.narrow(1, h, h)?)?)?;
            let n = (gi.narrow(1, 2 * h, h)? + (r * gh.narrow(1, 2 * h, h)?)?)?.tanh()?;
            // h' = (1 - z) * n + z * h = n + z * (h - n)
            state = (&n + (z * (state - &n)?)?)?;
        }
        Ok(state)
    }
}

/// Hard-coded in `models.ReferenceEncoder`.
const REF_FILTERS: [usize; 6] = [32, 32, 64, 64, 128, 128];
const REF_GRU_HIDDEN: usize = 128;
const LAYER_NORM_EPS: f64 = 1e-5;

/// `models.ReferenceEncoder`: linear spectrogram to the tone-colour embedding.
#[derive(Clone, Debug)]
pub struct ReferenceEncoder {
    spec_channels: usize,
    ln_weight: Tensor,
    ln_bias: Tensor,
    convs: Vec<Conv2d>,
    gru: Gru,
    proj_w_t: Tensor,
    proj_b: Tensor,
}

impl ReferenceEncoder {
    pub fn load(vb: &VarBuilder, spec_channels: usize, gin: usize) -> Result<Self> {
        let mut convs = Vec::new();
        let mut c_in = 1;
        let mut width = spec_channels;
        for (i, &c_out) in REF_FILTERS.iter().enumerate() {
            let cvb = vb.pp(format!("convs.{i}"));
            convs.push(Conv2d {
                weight: weight_norm(&cvb, &[c_out, c_in, 3, 3], Some(0))?.contiguous()?,
                bias: cvb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?,
            });
            c_in = c_out;
            width = (width + 2 - 3) / 2 + 1;
        }
        let gin_in = REF_FILTERS[5] * width;
        let h = REF_GRU_HIDDEN;
        let gvb = vb.pp("gru");
        let gru = Gru {
            hidden: h,
            w_ih_t: gvb
                .get((3 * h, gin_in), "weight_ih_l0")?
                .t()?
                .contiguous()?,
            w_hh_t: gvb.get((3 * h, h), "weight_hh_l0")?.t()?.contiguous()?,
            b_ih: gvb.get(3 * h, "bias_ih_l0")?,
            b_hh: gvb.get(3 * h, "bias_hh_l0")?,
        };
        let pvb = vb.pp("proj");
        let lvb = vb.pp("layernorm");
        Ok(Self {
            spec_channels,
            ln_weight: lvb.get(spec_channels, "weight")?,
            ln_bias: lvb.get(spec_channels, "bias")?,
            convs,
            gru,
            proj_w_t: pvb.get((gin, h), "weight")?.t()?.contiguous()?,
            proj_b: pvb.get(gin, "bias")?,
        })
    }

    /// `spec`: `[B, spec_channels, T]` (no padding: every frame counts) -> `[B, gin]`.
    pub fn forward(&self, spec: &Tensor) -> Result<Tensor> {
        let (b, f, t) = spec.dims3()?;
        if f != self.spec_channels {
            candle_core::bail!(
                "reference encoder: spectrogram has {f} bins, expected {}",
                self.spec_channels
            )
        }
        let x = spec.transpose(1, 2)?.contiguous()?.reshape((b, 1, t, f))?;
        // LayerNorm over the frequency axis, in f32.
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let mut x = xc
            .broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?
            .broadcast_mul(&self.ln_weight)?
            .broadcast_add(&self.ln_bias)?;
        for c in &self.convs {
            x = x
                .conv2d(&c.weight, 1, 2, 1, 1)?
                .broadcast_add(&c.bias)?
                .relu()?;
        }
        let (_, c, t2, w) = x.dims4()?;
        let x = x.transpose(1, 2)?.contiguous()?.reshape((b, t2, c * w))?;
        let h = self.gru.last_hidden(&x)?;
        h.matmul(&self.proj_w_t)?.broadcast_add(&self.proj_b)
    }
}

/// A `[B, 1, T]` mask of ones for the first `lengths[b]` frames.
pub fn sequence_mask(lengths: &[usize], t: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0.0f32; lengths.len() * t];
    for (b, &l) in lengths.iter().enumerate() {
        v[b * t..b * t + l.min(t)].fill(1.0);
    }
    Tensor::from_vec(v, (lengths.len(), 1, t), device)?.to_dtype(DType::F32)
}
