//! Discriminators and adversarial losses for codec training.
//!
//! Two families of sub-discriminators run on the same waveform, each returning its logits and
//! the feature maps used for feature matching:
//!
//! - **Multi-period (MPD)**, HiFi-GAN style: the clip is reflect-padded to a multiple of the
//!   period `p` and folded into `[B, 1, T / p, p]`; 2-D convs with `(k, 1)` kernels and
//!   `(stride, 1)` strides then see every `p`-th sample. All but the last of `mpd_channels`
//!   are strided; a `(3, 1)` conv to one channel gives the logits. LeakyReLU 0.1. The
//!   features are every activation plus the final conv's output (as HiFi-GAN's `fmap`).
//! - **Multi-scale STFT (MS-STFT)**, EnCodec style: a complex STFT (periodic Hann window of
//!   `n_fft`, no centring, scaled by `1 / sqrt(sum w²)` like torchaudio's
//!   `Spectrogram(normalized=True)`) gives real and imaginary parts as 2 channels laid out
//!   `[B, 2, frames, bins]`. A `(3, 9)` conv, then one `(3, 9)` conv per dilation with
//!   stride `(1, 2)` (frequency) and dilation `(d, 1)` (time), a `(3, 3)` conv, each followed
//!   by LeakyReLU 0.2 (these activations are the features), and a `(3, 3)` conv to one channel
//!   for the logits. Channels follow EnCodec's `min(filters * scale^(i+1), max_filters)`,
//!   chained from the previous layer's output (EnCodec's own code only chains for scale 1).
//!
//! Every conv is weight-normalised (`weight_g` `[out, 1, 1, 1]`, `weight_v`, `bias`), the
//! weight re-derived on each forward so optimizer updates are seen (EnCodec leaves its first
//! STFT conv unnormalised; here all are, for one parameter layout). A fresh `weight_v` is
//! PyTorch's default conv init (uniform `±1/sqrt(fan_in)`) and `weight_g` the expected row norm
//! of that init, `1/sqrt(3)`, since a `VarMap` init cannot depend on another variable.
//!
//! Losses, averaged over the `K` sub-discriminators (the EnCodec paper's `1/K`), each term a
//! mean over its elements:
//!
//! - [`AdvLoss::Hinge`]: discriminator `relu(1 - D(x)) + relu(1 + D(x̂))`, generator
//!   `relu(1 - D(x̂))` (the EnCodec paper's form).
//! - [`AdvLoss::LeastSquares`]: discriminator `(D(x) - 1)² + D(x̂)²`, generator
//!   `(D(x̂) - 1)²` (HiFi-GAN / LSGAN).
//! - [`feature_matching_loss`]: EnCodec's normalised L1, `mean|r - f| / (mean|r| + 1e-8)` per
//!   feature map, averaged over each sub-discriminator's maps, then over `K`.
//!
//! Written for vaak after the HiFi-GAN and EnCodec papers' descriptions; candle has no
//! discriminator. The 2-D convs are [`conv2d_differentiable`] (per-axis stride and dilation,
//! and a backward that is right for batch > 1), the STFT is [`Stft`].

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::conv2d::conv2d_differentiable;
use super::stft::{Stft, Window};
use crate::error::{CodecError, Result};

/// Sizes of the two discriminator families; the defaults are HiFi-GAN's MPD and EnCodec's
/// MS-STFT discriminator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscConfig {
    /// One period discriminator per entry (HiFi-GAN: 2, 3, 5, 7, 11).
    pub periods: Vec<usize>,
    /// Output channels of the period discriminators' convs; all but the last are strided.
    pub mpd_channels: Vec<usize>,
    /// Kernel length (along time) of the period discriminators' convs.
    pub mpd_kernel_size: usize,
    /// Stride (along time) of the strided period-discriminator convs.
    pub mpd_stride: usize,
    /// LeakyReLU slope of the period discriminators.
    pub mpd_slope: f64,
    /// `(n_fft, hop)` per STFT discriminator; the window is a Hann of `n_fft`.
    pub stft_scales: Vec<(usize, usize)>,
    /// Channels of the first STFT-discriminator conv.
    pub stft_filters: usize,
    /// Channel growth per layer (EnCodec's `filters_scale`).
    pub stft_filters_scale: usize,
    /// Channel cap.
    pub stft_max_filters: usize,
    /// Time dilations of the strided `(kt, kf)` convs, one conv each.
    pub stft_dilations: Vec<usize>,
    /// `(time, frequency)` kernel of the first and the dilated convs; the last two are
    /// `(time, time)`.
    pub stft_kernel: (usize, usize),
    /// Frequency stride of the dilated convs.
    pub stft_freq_stride: usize,
    /// LeakyReLU slope of the STFT discriminators.
    pub stft_slope: f64,
    /// Scale the spectrum by `1 / sqrt(sum w²)` (torchaudio `normalized=True`).
    pub stft_normalized: bool,
}

impl Default for DiscConfig {
    fn default() -> Self {
        Self {
            periods: vec![2, 3, 5, 7, 11],
            mpd_channels: vec![32, 128, 512, 1024, 1024],
            mpd_kernel_size: 5,
            mpd_stride: 3,
            mpd_slope: 0.1,
            stft_scales: vec![(1024, 256), (2048, 512), (512, 128)],
            stft_filters: 32,
            stft_filters_scale: 1,
            stft_max_filters: 1024,
            stft_dilations: vec![1, 2, 4],
            stft_kernel: (3, 9),
            stft_freq_stride: 2,
            stft_slope: 0.2,
            stft_normalized: true,
        }
    }
}

impl DiscConfig {
    fn bad(field: &'static str, reason: impl Into<String>) -> CodecError {
        CodecError::BadConfig {
            path: "DiscConfig".into(),
            field,
            reason: reason.into(),
        }
    }

    /// Rejects configs that cannot build a discriminator.
    pub fn validate(&self) -> Result<()> {
        if self.periods.is_empty() && self.stft_scales.is_empty() {
            return Err(Self::bad(
                "periods",
                "no sub-discriminator: periods and stft_scales are both empty",
            ));
        }
        if self.periods.contains(&0) {
            return Err(Self::bad("periods", "a period must be at least 1"));
        }
        if !self.periods.is_empty() {
            if self.mpd_channels.is_empty() || self.mpd_channels.contains(&0) {
                return Err(Self::bad(
                    "mpd_channels",
                    "needs at least one conv, every channel count >= 1",
                ));
            }
            if self.mpd_kernel_size == 0 || self.mpd_stride == 0 {
                return Err(Self::bad(
                    "mpd_kernel_size",
                    "kernel size and stride must be >= 1",
                ));
            }
        }
        for &(n_fft, hop) in &self.stft_scales {
            if n_fft < 2 || hop == 0 {
                return Err(Self::bad(
                    "stft_scales",
                    format!("(n_fft {n_fft}, hop {hop}): need n_fft >= 2 and hop >= 1"),
                ));
            }
        }
        if !self.stft_scales.is_empty() {
            if self.stft_filters == 0 || self.stft_max_filters == 0 || self.stft_filters_scale == 0
            {
                return Err(Self::bad(
                    "stft_filters",
                    "filters, filters_scale and max_filters must be >= 1",
                ));
            }
            if self.stft_kernel.0 == 0 || self.stft_kernel.1 == 0 || self.stft_freq_stride == 0 {
                return Err(Self::bad(
                    "stft_kernel",
                    "kernel sizes and the frequency stride must be >= 1",
                ));
            }
            if self.stft_dilations.contains(&0) {
                return Err(Self::bad("stft_dilations", "a dilation must be >= 1"));
            }
        }
        Ok(())
    }

    /// The shortest clip every sub-discriminator accepts: the largest `n_fft`, and more than
    /// the largest period (reflect padding).
    pub fn min_samples(&self) -> usize {
        let stft = self.stft_scales.iter().map(|s| s.0).max().unwrap_or(1);
        let mpd = self.periods.iter().map(|p| p + 1).max().unwrap_or(1);
        stft.max(mpd)
    }
}

/// One sub-discriminator's verdict: `logits` `[B, n]` (flattened in PyTorch order) and its
/// feature maps (`[B, C, H, W]` each).
#[derive(Clone, Debug)]
pub struct DiscOutput {
    pub logits: Tensor,
    pub features: Vec<Tensor>,
}

impl DiscOutput {
    /// The same tensors cut from the autograd graph (e.g. the real branch's features in the
    /// generator step, whose discriminator gradients would be thrown away anyway).
    pub fn detach(&self) -> Self {
        Self {
            logits: self.logits.detach(),
            features: self.features.iter().map(Tensor::detach).collect(),
        }
    }
}

/// A weight-normalised 2-D conv with bias.
#[derive(Clone, Debug)]
struct WnConv2d {
    g: Tensor,
    v: Tensor,
    bias: Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
}

impl WnConv2d {
    fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * kernel.0 * kernel.1) as f64).sqrt();
        let uniform = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let v = vb.get_with_hints((c_out, c_in, kernel.0, kernel.1), "weight_v", uniform)?;
        let g = vb.get_with_hints((c_out, 1, 1, 1), "weight_g", Init::Const(1.0 / 3f64.sqrt()))?;
        let bias = vb.get_with_hints(c_out, "bias", uniform)?;
        Ok(Self {
            g,
            v,
            bias,
            padding,
            stride,
            dilation,
        })
    }

    /// `(kt, kf)` conv with PyTorch-style "same" padding `((k - 1) * d / 2)` per axis.
    fn same(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        dilation: (usize, usize),
    ) -> Result<Self> {
        let padding = (
            (kernel.0 - 1) * dilation.0 / 2,
            (kernel.1 - 1) * dilation.1 / 2,
        );
        Self::new(vb, c_in, c_out, kernel, stride, dilation, padding)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let norm = self.v.sqr()?.sum_keepdim((1, 2, 3))?.sqrt()?;
        let w = self.v.broadcast_mul(&self.g.broadcast_div(&norm)?)?;
        let y = conv2d_differentiable(x, &w, self.padding, self.stride, self.dilation)?;
        let c = self.bias.dim(0)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?)
    }
}

fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::leaky_relu(x, slope)?)
}

/// HiFi-GAN's period discriminator.
#[derive(Clone, Debug)]
struct PeriodDisc {
    period: usize,
    convs: Vec<WnConv2d>,
    post: WnConv2d,
    slope: f64,
}

impl PeriodDisc {
    fn new(cfg: &DiscConfig, period: usize, vb: VarBuilder) -> Result<Self> {
        let k = cfg.mpd_kernel_size;
        let n = cfg.mpd_channels.len();
        let mut c_in = 1;
        let mut convs = Vec::with_capacity(n);
        for (i, &c_out) in cfg.mpd_channels.iter().enumerate() {
            let s = if i + 1 < n { cfg.mpd_stride } else { 1 };
            convs.push(WnConv2d::new(
                vb.pp("convs").pp(i),
                c_in,
                c_out,
                (k, 1),
                (s, 1),
                (1, 1),
                ((k - 1) / 2, 0),
            )?);
            c_in = c_out;
        }
        let post = WnConv2d::new(vb.pp("conv_post"), c_in, 1, (3, 1), (1, 1), (1, 1), (1, 0))?;
        Ok(Self {
            period,
            convs,
            post,
            slope: cfg.mpd_slope,
        })
    }

    /// `x`: `[B, 1, T]` with `T > period`.
    fn forward(&self, x: &Tensor) -> Result<DiscOutput> {
        let (b, _, t) = x.dims3()?;
        let p = self.period;
        let x = if t % p != 0 {
            vaak_nn::pad::reflect_pad_last(x, 0, p - t % p)?
        } else {
            x.clone()
        };
        let t = x.dim(2)?;
        let mut h = x.reshape((b, 1, t / p, p))?;
        let mut features = Vec::with_capacity(self.convs.len() + 1);
        for conv in &self.convs {
            h = leaky_relu(&conv.forward(&h)?, self.slope)?;
            features.push(h.clone());
        }
        let out = self.post.forward(&h)?;
        features.push(out.clone());
        Ok(DiscOutput {
            logits: out.flatten_from(1)?,
            features,
        })
    }
}

/// EnCodec's STFT discriminator at one resolution.
#[derive(Clone, Debug)]
struct StftDisc {
    stft: Stft,
    scale: f64,
    convs: Vec<WnConv2d>,
    post: WnConv2d,
    slope: f64,
}

impl StftDisc {
    fn new(cfg: &DiscConfig, n_fft: usize, hop: usize, vb: VarBuilder) -> Result<Self> {
        let stft = Stft::new(n_fft, hop, n_fft, Window::Hann, false, vb.device())?;
        let scale = if cfg.stft_normalized {
            let e: f64 = Window::Hann.values(n_fft).iter().map(|w| w * w).sum();
            1.0 / e.sqrt()
        } else {
            1.0
        };
        let k = cfg.stft_kernel;
        let chans =
            |i: u32| (cfg.stft_filters * cfg.stft_filters_scale.pow(i)).min(cfg.stft_max_filters);
        let mut convs = Vec::with_capacity(cfg.stft_dilations.len() + 2);
        let mut c_in = cfg.stft_filters.min(cfg.stft_max_filters);
        convs.push(WnConv2d::same(
            vb.pp("convs").pp(0),
            2,
            c_in,
            k,
            (1, 1),
            (1, 1),
        )?);
        for (i, &d) in cfg.stft_dilations.iter().enumerate() {
            let c_out = chans(i as u32 + 1);
            convs.push(WnConv2d::same(
                vb.pp("convs").pp(i + 1),
                c_in,
                c_out,
                k,
                (1, cfg.stft_freq_stride),
                (d, 1),
            )?);
            c_in = c_out;
        }
        let c_out = chans(cfg.stft_dilations.len() as u32 + 1);
        let n = convs.len();
        convs.push(WnConv2d::same(
            vb.pp("convs").pp(n),
            c_in,
            c_out,
            (k.0, k.0),
            (1, 1),
            (1, 1),
        )?);
        let post = WnConv2d::same(vb.pp("conv_post"), c_out, 1, (k.0, k.0), (1, 1), (1, 1))?;
        Ok(Self {
            stft,
            scale,
            convs,
            post,
            slope: cfg.stft_slope,
        })
    }

    /// `x`: `[B, 1, T]` with `T >= n_fft`.
    fn forward(&self, x: &Tensor) -> Result<DiscOutput> {
        let (re, im) = self.stft.forward(&x.squeeze(1)?)?;
        // [B, 2, bins, frames] -> [B, 2, frames, bins]: time first, as EnCodec.
        let z = Tensor::stack(&[re, im], 1)?;
        let z = (z.transpose(2, 3)? * self.scale)?;
        let mut h = z;
        let mut features = Vec::with_capacity(self.convs.len());
        for conv in &self.convs {
            h = leaky_relu(&conv.forward(&h)?, self.slope)?;
            features.push(h.clone());
        }
        let out = self.post.forward(&h)?;
        Ok(DiscOutput {
            logits: out.flatten_from(1)?,
            features,
        })
    }
}

/// The MPD and MS-STFT sub-discriminators of a [`DiscConfig`]. Parameters live under
/// `mpd.{i}.{convs.{j},conv_post}.{weight_g,weight_v,bias}` and likewise `msstft.{i}`.
#[derive(Clone, Debug)]
pub struct Discriminators {
    cfg: DiscConfig,
    mpd: Vec<PeriodDisc>,
    msstft: Vec<StftDisc>,
}

impl Discriminators {
    /// Builds (or, from a checkpoint-backed `vb`, loads) every sub-discriminator.
    pub fn new(cfg: &DiscConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let mpd = cfg
            .periods
            .iter()
            .enumerate()
            .map(|(i, &p)| PeriodDisc::new(cfg, p, vb.pp("mpd").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let msstft = cfg
            .stft_scales
            .iter()
            .enumerate()
            .map(|(i, &(n_fft, hop))| StftDisc::new(cfg, n_fft, hop, vb.pp("msstft").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            mpd,
            msstft,
        })
    }

    /// The config this was built from.
    pub fn config(&self) -> &DiscConfig {
        &self.cfg
    }

    /// Number of sub-discriminators (periods, then STFT scales).
    pub fn len(&self) -> usize {
        self.mpd.len() + self.msstft.len()
    }

    /// Whether there is no sub-discriminator (never, for a validated config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `wav` `[B, 1, T]` (float, `T >= config().min_samples()`) to one output per
    /// sub-discriminator: the periods in config order, then the STFT scales.
    pub fn forward(&self, wav: &Tensor) -> Result<Vec<DiscOutput>> {
        let dims = wav.dims();
        if dims.len() != 3 || dims[1] != 1 || !wav.dtype().is_float() {
            return Err(CodecError::BadInput {
                what: "discriminator input",
                expected: "a float [batch, 1, samples] waveform".into(),
                got: format!("{:?} {dims:?}", wav.dtype()),
            });
        }
        let min = self.cfg.min_samples();
        if dims[2] < min {
            return Err(CodecError::BadInput {
                what: "discriminator input length",
                expected: format!("at least {min} samples (largest n_fft / period + 1)"),
                got: format!("{} samples", dims[2]),
            });
        }
        let mut out = Vec::with_capacity(self.len());
        for d in &self.mpd {
            out.push(d.forward(wav)?);
        }
        for d in &self.msstft {
            out.push(d.forward(wav)?);
        }
        Ok(out)
    }
}

/// Adversarial loss family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvLoss {
    /// Hinge (EnCodec).
    #[default]
    Hinge,
    /// Least squares (HiFi-GAN, LSGAN).
    LeastSquares,
}

fn check_pair(real: &[DiscOutput], fake: &[DiscOutput], features: bool) -> Result<()> {
    if real.is_empty() || real.len() != fake.len() {
        return Err(CodecError::BadInput {
            what: "discriminator outputs",
            expected: format!(
                "the same non-zero number for real and fake ({})",
                real.len()
            ),
            got: format!("{} fake", fake.len()),
        });
    }
    for (k, (r, f)) in real.iter().zip(fake).enumerate() {
        if r.logits.dims() != f.logits.dims() {
            return Err(CodecError::BadInput {
                what: "discriminator logits",
                expected: format!("sub-discriminator {k}: real shape {:?}", r.logits.dims()),
                got: format!("fake shape {:?}", f.logits.dims()),
            });
        }
        if features {
            if r.features.is_empty() || r.features.len() != f.features.len() {
                return Err(CodecError::BadInput {
                    what: "discriminator features",
                    expected: format!(
                        "sub-discriminator {k}: as many fake maps as real ({}, > 0)",
                        r.features.len()
                    ),
                    got: format!("{}", f.features.len()),
                });
            }
            for (l, (a, b)) in r.features.iter().zip(&f.features).enumerate() {
                if a.dims() != b.dims() {
                    return Err(CodecError::BadInput {
                        what: "discriminator features",
                        expected: format!("sub-discriminator {k}, map {l}: shape {:?}", a.dims()),
                        got: format!("{:?}", b.dims()),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Mean of the scalar `terms`.
fn mean_of(terms: Vec<Tensor>) -> Result<Tensor> {
    let n = terms.len() as f64;
    let s = Tensor::stack(&terms, 0)?.sum_all()?;
    Ok((s / n)?)
}

/// `relu(offset + sign * x)` averaged over all elements.
fn hinge(x: &Tensor, sign: f64, offset: f64) -> Result<Tensor> {
    Ok(x.affine(sign, offset)?.relu()?.mean_all()?)
}

/// `(x - target)²` averaged over all elements.
fn squared(x: &Tensor, target: f64) -> Result<Tensor> {
    Ok(x.affine(1.0, -target)?.sqr()?.mean_all()?)
}

/// Discriminator loss: real logits pushed up, fake down; averaged over sub-discriminators.
/// Pass the fake outputs of a *detached* generator output when training the discriminator.
pub fn disc_loss(real: &[DiscOutput], fake: &[DiscOutput], kind: AdvLoss) -> Result<Tensor> {
    check_pair(real, fake, false)?;
    let terms = real
        .iter()
        .zip(fake)
        .map(|(r, f)| match kind {
            AdvLoss::Hinge => Ok((hinge(&r.logits, -1.0, 1.0)? + hinge(&f.logits, 1.0, 1.0)?)?),
            AdvLoss::LeastSquares => Ok((squared(&r.logits, 1.0)? + squared(&f.logits, 0.0)?)?),
        })
        .collect::<Result<Vec<_>>>()?;
    mean_of(terms)
}

/// Generator adversarial loss on the fake outputs; averaged over sub-discriminators.
pub fn gen_adv_loss(fake: &[DiscOutput], kind: AdvLoss) -> Result<Tensor> {
    if fake.is_empty() {
        return Err(CodecError::BadInput {
            what: "discriminator outputs",
            expected: "at least one".into(),
            got: "none".into(),
        });
    }
    let terms = fake
        .iter()
        .map(|f| match kind {
            AdvLoss::Hinge => hinge(&f.logits, -1.0, 1.0),
            AdvLoss::LeastSquares => squared(&f.logits, 1.0),
        })
        .collect::<Result<Vec<_>>>()?;
    mean_of(terms)
}

/// Added to the `mean|real|` normaliser so an all-zero map cannot divide by zero.
const FM_EPS: f64 = 1e-8;

/// EnCodec's relative feature-matching L1: `mean|r - f| / (mean|r| + 1e-8)` per map, averaged
/// over each sub-discriminator's maps, then over the sub-discriminators. The real features
/// are used as given (detach them to keep gradients out of the real branch).
pub fn feature_matching_loss(real: &[DiscOutput], fake: &[DiscOutput]) -> Result<Tensor> {
    check_pair(real, fake, true)?;
    let terms = real
        .iter()
        .zip(fake)
        .map(|(r, f)| {
            let per_map = r
                .features
                .iter()
                .zip(&f.features)
                .map(|(a, b)| {
                    let num = (a - b)?.abs()?.mean_all()?;
                    let den = (a.abs()?.mean_all()? + FM_EPS)?;
                    Ok((num / den)?)
                })
                .collect::<Result<Vec<_>>>()?;
            mean_of(per_map)
        })
        .collect::<Result<Vec<_>>>()?;
    mean_of(terms)
}
