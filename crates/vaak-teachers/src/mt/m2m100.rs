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
//!   biases on all four projections and queries scaled by `head_dim^-1/2` (the shared
//!   [`crate::seq2seq`] stack);
//! - with `tie_word_embeddings` (the published default) one embedding serves both stacks and
//!   `lm_head`: `model.shared.weight` (transformers 5 `save_pretrained` stores only that; older
//!   `.bin` files store every copy). Untied configs use each stack's own `embed_tokens` and
//!   `lm_head.weight`, as transformers 5 does.
//!
//! Batching: sources are right-padded and masked in the encoder and in cross-attention. The
//! decoder cache ([`M2m100Cache`], the shared [`KvCache`]) holds rows in groups (one group per
//! source item, `group` rows each, e.g. the beams) sharing their item's encoder keys; rows can
//! be selected/reordered between steps for beam search and for dropping finished items.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use vaak_nn::weights::{HubOptions, WeightLocation};

use crate::error::{Result, TeacherError};
use crate::seq2seq::config::{check_dims, dims_of, json_config};
use crate::seq2seq::model::checkpoint;
pub(crate) use crate::seq2seq::model::required_file;
use crate::seq2seq::{
    decode_tokens, embed_scale, encode_tokens, Activation, DecoderStack, Encoded, EncoderStack,
    KvCache, LayerConfig, LmHead, NormPosition, Stacks, TokenIds, TokenSeq2Seq,
};

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

json_config!(M2m100Config);

impl M2m100Config {
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
        check_dims(
            path,
            dims_of!(self),
            &[
                ("encoder_ffn_dim", self.encoder_ffn_dim),
                ("decoder_ffn_dim", self.decoder_ffn_dim),
                ("max_position_embeddings", self.max_position_embeddings),
            ],
        )?;
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

/// Encoder output for a right-padded batch.
pub type M2m100Encoded = Encoded;

/// The decoder cache (rows in groups per item; see the module doc).
pub type M2m100Cache = KvCache;

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

/// A loaded M2M-100 / NLLB model.
pub struct M2m100Model {
    cfg: M2m100Config,
    enc_embed: Tensor,
    dec_embed: Tensor,
    stacks: Stacks,
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
        let pre = NormPosition::Pre;
        let enc_shape = (cfg.encoder_attention_heads, cfg.encoder_ffn_dim);
        let dec_shape = (cfg.decoder_attention_heads, cfg.decoder_ffn_dim);
        let stacks = Stacks {
            encoder: EncoderStack::load(
                &LayerConfig::bart(d, enc_shape, act, pre),
                cfg.encoder_layers,
                enc,
            )?,
            decoder: DecoderStack::load(
                &LayerConfig::bart(d, dec_shape, act, pre),
                cfg.decoder_layers,
                dec,
            )?,
            lm_head: LmHead::new(&lm_head, None)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            enc_embed,
            dec_embed,
            stacks,
            embed_scale: embed_scale(cfg.scale_embedding, d),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Loads `config.json` and the weights (`model.safetensors`, shards, or
    /// `pytorch_model.bin`) from a local directory or `hf://org/repo[@rev]`.
    pub fn from_location(loc: &WeightLocation, opts: &M2m100LoadOptions) -> Result<Self> {
        let cfg_path = required_file(loc, "config.json", &opts.hub, "M2M-100")?;
        let cfg = M2m100Config::from_file(&cfg_path)?;
        Self::load(&cfg, checkpoint(loc, &opts.hub, opts.dtype, &opts.device)?)
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
    fn embed_table(
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

    /// Encodes a batch of token sequences (each `[src_lang] tokens </s>` as the tokenizer
    /// makes them); they are right-padded with `pad_token_id` and masked.
    pub fn encode(&self, sources: &[&[u32]]) -> Result<M2m100Encoded> {
        encode_tokens(self, sources)
    }

    /// A fresh decoder cache with `group` rows per encoded item (all rows of a group start
    /// identical). Cross-attention keys/values are computed here, once per item.
    pub fn start(&self, enc: &M2m100Encoded, group: usize) -> Result<M2m100Cache> {
        self.stacks.decoder.start(enc, group)
    }

    /// Feeds `tokens` (`rows x l`, row-major; `rows` = the cache's rows) after what `cache`
    /// holds and returns f32 logits `[rows, l, vocab]`.
    pub fn decode(&self, tokens: &[u32], l: usize, cache: &mut M2m100Cache) -> Result<Tensor> {
        decode_tokens(self, tokens, l, cache)
    }
}

impl TokenSeq2Seq for M2m100Model {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn pad_token_id(&self) -> u32 {
        self.cfg.pad_token_id
    }

    fn embed(&self, ids: &[u32], shape: (usize, usize), past: usize, dec: bool) -> Result<Tensor> {
        let table = if dec {
            &self.dec_embed
        } else {
            &self.enc_embed
        };
        self.embed_table(table, ids, shape.0, shape.1, past)
    }

    fn stacks(&self) -> &Stacks {
        &self.stacks
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
