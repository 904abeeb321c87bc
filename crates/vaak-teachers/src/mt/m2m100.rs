//! M2M-100 / NLLB-200 (transformers' `M2M100ForConditionalGeneration`), loaded as published.
//!
//! One class covers facebook/m2m100_418M and _1.2B and facebook/nllb-200-distilled-600M,
//! -1.3B and -3.3B (their config.json says `"model_type": "m2m_100"`). Written here because
//! candle-transformers has no M2M-100, and its Marian (the nearest relative) has neither padding
//! masks nor a batched, reorderable cache. The maths follows transformers:
//! - token embeddings `model.shared.weight` times `sqrt(d_model)` when `scale_embedding`;
//! - fairseq sinusoidal positions (sin half, then cos half; frequencies `10000^(-i/(half-1))`)
//!   indexed from `pad_token_id + 1` by the count of non-pad tokens so far, pad tokens taking the
//!   zeroed row `pad_token_id` (transformers' `create_position_ids_from_input_ids`);
//! - pre-norm layers (LayerNorm eps 1e-5) with a final LayerNorm on each stack, attention with
//!   biases on all four projections and queries scaled by `head_dim^-1/2`;
//! - with `tie_word_embeddings` (the published default) one embedding serves both stacks and
//!   `lm_head`: `model.shared.weight` (transformers 5 `save_pretrained` stores only that; older
//!   `.bin` files store every copy). Untied configs use each stack's own `embed_tokens` and
//!   `lm_head.weight`, as transformers 5 does.
//!
//! Batching: sources are right-padded and masked in the encoder and in cross-attention. The
//! decoder cache ([`M2m100Cache`]) holds rows in groups (one group per source item, `group`
//! rows each, e.g. the beams): cross-attention keys/values are computed once per *item* and
//! shared by the rows of its group (the group's queries are stacked along the time axis), so
//! beams never copy encoder states. Rows can be selected/reordered between steps
//! ([`M2m100Cache::select`]) for beam search and for dropping finished items.
//!
//! Every tensor fed to a matmul is made contiguous first (see the README's candle 0.11 traps).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use vaak_nn::weights::{HubOptions, LoadOptions, WeightLocation, Weights};

use super::generate::{Seq2Seq, TokenIds};
use crate::error::{Result, TeacherError};

const LN_EPS: f64 = 1e-5;

fn d_true() -> bool {
    true
}
fn d_relu() -> String {
    "relu".into()
}
fn d_pad() -> u32 {
    1
}
fn d_eos() -> TokenIds {
    TokenIds::One(2)
}
fn d_start() -> u32 {
    2
}
fn d_model_type() -> String {
    "m2m_100".into()
}

/// The model fields of an M2M-100 / NLLB `config.json` (defaults are `M2M100Config`'s).
#[derive(Clone, Debug, Deserialize)]
pub struct M2m100Config {
    #[serde(default = "d_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "d_true")]
    pub scale_embedding: bool,
    #[serde(default = "d_relu")]
    pub activation_function: String,
    #[serde(default = "d_pad")]
    pub pad_token_id: u32,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: TokenIds,
    #[serde(default = "d_start")]
    pub decoder_start_token_id: u32,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

impl M2m100Config {
    /// Parses and validates a config.json's text; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| {
            Err(TeacherError::Config {
                path: path.to_path_buf(),
                reason,
            })
        };
        if self.model_type != "m2m_100" {
            return bad(format!(
                "model_type {:?} is not m2m_100 (M2M-100 / NLLB-200 dense models)",
                self.model_type
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        for (name, h) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if !self.d_model.is_multiple_of(h) {
                return bad(format!(
                    "d_model {} is not divisible by {name} {h}",
                    self.d_model
                ));
            }
        }
        if Activation::parse(&self.activation_function).is_none() {
            return bad(format!(
                "activation_function {:?} is not supported (relu, gelu, gelu_new, silu)",
                self.activation_function
            ));
        }
        let ids = [
            ("pad_token_id", self.pad_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ];
        for (name, id) in ids.into_iter().chain(
            self.eos_token_id
                .to_vec()
                .into_iter()
                .map(|i| ("eos_token_id", i)),
        ) {
            if id as usize >= self.vocab_size {
                return bad(format!(
                    "{name} {id} is outside vocab_size {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id.to_vec()
    }
}

#[derive(Clone, Copy, Debug)]
enum Activation {
    Relu,
    Gelu,
    GeluNew,
    Silu,
}

impl Activation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "relu" => Some(Self::Relu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluNew),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu_erf(),
            Self::GeluNew => x.gelu(),
            Self::Silu => x.silu(),
        }
    }
}

/// `x @ w^T + b` on a `[B, T, i]` input, through a 2-D matmul.
fn apply_linear(l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let y = l.forward(&x.contiguous()?.reshape((b * t, d))?)?;
    let o = y.dim(1)?;
    y.reshape((b, t, o))
}

/// The fairseq sinusoidal table row for `pos`, computed in f32 as transformers does
/// (`M2M100SinusoidalPositionalEmbedding.get_embedding`); the `pad` row is zero.
fn sinusoid_rows(positions: &[u32], dim: usize, pad: u32) -> Vec<f32> {
    let half = dim / 2;
    let step = if half > 1 {
        (10000f64.ln() / (half as f64 - 1.0)) as f32
    } else {
        0.0
    };
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut out = vec![0f32; positions.len() * dim];
    for (row, &p) in out.chunks_mut(dim).zip(positions) {
        if p == pad {
            continue;
        }
        for (i, &f) in freqs.iter().enumerate() {
            let a = p as f32 * f;
            row[i] = a.sin();
            row[half + i] = a.cos();
        }
    }
    out
}

/// transformers' `create_position_ids_from_input_ids`: non-pad tokens count up from
/// `pad + 1 + past`, pad tokens get `pad`.
fn position_ids(tokens: &[u32], pad: u32, past: usize) -> Vec<u32> {
    let mut seen = 0u32;
    tokens
        .iter()
        .map(|&t| {
            if t == pad {
                pad
            } else {
                seen += 1;
                pad + seen + past as u32
            }
        })
        .collect()
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let head_dim = d / heads;
        Ok(Self {
            q: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads,
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

    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.split(&apply_linear(&self.k, x)?)?,
            self.split(&apply_linear(&self.v, x)?)?,
        ))
    }

    /// Attends from `x` (`[N * G, T, D]`: `G` rows per key group) to keys/values
    /// `[N, H, S, Dh]`; the rows of a group share their group's keys. `mask` is additive and
    /// broadcasts to `[N, H, G * T, S]`.
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (rows, t, d) = x.dims3()?;
        let n = k.dim(0)?;
        let g = rows / n;
        let q = apply_linear(&self.q, x)?
            .reshape((n, g * t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = (q * self.scale)?;
        let kt = k.transpose(2, 3)?.contiguous()?;
        let mut scores = q.matmul(&kt)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v.contiguous()?)?;
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((rows, t, d))?;
        apply_linear(&self.out, &ctx)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn load(d: usize, ffn: usize, act: Activation, vb: &VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(d, ffn, vb.pp("fc1"))?,
            fc2: candle_nn::linear(ffn, d, vb.pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        apply_linear(&self.fc2, &self.act.apply(&apply_linear(&self.fc1, x)?)?)
    }
}

struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &M2m100Config, act: Activation, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            attn: Attention::load(d, cfg.encoder_attention_heads, vb.pp("self_attn"))?,
            attn_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.encoder_ffn_dim, act, &vb)?,
            mlp_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.attn_ln.forward(x)?;
        let (k, v) = self.attn.keys_values(&h)?;
        let x = (x + self.attn.attend(&h, &k, &v, Some(mask))?)?;
        let h = self.mlp_ln.forward(&x)?;
        x + self.mlp.forward(&h)?
    }
}

struct DecoderLayer {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
    mlp_ln: LayerNorm,
}

impl DecoderLayer {
    fn load(cfg: &M2m100Config, act: Activation, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.d_model;
        let h = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::load(d, h, vb.pp("self_attn"))?,
            self_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            cross_attn: Attention::load(d, h, vb.pp("encoder_attn"))?,
            cross_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("encoder_attn_layer_norm"))?,
            mlp: Mlp::load(d, cfg.decoder_ffn_dim, act, &vb)?,
            mlp_ln: candle_nn::layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }
}

/// Encoder output for a right-padded batch.
#[derive(Clone, Debug)]
pub struct M2m100Encoded {
    /// `[B, S, d_model]`.
    pub hidden: Tensor,
    /// Real (unpadded) length of each source.
    pub lengths: Vec<usize>,
}

/// Decoder state: per-item cross-attention keys/values and key mask, per-row self-attention
/// cache. Rows come in groups of `group` per item (see the module doc).
pub struct M2m100Cache {
    cross: Vec<(Tensor, Tensor)>,
    /// Additive `[N, 1, 1, S]` mask over source positions.
    cross_mask: Tensor,
    past: Vec<Option<(Tensor, Tensor)>>,
    group: usize,
    items: usize,
    len: usize,
}

impl M2m100Cache {
    /// Decoder tokens consumed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows (items times group).
    pub fn rows(&self) -> usize {
        self.items * self.group
    }

    pub fn group(&self) -> usize {
        self.group
    }

    /// New row `r` continues old row `rows[r]`. `rows.len()` must be a multiple of the group
    /// size and the rows of each new group must come from one old group (beams reorder within
    /// their item; whole items may be dropped or repeated).
    pub fn select(&mut self, rows: &[usize]) -> Result<()> {
        let g = self.group;
        let old_rows = self.rows();
        if rows.is_empty() || !rows.len().is_multiple_of(g) {
            return Err(TeacherError::BadInput(format!(
                "cache select: {} rows is not a positive multiple of the group size {g}",
                rows.len()
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= old_rows) {
            return Err(TeacherError::BadInput(format!(
                "cache select: row {r} out of {old_rows}"
            )));
        }
        let mut items = Vec::with_capacity(rows.len() / g);
        for chunk in rows.chunks(g) {
            let it = chunk[0] / g;
            if chunk.iter().any(|&r| r / g != it) {
                return Err(TeacherError::BadInput(format!(
                    "cache select: rows {chunk:?} mix items (group size {g})"
                )));
            }
            items.push(it as u32);
        }
        let dev = self.cross_mask.device().clone();
        let identity_items =
            items.len() == self.items && items.iter().enumerate().all(|(i, &x)| i as u32 == x);
        if !identity_items {
            let idx = Tensor::new(items.as_slice(), &dev)?;
            for (k, v) in self.cross.iter_mut() {
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
            self.cross_mask = self.cross_mask.index_select(&idx, 0)?;
        }
        let identity_rows = rows.len() == old_rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if !identity_rows {
            let ridx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let ridx = Tensor::new(ridx.as_slice(), &dev)?;
            for (k, v) in self.past.iter_mut().flatten() {
                *k = k.index_select(&ridx, 0)?;
                *v = v.index_select(&ridx, 0)?;
            }
        }
        self.items = items.len();
        Ok(())
    }
}

/// How to load an M2M-100 / NLLB checkpoint.
#[derive(Clone, Debug)]
pub struct M2m100LoadOptions {
    pub device: Device,
    /// Compute dtype; stored weights are converted to it (F32 on the CPU).
    pub dtype: DType,
    pub hub: HubOptions,
}

impl Default for M2m100LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            hub: HubOptions::default(),
        }
    }
}

/// A required file next to the weights; a missing one is a config error naming it.
pub(crate) fn required_file(
    loc: &WeightLocation,
    name: &str,
    hub: &HubOptions,
    who: &str,
) -> Result<std::path::PathBuf> {
    loc.join(name).resolve_file(hub).map_err(|e| match e {
        vaak_nn::Error::MissingFile { path } => TeacherError::Config {
            path,
            reason: format!("missing ({who} needs {name})"),
        },
        other => other.into(),
    })
}

/// The weight files of a checkpoint directory, by the published names first (a directory may
/// hold other files).
fn weight_files(loc: &WeightLocation, hub: &HubOptions) -> Result<Vec<std::path::PathBuf>> {
    for name in [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ] {
        if let Ok(p) = loc.join(name).resolve_file(hub) {
            return Ok(vec![p]);
        }
    }
    Ok(vaak_nn::weights::resolve_files(loc, hub)?)
}

/// A loaded M2M-100 / NLLB model.
pub struct M2m100Model {
    cfg: M2m100Config,
    enc_embed: Tensor,
    dec_embed: Tensor,
    enc_layers: Vec<EncoderLayer>,
    enc_ln: LayerNorm,
    dec_layers: Vec<DecoderLayer>,
    dec_ln: LayerNorm,
    /// `[d_model, vocab]`, contiguous.
    lm_head_t: Tensor,
    embed_scale: f64,
    dtype: DType,
    device: Device,
}

impl M2m100Model {
    /// Builds the model from a VarBuilder rooted at the checkpoint's top level
    /// (`model.shared.weight`, `model.encoder.layers.0...`, optional `lm_head.weight`).
    pub fn load(cfg: &M2m100Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let act = Activation::parse(&cfg.activation_function).ok_or_else(|| {
            TeacherError::BadInput(format!(
                "unsupported activation {:?}",
                cfg.activation_function
            ))
        })?;
        let enc = vb.pp("model.encoder");
        let dec = vb.pp("model.decoder");
        // Tied (the default): one embedding, stored once as `model.shared.weight` (some
        // exports keep only a stack's copy) and used by both stacks and the head, whatever
        // other copies the file holds. Untied: each stack uses its own `embed_tokens` when
        // stored, and the head needs `lm_head.weight` (as transformers 5 unties them).
        let get = |name: &str| -> Result<Option<Tensor>> {
            if vb.contains_tensor(name) {
                Ok(Some(vb.get((cfg.vocab_size, d), name)?))
            } else {
                Ok(None)
            }
        };
        let shared = match get("model.shared.weight")? {
            Some(t) => t,
            None => get("model.encoder.embed_tokens.weight")?
                .or(get("model.decoder.embed_tokens.weight")?)
                .ok_or_else(|| {
                    TeacherError::BadInput(
                        "the weights hold no token embedding (model.shared.weight)".to_string(),
                    )
                })?,
        };
        let (enc_embed, dec_embed, lm_head) = if cfg.tie_word_embeddings {
            (shared.clone(), shared.clone(), shared)
        } else {
            let head = get("lm_head.weight")?.ok_or_else(|| {
                TeacherError::BadInput(
                    "config.json has tie_word_embeddings false but the weights hold no \
                     lm_head.weight"
                        .to_string(),
                )
            })?;
            (
                get("model.encoder.embed_tokens.weight")?.unwrap_or(shared.clone()),
                get("model.decoder.embed_tokens.weight")?.unwrap_or(shared),
                head,
            )
        };
        let enc_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::load(cfg, act, enc.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let enc_ln = candle_nn::layer_norm(d, LN_EPS, enc.pp("layer_norm"))?;
        let dec_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::load(cfg, act, dec.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let dec_ln = candle_nn::layer_norm(d, LN_EPS, dec.pp("layer_norm"))?;
        Ok(Self {
            cfg: cfg.clone(),
            enc_embed,
            dec_embed,
            enc_layers,
            enc_ln,
            dec_layers,
            dec_ln,
            lm_head_t: lm_head.t()?.contiguous()?,
            embed_scale: if cfg.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Loads `config.json` and the weights (`model.safetensors`, shards, or
    /// `pytorch_model.bin`) from a local directory or `hf://org/repo[@rev]`.
    pub fn from_location(loc: &WeightLocation, opts: &M2m100LoadOptions) -> Result<Self> {
        let cfg_path = required_file(loc, "config.json", &opts.hub, "M2M-100")?;
        let cfg = M2m100Config::from_file(&cfg_path)?;
        let load_opts = LoadOptions {
            dtype: Some(opts.dtype),
            device: opts.device.clone(),
            hub: opts.hub.clone(),
            state_dict_key: None,
        };
        let files = weight_files(loc, &opts.hub)?;
        let weights = Weights::from_files(&files, &load_opts)?;
        Self::load(&cfg, weights.into_var_builder(Some(opts.dtype)))
    }

    pub fn config(&self) -> &M2m100Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Scaled token embeddings plus positions for `tokens` (`[B, L]`, row-major), `past`
    /// tokens already consumed.
    fn embed(
        &self,
        table: &Tensor,
        tokens: &[u32],
        b: usize,
        l: usize,
        past: usize,
    ) -> Result<Tensor> {
        let d = self.cfg.d_model;
        let pad = self.cfg.pad_token_id;
        let ids = Tensor::from_slice(tokens, (b * l,), &self.device)?;
        let tok = (table.index_select(&ids, 0)? * self.embed_scale)?;
        let pos: Vec<u32> = tokens
            .chunks(l)
            .flat_map(|row| position_ids(row, pad, past))
            .collect();
        let pos = Tensor::from_vec(sinusoid_rows(&pos, d, pad), (b * l, d), &self.device)?
            .to_dtype(self.dtype)?;
        Ok((tok + pos)?.reshape((b, l, d))?)
    }

    fn check_ids(&self, ids: &[u32], what: &str) -> Result<()> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(TeacherError::BadInput(format!(
                "{what}: token id {t} is outside the vocabulary ({})",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Encodes a batch of token sequences (each `[src_lang] tokens </s>` as the tokenizer
    /// makes them); they are right-padded with `pad_token_id` and masked.
    pub fn encode(&self, sources: &[&[u32]]) -> Result<M2m100Encoded> {
        if sources.is_empty() {
            return Err(TeacherError::BadInput("encode: empty batch".into()));
        }
        let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
        if let Some(i) = lengths.iter().position(|&n| n == 0) {
            return Err(TeacherError::BadInput(format!(
                "encode: source {i} has no tokens"
            )));
        }
        let s = *lengths.iter().max().unwrap_or(&1);
        let b = sources.len();
        let pad = self.cfg.pad_token_id;
        let mut flat = Vec::with_capacity(b * s);
        for src in sources {
            self.check_ids(src, "encode")?;
            flat.extend_from_slice(src);
            flat.extend(std::iter::repeat_n(pad, s - src.len()));
        }
        let mut x = self.embed(&self.enc_embed, &flat, b, s, 0)?;
        let mask = self.key_mask(&lengths, s)?;
        for layer in &self.enc_layers {
            x = layer.forward(&x, &mask)?;
        }
        Ok(M2m100Encoded {
            hidden: self.enc_ln.forward(&x)?,
            lengths,
        })
    }

    /// Additive `[B, 1, 1, S]` mask: 0 on the first `lengths[b]` keys, -inf after.
    fn key_mask(&self, lengths: &[usize], s: usize) -> Result<Tensor> {
        let m: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..s).map(move |j| if j < n { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Ok(Tensor::from_vec(m, (lengths.len(), 1, 1, s), &self.device)?.to_dtype(self.dtype)?)
    }

    /// A fresh decoder cache with `group` rows per encoded item (all rows of a group start
    /// identical). Cross-attention keys/values are computed here, once per item.
    pub fn start(&self, enc: &M2m100Encoded, group: usize) -> Result<M2m100Cache> {
        if group == 0 {
            return Err(TeacherError::BadInput(
                "decoder group size must be > 0".into(),
            ));
        }
        let cross = self
            .dec_layers
            .iter()
            .map(|l| l.cross_attn.keys_values(&enc.hidden))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let s = enc.hidden.dim(1)?;
        Ok(M2m100Cache {
            cross,
            cross_mask: self.key_mask(&enc.lengths, s)?,
            past: vec![None; self.dec_layers.len()],
            group,
            items: enc.lengths.len(),
            len: 0,
        })
    }

    /// Feeds `tokens` (`rows x l`, row-major; `rows` = the cache's rows) after what `cache`
    /// holds and returns f32 logits `[rows, l, vocab]`.
    pub fn decode(&self, tokens: &[u32], l: usize, cache: &mut M2m100Cache) -> Result<Tensor> {
        let rows = cache.rows();
        if l == 0 || tokens.len() != rows * l {
            return Err(TeacherError::BadInput(format!(
                "decode: {} tokens for {rows} rows of {l}",
                tokens.len()
            )));
        }
        self.check_ids(tokens, "decode")?;
        let start = cache.len;
        let mut x = self.embed(&self.dec_embed, tokens, rows, l, start)?;
        let self_mask = if l > 1 {
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
            Some(Tensor::from_vec(m, (l, total), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        for (layer, (past, (ck, cv))) in self
            .dec_layers
            .iter()
            .zip(cache.past.iter_mut().zip(cache.cross.iter()))
        {
            let h = layer.self_ln.forward(&x)?;
            let (k, v) = layer.self_attn.keys_values(&h)?;
            let (k, v) = match past.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (x + layer.self_attn.attend(&h, &k, &v, self_mask.as_ref())?)?;
            *past = Some((k, v));
            let h = layer.cross_ln.forward(&x)?;
            x = (x + layer
                .cross_attn
                .attend(&h, ck, cv, Some(&cache.cross_mask))?)?;
            let h = layer.mlp_ln.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        cache.len += l;
        let x = self.dec_ln.forward(&x)?;
        let d = x.dim(D::Minus1)?;
        let logits = x
            .contiguous()?
            .reshape((rows * l, d))?
            .matmul(&self.lm_head_t)?;
        Ok(logits
            .reshape((rows, l, self.cfg.vocab_size))?
            .to_dtype(DType::F32)?)
    }
}

impl Seq2Seq for M2m100Model {
    type Encoded = M2m100Encoded;
    type Cache = M2m100Cache;

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn encode(&self, sources: &[&[u32]]) -> Result<M2m100Encoded> {
        M2m100Model::encode(self, sources)
    }

    fn start(&self, enc: &M2m100Encoded, group: usize) -> Result<M2m100Cache> {
        M2m100Model::start(self, enc, group)
    }

    fn step(&self, tokens: &[u32], cache: &mut M2m100Cache) -> Result<Tensor> {
        Ok(self.decode(tokens, 1, cache)?.squeeze(1)?)
    }

    fn select(&self, cache: &mut M2m100Cache, rows: &[usize]) -> Result<()> {
        cache.select(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_skip_padding_and_continue_after_the_cache() {
        assert_eq!(position_ids(&[5, 6, 1, 1], 1, 0), vec![2, 3, 1, 1]);
        assert_eq!(position_ids(&[7], 1, 4), vec![6]);
        assert_eq!(position_ids(&[1], 1, 4), vec![1]);
    }

    #[test]
    fn sinusoids_match_the_fairseq_layout() {
        let r = sinusoid_rows(&[0, 3, 1], 6, 1);
        // Row 0: sin(0) = 0 then cos(0) = 1.
        assert_eq!(&r[0..6], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        // Row for position 3 with half = 3: freqs 1, 0.01, 1e-4.
        assert!((r[6] - 3f32.sin()).abs() < 1e-6);
        assert!((r[7] - (0.03f32).sin()).abs() < 1e-6);
        assert!((r[9] - 3f32.cos()).abs() < 1e-6);
        // The pad row is zero.
        assert!(r[12..18].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn config_rejects_other_model_types_and_bad_ids() {
        let p = Path::new("config.json");
        let base = r#"{"vocab_size": 10, "d_model": 8, "encoder_layers": 1, "decoder_layers": 1,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 16,
            "decoder_ffn_dim": 16, "max_position_embeddings": 32"#;
        let ok = format!("{base}}}");
        let cfg = M2m100Config::from_json(&ok, p).unwrap();
        assert_eq!(cfg.eos_ids(), vec![2]);
        assert!(cfg.scale_embedding);
        let moe = format!(r#"{base}, "model_type": "nllb-moe"}}"#);
        let e = M2m100Config::from_json(&moe, p).unwrap_err().to_string();
        assert!(e.contains("nllb-moe"), "{e}");
        let bad = format!(r#"{base}, "eos_token_id": [2, 12]}}"#);
        let e = M2m100Config::from_json(&bad, p).unwrap_err().to_string();
        assert!(e.contains("eos_token_id 12"), "{e}");
        let act = format!(r#"{base}, "activation_function": "tanh"}}"#);
        assert!(M2m100Config::from_json(&act, p).is_err());
    }
}
