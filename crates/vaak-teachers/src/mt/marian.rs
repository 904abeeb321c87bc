//! Marian (Helsinki-NLP `opus-mt-*`) behind [`Translator`], loaded as published.
//!
//! [`MarianTranslator::load`] takes a local directory or `hf://Helsinki-NLP/opus-mt-ru-en`
//! holding `config.json`, the weights (`model.safetensors`, or `pytorch_model.bin` as the
//! original uploads have it), optionally `generation_config.json`, and the tokenizer files
//! (`source.spm`, `target.spm`, `vocab.json`, `tokenizer_config.json`; see [`MtTokenizer`]).
//!
//! The network is the shared [`crate::seq2seq`] stack as transformers' `MarianMTModel` computes
//! it: post-norm layers (no final LayerNorm), biases on every projection, the configured
//! activation (swish for opus-mt), token embeddings times `sqrt(d_model)` when
//! `scale_embedding`, Marian's sinusoidal positions (sin half, then cos half, computed in f64
//! as transformers does, indexed from 0 whatever the padding) and an LM head tied to the shared
//! embedding plus `final_logits_bias`. Ours besides: the config.json mapping (old opus-mt
//! configs lack `share_encoder_decoder_embeddings`, `decoder_vocab_size` and
//! `forced_eos_token_id`; defaults are transformers' `MarianConfig`), weight-name aliasing (a
//! checkpoint may store the tied embedding under any of its four names, and may leave out
//! `final_logits_bias`), and the generation settings opus-mt ships: decoding starts from
//! `<pad>`, `bad_words_ids` bans `<pad>`, `</s>` is forced at `max_length`. Greedy by default
//! (as `generate(num_beams=1)`); [`MarianLoadOptions::num_beams`] selects beam search, equal to
//! transformers' `generate(num_beams=K)`.
//!
//! Batching: sources are sorted by length, right-padded and masked in the encoder and in
//! cross-attention, so a batch gives each item what it gives alone.
//!
//! Per item: empty or whitespace-only text is an error; text longer than the encoder's
//! `max_position_embeddings` is split after sentence-ending punctuation (`.!?।…` followed by
//! whitespace, or a newline), the pieces are translated separately and joined with a space; a
//! single sentence that is still too long is an error.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vaak_nn::weights::{HubOptions, WeightLocation};

use super::tokenizer::{MtTokenizer, TokenizerKind};
use crate::error::{Result, TeacherError};
use crate::lang::Lang;
use crate::seq2seq::config::{check_dims, dims_of, json_config};
use crate::seq2seq::model::{checkpoint, required_file};
use crate::seq2seq::{
    embed_scale, generate_with, Activation, Decoder, DecoderStack, EarlyStopping, EncoderStack,
    Generated, GenerationConfigFile, GenerationParams, LayerConfig, LmHead, MaxLength,
    NormPosition, Seq2Seq, Stacks, TokenRules, TokenSeq2Seq,
};
use crate::{ItemResult, ModelId, Translator};

/// How to load a Marian model.
#[derive(Clone, Debug)]
pub struct MarianLoadOptions {
    pub device: Device,
    /// Compute dtype (F32 on the CPU).
    pub dtype: DType,
    pub hub: HubOptions,
    /// The language pair, when neither `tokenizer_config.json` nor the `opus-mt-xx-yy` name
    /// says it.
    pub pair: Option<(Lang, Lang)>,
    /// Upper bound on the output length including the start token (default: the checkpoint's
    /// `max_length`, capped by `max_position_embeddings`).
    pub max_length: Option<usize>,
    /// Most sources decoded together.
    pub max_batch: usize,
    /// Beam width; `None` (the default) decodes greedily, as this translator always has (the
    /// checkpoint's `num_beams` is not applied unless set here).
    pub num_beams: Option<usize>,
}

impl Default for MarianLoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            hub: HubOptions::default(),
            pair: None,
            max_length: None,
            max_batch: 16,
            num_beams: None,
        }
    }
}

fn d_vocab() -> usize {
    58101
}
fn d_positions() -> usize {
    1024
}
fn d_layers() -> usize {
    12
}
fn d_ffn() -> usize {
    4096
}
fn d_heads() -> usize {
    16
}
fn d_model() -> usize {
    1024
}
fn d_activation() -> String {
    "gelu".into()
}
fn d_pad() -> u32 {
    58100
}
fn d_true() -> bool {
    true
}

/// The keys of a Marian `config.json` we use, with `MarianConfig`'s defaults.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct MarianConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_layers")]
    pub encoder_layers: usize,
    #[serde(default = "d_ffn")]
    pub encoder_ffn_dim: usize,
    #[serde(default = "d_heads")]
    pub encoder_attention_heads: usize,
    #[serde(default = "d_layers")]
    pub decoder_layers: usize,
    #[serde(default = "d_ffn")]
    pub decoder_ffn_dim: usize,
    #[serde(default = "d_heads")]
    pub decoder_attention_heads: usize,
    #[serde(default = "d_model")]
    pub d_model: usize,
    #[serde(default = "d_activation")]
    pub activation_function: String,
    #[serde(default = "d_pad")]
    pub decoder_start_token_id: u32,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "d_pad")]
    pub pad_token_id: u32,
    #[serde(default)]
    pub eos_token_id: u32,
    #[serde(default)]
    pub forced_eos_token_id: Option<u32>,
    #[serde(default = "d_true")]
    pub share_encoder_decoder_embeddings: bool,
    /// Generation keys old configs carry (newer ones keep them in generation_config.json).
    #[serde(default)]
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    #[serde(default)]
    pub max_length: Option<usize>,
}

json_config!(MarianConfig);

impl MarianConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let cfg = self;
        let bad = |reason: String| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        };
        if !cfg.share_encoder_decoder_embeddings {
            return Err(bad(
                "share_encoder_decoder_embeddings = false (separate source and target \
                 embeddings) is not supported"
                    .into(),
            ));
        }
        if let Some(v) = cfg.decoder_vocab_size.filter(|&v| v != cfg.vocab_size) {
            return Err(bad(format!(
                "decoder_vocab_size {v} differs from vocab_size {}: not supported",
                cfg.vocab_size
            )));
        }
        check_dims(
            path,
            dims_of!(cfg),
            &[
                ("encoder_ffn_dim", cfg.encoder_ffn_dim),
                ("decoder_ffn_dim", cfg.decoder_ffn_dim),
                ("max_position_embeddings", cfg.max_position_embeddings),
            ],
        )?;
        cfg.activation().map_err(bad)?;
        Ok(())
    }

    fn activation(&self) -> std::result::Result<Activation, String> {
        Activation::parse(&self.activation_function).ok_or_else(|| {
            format!(
                "activation_function {:?} is not supported",
                self.activation_function
            )
        })
    }
}

/// transformers' `MarianSinusoidalPositionalEmbedding` table `[n, dim]`: for column pair `i`,
/// `sin(pos / 10000^(2i/dim))` in the first half and the cosine in the second, in f64.
fn marian_positions(n: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut out = vec![0f32; n * dim];
    for (pos, row) in out.chunks_mut(dim).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            let (i, f): (usize, fn(f64) -> f64) = if j < sentinel {
                (j, f64::sin)
            } else {
                (j - sentinel, f64::cos)
            };
            let angle = pos as f64 / 10000f64.powf((2 * i) as f64 / dim as f64);
            *x = f(angle) as f32;
        }
    }
    out
}

/// Names a checkpoint may store the shared embedding under (all tied in transformers).
const EMBEDDING_NAMES: [&str; 4] = [
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
];

/// A loaded Marian network (transformers' `MarianMTModel`); encoding, decoding and search come
/// from [`TokenSeq2Seq`] ([`Seq2Seq`] and [`Decoder`]).
pub struct MarianModel {
    cfg: MarianConfig,
    /// The shared token embedding `[vocab, d_model]`.
    embed: Tensor,
    /// `[max_position_embeddings, d_model]`.
    positions: Tensor,
    stacks: Stacks,
    embed_scale: f64,
    device: Device,
}

impl MarianModel {
    /// Builds the model from a VarBuilder rooted at the checkpoint's top level; `path` (the
    /// config) names errors.
    pub fn load(cfg: &MarianConfig, vb: VarBuilder, path: &Path) -> Result<Self> {
        let bad = |reason: String| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let name = EMBEDDING_NAMES
            .iter()
            .find(|n| vb.contains_tensor(n))
            .ok_or_else(|| {
                bad(format!(
                    "the weights hold no token embedding ({})",
                    EMBEDDING_NAMES.join(", ")
                ))
            })?;
        let embed = vb.get((v, d), name)?;
        // transformers initialises this buffer to zeros and may leave it out.
        let bias = if vb.contains_tensor("final_logits_bias") {
            vb.get((1, v), "final_logits_bias")?.reshape(v)?
        } else {
            Tensor::zeros(v, vb.dtype(), vb.device())?
        };
        let n = cfg.max_position_embeddings;
        let positions =
            Tensor::from_vec(marian_positions(n, d), (n, d), vb.device())?.to_dtype(vb.dtype())?;
        let act = cfg.activation().map_err(bad)?;
        let post = NormPosition::Post;
        let enc_shape = (cfg.encoder_attention_heads, cfg.encoder_ffn_dim);
        let dec_shape = (cfg.decoder_attention_heads, cfg.decoder_ffn_dim);
        let enc_cfg = LayerConfig::bart(d, enc_shape, act, post);
        let dec_cfg = LayerConfig::bart(d, dec_shape, act, post);
        Ok(Self {
            cfg: cfg.clone(),
            stacks: Stacks {
                encoder: EncoderStack::load(&enc_cfg, cfg.encoder_layers, vb.pp("model.encoder"))?,
                decoder: DecoderStack::load(&dec_cfg, cfg.decoder_layers, vb.pp("model.decoder"))?,
                lm_head: LmHead::new(&embed, Some(bias))?,
            },
            embed,
            positions,
            embed_scale: embed_scale(cfg.scale_embedding, d),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &MarianConfig {
        &self.cfg
    }
}

impl TokenSeq2Seq for MarianModel {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn pad_token_id(&self) -> u32 {
        self.cfg.pad_token_id
    }

    /// Scaled embeddings plus positions `past..past + l` (the same table for both stacks).
    fn embed(&self, ids: &[u32], shape: (usize, usize), past: usize, _: bool) -> Result<Tensor> {
        let ((rows, l), d) = (shape, self.cfg.d_model);
        if past + l > self.cfg.max_position_embeddings {
            return Err(TeacherError::BadInput(format!(
                "input reaches {} tokens; max_position_embeddings is {}",
                past + l,
                self.cfg.max_position_embeddings
            )));
        }
        let ids = Tensor::from_slice(ids, rows * l, &self.device)?;
        let tok = (self.embed.index_select(&ids, 0)? * self.embed_scale)?.reshape((rows, l, d))?;
        Ok(tok.broadcast_add(&self.positions.narrow(0, past, l)?)?)
    }

    fn stacks(&self) -> &Stacks {
        &self.stacks
    }
}

/// Marian behind [`Translator`].
pub struct MarianTranslator {
    model: MarianModel,
    tokenizer: MtTokenizer,
    params: GenerationParams,
    rules: TokenRules,
    max_length: usize,
    pair: (Lang, Lang),
    max_batch: usize,
    id: ModelId,
}

/// The language pair from an `opus-mt-xx-yy` name.
fn pair_from_name(name: &str) -> Option<(Lang, Lang)> {
    let base = name.trim_end_matches('/').rsplit('/').next()?;
    let rest = base.strip_prefix("opus-mt-")?;
    let mut parts = rest.split('-');
    let src = parts.next()?.parse().ok()?;
    let tgt = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((src, tgt))
}

fn optional_file(
    loc: &WeightLocation,
    name: &str,
    hub: &HubOptions,
) -> Result<Option<std::path::PathBuf>> {
    match loc.join(name).resolve_file(hub) {
        Ok(p) => Ok(Some(p)),
        Err(vaak_nn::Error::MissingFile { .. }) | Err(vaak_nn::Error::HubFileNotCached { .. }) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl MarianTranslator {
    /// Loads from a local directory or `hf://org/repo[@revision]`.
    pub fn load(location: &str, opts: &MarianLoadOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let cfg_path = required_file(&loc, "config.json", &opts.hub, "Marian")?;
        let cfg = MarianConfig::from_file(&cfg_path)?;
        let tokenizer = MtTokenizer::load(&loc, &opts.hub)?;
        if tokenizer.kind() != TokenizerKind::Marian {
            return Err(TeacherError::Config {
                path: cfg_path,
                reason: format!(
                    "expected a Marian tokenizer, found {}",
                    tokenizer.kind().name()
                ),
            });
        }
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(TeacherError::Config {
                path: cfg_path,
                reason: format!(
                    "the tokenizer has {} tokens but vocab_size is {}",
                    tokenizer.vocab_size(),
                    cfg.vocab_size
                ),
            });
        }
        let gen = match optional_file(&loc, "generation_config.json", &opts.hub)? {
            Some(p) => GenerationConfigFile::from_file(&p)?,
            None => GenerationConfigFile::default(),
        };
        let eos = gen
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec![cfg.eos_token_id]);
        let max_length = opts
            .max_length
            .or(gen.max_length)
            .or(cfg.max_length)
            .unwrap_or(512)
            .clamp(2, cfg.max_position_embeddings);
        let params = GenerationParams {
            num_beams: opts.num_beams.unwrap_or(1).max(1),
            max_length: MaxLength::Fixed(max_length),
            min_length: gen.min_length.unwrap_or(0),
            length_penalty: gen.length_penalty.unwrap_or(1.0),
            early_stopping: gen.early_stopping().unwrap_or(EarlyStopping::False),
            decoder_start_token_id: gen
                .decoder_start_token_id
                .unwrap_or(cfg.decoder_start_token_id),
            forced_bos_token_id: None,
            forced_eos_token_id: gen
                .forced_eos_token_id
                .or(cfg.forced_eos_token_id)
                .or(Some(eos[0])),
            eos_token_ids: eos.clone(),
            pad_token_id: gen.pad_token_id.unwrap_or(cfg.pad_token_id),
            no_repeat_ngram_size: gen.no_repeat_ngram_size.unwrap_or(0),
        };
        let rules = TokenRules::default().with_bad_words(
            gen.bad_words_ids
                .or_else(|| cfg.bad_words_ids.clone())
                .unwrap_or_default(),
            &eos,
        );
        let pair = match opts.pair {
            Some(p) => p,
            None => match tokenizer.config_languages() {
                (Some(s), Some(t)) => (s, t),
                _ => pair_from_name(location).ok_or_else(|| TeacherError::Config {
                    path: cfg_path.clone(),
                    reason: "the language pair is unknown: tokenizer_config.json names none and \
                             the location is not opus-mt-xx-yy; set MarianLoadOptions::pair"
                        .into(),
                })?,
            },
        };

        let vb = checkpoint(&loc, &opts.hub, opts.dtype, &opts.device)?;
        let model = MarianModel::load(&cfg, vb, &cfg_path)?;
        Ok(Self {
            model,
            tokenizer,
            params,
            rules,
            max_length,
            pair,
            max_batch: opts.max_batch.max(1),
            id: ModelId::of_location(&loc),
        })
    }

    pub fn tokenizer(&self) -> &MtTokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &MarianConfig {
        self.model.config()
    }

    pub fn model(&self) -> &MarianModel {
        &self.model
    }

    /// `(source, target)` languages of this model.
    pub fn pair(&self) -> (Lang, Lang) {
        self.pair
    }

    /// The output length limit (start token included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The generation settings [`Self::translate`] and [`Self::generate`] use.
    pub fn generation_params(&self) -> &GenerationParams {
        &self.params
    }

    /// Logits `[B, T, vocab]` for sources (any lengths; right-padded and masked) and a
    /// decoder prefix `[B, T]` of equal-length rows (teacher forcing), for parity checks.
    pub fn logits(&self, input_ids: &[Vec<u32>], decoder_ids: &[Vec<u32>]) -> Result<Tensor> {
        let len = decoder_ids.first().map_or(0, Vec::len);
        if len == 0
            || decoder_ids.len() != input_ids.len()
            || decoder_ids.iter().any(|r| r.len() != len)
        {
            return Err(TeacherError::BadInput(
                "decoder id rows must be non-empty, of equal length, one per source".into(),
            ));
        }
        let refs: Vec<&[u32]> = input_ids.iter().map(Vec::as_slice).collect();
        let enc = self.model.encode_sources(&refs)?;
        let mut cache = self.model.start_cache(&enc, 1)?;
        let flat: Vec<u32> = decoder_ids.iter().flatten().copied().collect();
        self.model.decode_step(&flat, len, &mut cache)
    }

    /// Decodes sources (any lengths, one batch) with `p`; one [`Generated`] per source.
    pub fn generate_ids(
        &self,
        sources: &[Vec<u32>],
        p: &GenerationParams,
    ) -> Result<Vec<Generated>> {
        let refs: Vec<&[u32]> = sources.iter().map(Vec::as_slice).collect();
        generate_with(&self.model, &refs, p, &self.rules)
    }

    /// Decodes sources (any lengths, one batch) with [`Self::generation_params`]; returns the
    /// output ids (start token first, `</s>` last unless cut by `max_length`).
    pub fn generate(&self, sources: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .generate_ids(sources, &self.params)?
            .into_iter()
            .map(|g| g.tokens)
            .collect())
    }

    /// The source ids of one item, split into sentence groups when it is too long.
    fn encode_item(&self, i: usize, text: &str, src: Lang) -> ItemResult<Vec<Vec<u32>>> {
        if text.trim().is_empty() {
            return Err(TeacherError::BadInput(format!("item {i}: empty text")));
        }
        let limit = self.model.config().max_position_embeddings;
        self.tokenizer
            .encode_source_packed(text, src, limit)
            .map_err(|e| match e {
                TeacherError::BadInput(m) => TeacherError::BadInput(format!("item {i}: {m}")),
                other => other,
            })
    }
}

impl Translator for MarianTranslator {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn supports(&self, lang: Lang) -> bool {
        lang == self.pair.0 || lang == self.pair.1
    }

    fn translate(&self, batch: &[&str], src: Lang, tgt: Lang) -> Result<Vec<ItemResult<String>>> {
        if (src, tgt) != self.pair {
            return Err(TeacherError::UnsupportedLanguage {
                code: format!("{src}->{tgt}"),
                what: format!("Marian model {}", self.id.name),
                supported: format!("{}->{}", self.pair.0, self.pair.1),
            });
        }
        let mut results: Vec<ItemResult<Vec<Option<String>>>> = Vec::with_capacity(batch.len());
        // Work units (item, chunk, ids), longest first, so each batch pads little.
        let mut units: Vec<(usize, usize, Vec<u32>)> = Vec::new();
        for (i, text) in batch.iter().enumerate() {
            match self.encode_item(i, text, src) {
                Ok(chunks) => {
                    results.push(Ok(vec![None; chunks.len()]));
                    units.extend(chunks.into_iter().enumerate().map(|(c, ids)| (i, c, ids)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        units.sort_by_key(|u| std::cmp::Reverse(u.2.len()));
        for part in units.chunks(self.max_batch) {
            let sources: Vec<Vec<u32>> = part.iter().map(|(_, _, ids)| ids.clone()).collect();
            let outputs = self.generate(&sources)?;
            for ((i, c, _), ids) in part.iter().zip(outputs) {
                let text = self.tokenizer.decode(&ids)?;
                if let Ok(slots) = &mut results[*i] {
                    slots[*c] = Some(text);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.map(|slots| slots.into_iter().flatten().collect::<Vec<_>>().join(" ")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_transformers_layout() {
        // dim 5: sentinel 3; sin columns use exponents 0, 2/5, 4/5, cos columns 0, 2/5.
        let t = marian_positions(3, 5);
        assert!(t[..5] == [0.0, 0.0, 0.0, 1.0, 1.0]);
        let row = &t[10..15];
        let w = |i: usize| 2.0 / 10000f64.powf((2 * i) as f64 / 5.0);
        for (j, &x) in row.iter().enumerate() {
            let want = if j < 3 { w(j).sin() } else { w(j - 3).cos() };
            assert!((x as f64 - want).abs() < 1e-7, "column {j}: {x} vs {want}");
        }
    }
}
