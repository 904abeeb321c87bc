//! The transformer blocks of the encoder-decoder teachers (transformers' Bart family: Whisper,
//! M2M-100 / NLLB, Marian): attention with an optional grouped key layout, the feed-forward
//! block, encoder and decoder layers, the two stacks and the output head.
//!
//! What differs between the published models is chosen by a [`LayerConfig`]: the activation,
//! whether `k_proj` has a bias (Whisper's has none), and where the LayerNorms sit (pre-norm with
//! a final LayerNorm per stack for Whisper and M2M-100; post-norm without one for Marian).
//! Shared by all: LayerNorm eps 1e-5, queries scaled by `head_dim^-1/2`, biases on `q`, `v`,
//! `out`, `fc1`, `fc2`. VarBuilder paths are transformers' tensor names (`self_attn.q_proj`,
//! `encoder_attn`, `fc1`, `self_attn_layer_norm`, `encoder_attn_layer_norm`,
//! `final_layer_norm`, `layers.{i}`, `layer_norm`).
//!
//! Every tensor fed to a matmul is made contiguous first (see the README's candle 0.11 traps).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::cache::{Encoded, KvCache, SelfKv};
use super::rows;
use vaak_nn::attention::{self, KeyLimits, FEW_QUERIES};

/// transformers' `ACT2FN` entries the teachers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// erf GELU (`"gelu"`).
    Gelu,
    /// tanh GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluNew,
    /// `"silu"` / `"swish"`.
    Silu,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "relu" => Some(Self::Relu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluNew),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu_erf(),
            Self::GeluNew => x.gelu(),
            Self::Silu => x.silu(),
        }
    }
}

/// Where a layer's LayerNorms sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + f(ln(x))`, with a final LayerNorm after the stack (Whisper, M2M-100, NLLB).
    Pre,
    /// `ln(x + f(x))`, no final LayerNorm (Marian, Bart).
    Post,
}

/// One stack's layer shape.
#[derive(Clone, Copy, Debug)]
pub struct LayerConfig {
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    pub activation: Activation,
    pub norm: NormPosition,
    /// Whether `k_proj` has a bias (false for Whisper).
    pub k_bias: bool,
    pub ln_eps: f64,
}

impl LayerConfig {
    /// A Bart-family stack: biases on every projection, LayerNorm eps 1e-5.
    pub fn bart(
        d_model: usize,
        (heads, ffn): (usize, usize),
        activation: Activation,
        norm: NormPosition,
    ) -> Self {
        Self {
            d_model,
            heads,
            ffn,
            activation,
            norm,
            k_bias: true,
            ln_eps: LN_EPS,
        }
    }
}

/// transformers' LayerNorm eps for all three models.
pub const LN_EPS: f64 = 1e-5;

/// A projection `x @ W^T (+ b)` whose weight is kept transposed (`[in, out]`, contiguous).
///
/// gemm works on `dst^T = W x^T` for a row-major output; with `W` stored row-major (as
/// checkpoints hold it, and as `candle_nn::Linear` uses it) every call repacks the whole
/// weight into column panels, which costs about as much as the product itself at decoder-step
/// sizes (a few dozen rows). Stored as `W^T` the weight is already in the kernel's layout.
pub struct Linear {
    w_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a checkpoint's `[out, in]` weight and optional `[out]` bias.
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        Ok(Self {
            w_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `[rows, in]` to `[rows, out]`; up to [`rows::MAX_ROWS`] f32 rows on an AVX-512 CPU go
    /// through [`rows::rows_times`] (decoder steps), the rest through candle's matmul.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.forward_rows(x)? {
            return Ok(y);
        }
        let y = x.matmul(&self.w_t)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// [`rows::rows_times`] when it applies, else `None`.
    fn forward_rows(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (rows, k) = x.dims2()?;
        let fits = rows <= rows::MAX_ROWS
            && k > 0
            && [Some(x), Some(&self.w_t), self.bias.as_ref()]
                .into_iter()
                .flatten()
                .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
            && rows::available();
        if !fits {
            return Ok(None);
        }
        let n = self.w_t.dim(1)?;
        let x = x.contiguous()?;
        let bias = self.bias.as_ref().map(|b| b.contiguous()).transpose()?;
        let mut out = vec![0f32; rows * n];
        {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = self.w_t.storage_and_layout();
            let bs = bias.as_ref().map(|b| b.storage_and_layout());
            let b = match &bs {
                Some((s, l)) => Some(f32s(s, l, n)?),
                None => None,
            };
            rows::rows_times(
                f32s(&xs, xl, rows * k)?,
                f32s(&ws, wl, k * n)?,
                k,
                b,
                &mut out,
            );
        }
        Tensor::from_vec(out, (rows, n), x.device()).map(Some)
    }
}

/// The `len` f32s of a CPU tensor's storage from its layout's offset.
fn f32s<'a>(
    s: &'a candle_core::Storage,
    l: &candle_core::Layout,
    len: usize,
) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            Ok(&v[l.start_offset()..l.start_offset() + len])
        }
        _ => Err(candle_core::Error::Msg("linear: expected CPU f32".into())),
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Linear> {
    let w = vb.get((o, i), "weight")?;
    let b = if bias { Some(vb.get(o, "bias")?) } else { None };
    Linear::new(&w, b)
}

/// `x @ w^T (+ b)` on a `[B, T, i]` input, through a 2-D matmul.
pub fn apply_linear(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let y = l.forward(&x.contiguous()?.reshape((b * t, d))?)?;
    let o = y.dim(1)?;
    y.reshape((b, t, o))
}

/// Additive `[B, 1, 1, S]` mask, 0 on the first `lengths[b]` keys and -inf after; `None` when
/// no row is padded.
pub fn key_mask(
    lengths: &[usize],
    s: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if lengths.iter().all(|&n| n >= s) {
        return Ok(None);
    }
    let m: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..s).map(move |j| if j < n { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(m, (lengths.len(), 1, 1, s), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// Additive causal `[l, start + l]` mask for `l` new positions after `start` cached ones;
/// `None` for a single position (it sees everything).
pub fn causal_mask(
    start: usize,
    l: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if l <= 1 {
        return Ok(None);
    }
    let total = start + l;
    let m: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (l, total), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// Multi-head attention (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub fn load(cfg: &LayerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        let head_dim = d / cfg.heads;
        Ok(Self {
            q: linear(d, d, true, vb.pp("q_proj"))?,
            k: linear(d, d, cfg.k_bias, vb.pp("k_proj"))?,
            v: linear(d, d, true, vb.pp("v_proj"))?,
            out: linear(d, d, true, vb.pp("out_proj"))?,
            heads: cfg.heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, T, D]` -> `[B, H, T, Dh]`, contiguous.
    fn split(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values `[B, H, S, Dh]` of `x` (`[B, S, D]`).
    pub fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&apply_linear(&self.k, x)?)?,
            self.split(&apply_linear(&self.v, x)?)?,
        ))
    }

    /// Attends from `x` (`[N * G, T, D]`: `G` rows per key group) to keys/values
    /// `[N, H, S, Dh]`; the rows of a group share their group's keys (beams share their item's
    /// encoder keys; self-attention has `G` = 1). `mask` is additive and broadcasts to
    /// `[N, H, G * T, S]`.
    pub fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (rows, t, d) = x.dims3()?;
        let q = self.queries(x, k.dim(0)?)?;
        let kt = k.transpose(2, 3)?.contiguous()?;
        let mut scores = q.matmul(&kt)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v.contiguous()?)?;
        self.output(&ctx, (rows, t, d))
    }

    /// [`Self::attend`] with the mask also given structurally (`limits`, the same keys as
    /// `mask`): on the CPU in f32 with at most [`FEW_QUERIES`] query rows per group (decoder
    /// steps: one per row, or one per beam of an item) it runs `vaak_nn::attention`'s kernel,
    /// else the matmul path.
    pub fn attend_limited(
        &self,
        x: &Tensor,
        (k, v): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        limits: &KeyLimits,
    ) -> candle_core::Result<Tensor> {
        let (rows, t, d) = x.dims3()?;
        let n = k.dim(0)?;
        let fusable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && k.dtype() == DType::F32
            && (rows / n.max(1)) * t <= FEW_QUERIES;
        if !fusable {
            return self.attend(x, k, v, mask);
        }
        let q = self.queries(x, n)?;
        // The queries are already scaled.
        let ctx = attention::attention(&q, k, v, 1.0, limits, None)?;
        self.output(&ctx, (rows, t, d))
    }

    /// Scaled queries `[N, H, G * T, Dh]` of `x` (`[N * G, T, D]`).
    fn queries(&self, x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
        let (rows, t, _) = x.dims3()?;
        let g = rows / n;
        (apply_linear(&self.q, x)? * self.scale)?
            .reshape((n, g * t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `[N, H, G * T, Dh]` context to the projected `[rows, t, d]` output.
    fn output(
        &self,
        ctx: &Tensor,
        (rows, t, d): (usize, usize, usize),
    ) -> candle_core::Result<Tensor> {
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((rows, t, d))?;
        apply_linear(&self.out, &ctx)
    }
}

/// `fc2(act(fc1(x)))`.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(cfg: &LayerConfig, vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: linear(cfg.d_model, cfg.ffn, true, vb.pp("fc1"))?,
            fc2: linear(cfg.ffn, cfg.d_model, true, vb.pp("fc2"))?,
            act: cfg.activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        apply_linear(&self.fc2, &self.act.apply(&apply_linear(&self.fc1, x)?)?)
    }
}

/// A residual block `f` with its LayerNorm placed as `norm` says.
fn residual(
    norm: NormPosition,
    ln: &LayerNorm,
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match norm {
        NormPosition::Pre => x + f(&ln.forward(x)?)?,
        NormPosition::Post => ln.forward(&(x + f(x)?)?),
    }
}

fn layer_norm(cfg: &LayerConfig, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    candle_nn::layer_norm(cfg.d_model, cfg.ln_eps, vb)
}

/// Self-attention and feed-forward.
pub struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
    norm: NormPosition,
}

impl EncoderLayer {
    pub fn load(cfg: &LayerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            attn: Attention::load(cfg, vb.pp("self_attn"))?,
            attn_ln: layer_norm(cfg, vb.pp("self_attn_layer_norm"))?,
            mlp: Mlp::load(cfg, &vb)?,
            mlp_ln: layer_norm(cfg, vb.pp("final_layer_norm"))?,
            norm: cfg.norm,
        })
    }

    /// `x` is `[B, S, D]`; `mask` an additive key mask.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = residual(self.norm, &self.attn_ln, x, |h| {
            let (k, v) = self.attn.keys_values(h)?;
            self.attn.attend(h, &k, &v, mask)
        })?;
        residual(self.norm, &self.mlp_ln, &x, |h| self.mlp.forward(h))
    }
}

/// Causal self-attention (cached), cross-attention and feed-forward.
pub struct DecoderLayer {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
    norm: NormPosition,
}

impl DecoderLayer {
    pub fn load(cfg: &LayerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            self_ln: layer_norm(cfg, vb.pp("self_attn_layer_norm"))?,
            cross_attn: Attention::load(cfg, vb.pp("encoder_attn"))?,
            cross_ln: layer_norm(cfg, vb.pp("encoder_attn_layer_norm"))?,
            mlp: Mlp::load(cfg, &vb)?,
            mlp_ln: layer_norm(cfg, vb.pp("final_layer_norm"))?,
            norm: cfg.norm,
        })
    }

    /// Cross-attention keys/values of an encoder output.
    pub fn cross_keys_values(&self, encoded: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        self.cross_attn.keys_values(encoded)
    }

    /// `x` (`[rows, l, D]`) after `past` (this layer's cached keys/values, extended here).
    fn forward(
        &self,
        x: &Tensor,
        self_mask: (Option<&Tensor>, &KeyLimits),
        (past, filled, hint): (&mut Option<SelfKv>, usize, usize),
        cross: &(Tensor, Tensor),
        cross_mask: (Option<&Tensor>, &KeyLimits),
    ) -> candle_core::Result<Tensor> {
        let x = residual(self.norm, &self.self_ln, x, |h| {
            let (k, v) = self.self_attn.keys_values(h)?;
            let (k, v) = SelfKv::extend(past, (&k, &v), filled, hint)?;
            self.self_attn
                .attend_limited(h, (&k, &v), self_mask.0, self_mask.1)
        })?;
        let x = residual(self.norm, &self.cross_ln, &x, |h| {
            self.cross_attn
                .attend_limited(h, (&cross.0, &cross.1), cross_mask.0, cross_mask.1)
        })?;
        residual(self.norm, &self.mlp_ln, &x, |h| self.mlp.forward(h))
    }
}

fn final_norm(cfg: &LayerConfig, vb: &VarBuilder) -> candle_core::Result<Option<LayerNorm>> {
    match cfg.norm {
        NormPosition::Pre => layer_norm(cfg, vb.pp("layer_norm")).map(Some),
        NormPosition::Post => Ok(None),
    }
}

/// The encoder layers (`layers.{i}`) and, for pre-norm models, the final `layer_norm`.
pub struct EncoderStack {
    layers: Vec<EncoderLayer>,
    final_ln: Option<LayerNorm>,
}

impl EncoderStack {
    /// `vb` is the stack's prefix (`model.encoder`).
    pub fn load(cfg: &LayerConfig, n: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            layers: (0..n)
                .map(|i| EncoderLayer::load(cfg, vb.pp(format!("layers.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            final_ln: final_norm(cfg, &vb)?,
        })
    }

    /// Embedded sources `[B, S, D]`, right-padded to `S` (real lengths `lengths`), to encoder
    /// states; padded keys are masked.
    pub fn forward(&self, x: &Tensor, lengths: &[usize]) -> candle_core::Result<Tensor> {
        let s = x.dim(1)?;
        let mask = key_mask(lengths, s, x.dtype(), x.device())?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref())?;
        }
        match &self.final_ln {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }
}

/// The decoder layers and, for pre-norm models, the final `layer_norm`.
pub struct DecoderStack {
    layers: Vec<DecoderLayer>,
    final_ln: Option<LayerNorm>,
}

impl DecoderStack {
    /// `vb` is the stack's prefix (`model.decoder`).
    pub fn load(cfg: &LayerConfig, n: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            layers: (0..n)
                .map(|i| DecoderLayer::load(cfg, vb.pp(format!("layers.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            final_ln: final_norm(cfg, &vb)?,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// A fresh cache with `group` rows per encoded item; cross-attention keys/values are
    /// computed here, once per item.
    pub fn start(&self, enc: &Encoded, group: usize) -> crate::error::Result<KvCache> {
        if group == 0 {
            return Err(crate::error::TeacherError::BadInput(
                "decoder group size must be > 0".into(),
            ));
        }
        let cross = self
            .layers
            .iter()
            .map(|l| l.cross_keys_values(&enc.hidden))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let s = enc.hidden.dim(1)?;
        let mask = key_mask(&enc.lengths, s, enc.hidden.dtype(), enc.hidden.device())?;
        Ok(KvCache::new(cross, mask, &enc.lengths, group))
    }

    /// Embedded decoder inputs `[rows, l, D]` after what `cache` holds, to decoder states
    /// (final norm applied); the cache grows by `l`.
    pub fn forward(&self, x: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let l = x.dim(1)?;
        let self_mask = causal_mask(cache.len(), l, x.dtype(), x.device())?;
        let self_limits = KeyLimits {
            lens: None,
            causal: Some((l, cache.len())),
        };
        let mut x = x.clone();
        let filled = cache.len();
        let ((past, hint), cross, cross_mask) = cache.parts();
        for (layer, (past, cross)) in self.layers.iter().zip(past.iter_mut().zip(cross)) {
            x = layer.forward(
                &x,
                (self_mask.as_ref(), &self_limits),
                (past, filled, hint),
                cross,
                cross_mask,
            )?;
        }
        cache.advance(l);
        match &self.final_ln {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }
}

/// The output projection `x @ W^T (+ bias)` to f32 logits.
pub struct LmHead {
    /// `[vocab, d_model]` weight kept transposed, with the optional `[vocab]` bias (Marian's
    /// `final_logits_bias`).
    proj: Linear,
    vocab: usize,
}

impl LmHead {
    /// From the `[vocab, d_model]` weight (often the tied token embedding).
    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let vocab = weight.dim(0)?;
        Ok(Self {
            proj: Linear::new(weight, bias)?,
            vocab,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// `[rows, l, D]` to f32 logits `[rows, l, vocab]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, l, d) = x.dims3()?;
        let logits = self
            .proj
            .forward(&x.contiguous()?.reshape((rows * l, d))?)?;
        logits.reshape((rows, l, self.vocab))?.to_dtype(DType::F32)
    }
}

/// The two stacks and the head of an encoder-decoder.
pub struct Stacks {
    pub encoder: EncoderStack,
    pub decoder: DecoderStack,
    pub lm_head: LmHead,
}
