//! Marian (Helsinki-NLP `opus-mt-*`) behind [`Translator`], loaded as published.
//!
//! [`MarianTranslator::load`] takes a local directory or `hf://Helsinki-NLP/opus-mt-ru-en`
//! holding `config.json`, the weights (`model.safetensors`, or `pytorch_model.bin` as the
//! original uploads have it), optionally `generation_config.json`, and the tokenizer files
//! (`source.spm`, `target.spm`, `vocab.json`, `tokenizer_config.json`; see [`MtTokenizer`]).
//!
//! Reused from candle-transformers: the whole network (`candle_transformers::models::marian`:
//! encoder, decoder with its self-attention KV cache, tied LM head, `final_logits_bias`). Ours:
//! the config.json mapping (old opus-mt configs lack `share_encoder_decoder_embeddings`,
//! `decoder_vocab_size` and `forced_eos_token_id`; defaults are transformers' `MarianConfig`),
//! weight-name aliasing (a checkpoint may store the tied embedding under any of its four names),
//! and greedy decoding with the generation settings opus-mt ships (`bad_words_ids` bans
//! `<pad>`, `</s>` forced at `max_length`), matching `generate(num_beams=1)`.
//!
//! Batching: candle's Marian takes no attention mask, so padded batches would let real tokens
//! attend to padding and change the output. Sources are therefore grouped by token length and
//! each group runs as one batch (no padding needed); in practice this batches duplicates and
//! equal-length sentences and runs the rest one by one. A Marian with padding masks would need
//! its own model file.
//!
//! Per item: empty or whitespace-only text is an error; text longer than the encoder's
//! `max_position_embeddings` is split after sentence-ending punctuation (`.!?।…` followed by
//! whitespace, or a newline), the pieces are translated separately and joined with a space; a
//! single sentence that is still too long is an error.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::marian::{Config as CandleConfig, MTModel};
use vaak_nn::weights::{HubOptions, LoadOptions, WeightLocation, Weights};

use super::tokenizer::{MtTokenizer, TokenizerKind};
use crate::error::{Result, TeacherError};
use crate::lang::Lang;
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

/// The generation settings greedy decoding honours.
#[derive(Clone, Debug, Default, serde::Deserialize)]
struct GenerationFile {
    bad_words_ids: Option<Vec<Vec<u32>>>,
    decoder_start_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
    forced_eos_token_id: Option<u32>,
    max_length: Option<usize>,
}

#[derive(Clone, Debug)]
struct Generation {
    start: u32,
    eos: u32,
    pad: u32,
    forced_eos: Option<u32>,
    bad_words: Vec<Vec<u32>>,
    max_length: usize,
}

impl MarianConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| bad(format!("invalid: {e}")))?;
        if !cfg.share_encoder_decoder_embeddings {
            return Err(bad(
                "share_encoder_decoder_embeddings = false (separate source and target \
                 embeddings) is not supported by candle's Marian"
                    .into(),
            ));
        }
        if let Some(v) = cfg.decoder_vocab_size.filter(|&v| v != cfg.vocab_size) {
            return Err(bad(format!(
                "decoder_vocab_size {v} differs from vocab_size {}: not supported",
                cfg.vocab_size
            )));
        }
        for (what, heads) in [
            ("encoder_attention_heads", cfg.encoder_attention_heads),
            ("decoder_attention_heads", cfg.decoder_attention_heads),
        ] {
            if heads == 0 || !cfg.d_model.is_multiple_of(heads) {
                return Err(bad(format!(
                    "d_model {} is not divisible by {what} {heads}",
                    cfg.d_model
                )));
            }
        }
        cfg.activation().map_err(bad)?;
        Ok(cfg)
    }

    fn activation(&self) -> std::result::Result<candle_nn::Activation, String> {
        use candle_nn::Activation as A;
        Ok(match self.activation_function.as_str() {
            "swish" | "silu" => A::Swish,
            "gelu" => A::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => A::NewGelu,
            "relu" => A::Relu,
            other => return Err(format!("activation_function {other:?} is not supported")),
        })
    }

    /// candle-transformers' config for this checkpoint.
    pub fn to_candle(&self) -> CandleConfig {
        CandleConfig {
            vocab_size: self.vocab_size,
            decoder_vocab_size: Some(self.vocab_size),
            max_position_embeddings: self.max_position_embeddings,
            encoder_layers: self.encoder_layers,
            encoder_ffn_dim: self.encoder_ffn_dim,
            encoder_attention_heads: self.encoder_attention_heads,
            decoder_layers: self.decoder_layers,
            decoder_ffn_dim: self.decoder_ffn_dim,
            decoder_attention_heads: self.decoder_attention_heads,
            use_cache: true,
            is_encoder_decoder: true,
            activation_function: self.activation().unwrap_or(candle_nn::Activation::Swish),
            d_model: self.d_model,
            decoder_start_token_id: self.decoder_start_token_id,
            scale_embedding: self.scale_embedding,
            pad_token_id: self.pad_token_id,
            eos_token_id: self.eos_token_id,
            forced_eos_token_id: self.forced_eos_token_id.unwrap_or(self.eos_token_id),
            share_encoder_decoder_embeddings: true,
        }
    }
}

/// Names a checkpoint may store the shared embedding under (all tied in transformers).
const EMBEDDING_NAMES: [&str; 4] = [
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
];

/// Marian behind [`Translator`].
pub struct MarianTranslator {
    model: MTModel,
    cfg: MarianConfig,
    tokenizer: MtTokenizer,
    gen: Generation,
    pair: (Lang, Lang),
    device: Device,
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
        let cfg_path = loc
            .join("config.json")
            .resolve_file(&opts.hub)
            .map_err(|e| match e {
                vaak_nn::Error::MissingFile { path } => TeacherError::Config {
                    path,
                    reason: "missing (Marian needs config.json)".into(),
                },
                other => other.into(),
            })?;
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
        let gen_file: GenerationFile =
            match optional_file(&loc, "generation_config.json", &opts.hub)? {
                Some(p) => {
                    let text = std::fs::read_to_string(&p).map_err(|e| TeacherError::Config {
                        path: p.clone(),
                        reason: format!("cannot read: {e}"),
                    })?;
                    serde_json::from_str(&text).map_err(|e| TeacherError::Config {
                        path: p.clone(),
                        reason: format!("invalid: {e}"),
                    })?
                }
                None => GenerationFile::default(),
            };
        let eos = match &gen_file.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
            }
            _ => None,
        }
        .unwrap_or(cfg.eos_token_id);
        let max_length = opts
            .max_length
            .or(gen_file.max_length)
            .or(cfg.max_length)
            .unwrap_or(512)
            .clamp(2, cfg.max_position_embeddings);
        let gen = Generation {
            start: gen_file
                .decoder_start_token_id
                .unwrap_or(cfg.decoder_start_token_id),
            eos,
            pad: cfg.pad_token_id,
            forced_eos: gen_file
                .forced_eos_token_id
                .or(cfg.forced_eos_token_id)
                .or(Some(eos)),
            bad_words: gen_file
                .bad_words_ids
                .or_else(|| cfg.bad_words_ids.clone())
                .unwrap_or_default(),
            max_length,
        };
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

        let load_opts = LoadOptions {
            dtype: Some(opts.dtype),
            device: opts.device.clone(),
            hub: opts.hub.clone(),
            state_dict_key: None,
        };
        let weights = match loc.join("model.safetensors").resolve_file(&opts.hub) {
            Ok(p) => Weights::from_files(&[p], &load_opts)?,
            Err(_) => Weights::load_location(&loc, &load_opts)?,
        };
        let weights =
            if weights.contains("model.shared.weight") && weights.contains("final_logits_bias") {
                weights
            } else {
                let mut all = weights.load_all()?;
                let emb = EMBEDDING_NAMES
                    .iter()
                    .find_map(|n| all.get(*n).cloned())
                    .ok_or_else(|| TeacherError::Config {
                        path: cfg_path.clone(),
                        reason: format!(
                            "the weights hold no token embedding ({})",
                            EMBEDDING_NAMES.join(", ")
                        ),
                    })?;
                all.entry("model.shared.weight".into()).or_insert(emb);
                if !all.contains_key("final_logits_bias") {
                    // transformers initialises this buffer to zeros and may leave it out.
                    let zeros = Tensor::zeros((1, cfg.vocab_size), opts.dtype, &opts.device)?;
                    all.insert("final_logits_bias".into(), zeros);
                }
                Weights::from_tensors(all, location, &load_opts)
            };
        let model = MTModel::new(&cfg.to_candle(), weights.into_var_builder(Some(opts.dtype)))?;
        Ok(Self {
            model,
            cfg,
            tokenizer,
            gen,
            pair,
            device: opts.device.clone(),
            max_batch: opts.max_batch.max(1),
            id: ModelId::of_location(&loc),
        })
    }

    pub fn tokenizer(&self) -> &MtTokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &MarianConfig {
        &self.cfg
    }

    /// `(source, target)` languages of this model.
    pub fn pair(&self) -> (Lang, Lang) {
        self.pair
    }

    /// The output length limit (start token included).
    pub fn max_length(&self) -> usize {
        self.gen.max_length
    }

    /// Logits `[B, T, vocab]` for equal-length sources `[B, S]` and a decoder prefix `[B, T]`
    /// (teacher forcing), for parity checks.
    pub fn logits(&self, input_ids: &[Vec<u32>], decoder_ids: &[Vec<u32>]) -> Result<Tensor> {
        let src = self.ids_tensor(input_ids)?;
        let dec = self.ids_tensor(decoder_ids)?;
        let mut model = self.model.clone();
        let enc = model.encoder().forward(&src, 0)?;
        Ok(model.decode(&dec, &enc, 0)?)
    }

    fn ids_tensor(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let len = rows.first().map_or(0, Vec::len);
        if len == 0 || rows.iter().any(|r| r.len() != len) {
            return Err(TeacherError::BadInput(
                "id rows must be non-empty and of equal length".into(),
            ));
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (rows.len(), len), &self.device)?)
    }

    /// Greedy decoding of equal-length sources; returns the output ids (start token first,
    /// `</s>` last unless cut by `max_length`).
    pub fn generate(&self, sources: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        let src = self.ids_tensor(sources)?;
        let b = sources.len();
        let g = &self.gen;
        let mut model = self.model.clone();
        let enc = model.encoder().forward(&src, 0)?.contiguous()?;
        let mut out: Vec<Vec<u32>> = vec![vec![g.start]; b];
        let mut done = vec![false; b];
        for step in 0..g.max_length - 1 {
            let last: Vec<u32> = out.iter().map(|o| o[o.len() - 1]).collect();
            let input = Tensor::from_vec(last, (b, 1), &self.device)?;
            let logits = model
                .decode(&input, &enc, step)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            let cur_len = step + 1;
            for (i, mut row) in logits.into_iter().enumerate() {
                if done[i] {
                    out[i].push(g.pad);
                    continue;
                }
                for w in &g.bad_words {
                    let Some((&last, prefix)) = w.split_last() else {
                        continue;
                    };
                    if out[i].ends_with(prefix) {
                        if let Some(x) = row.get_mut(last as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                if let Some(eos) = g.forced_eos.filter(|_| cur_len == g.max_length - 1) {
                    row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                    if let Some(x) = row.get_mut(eos as usize) {
                        *x = 0.0;
                    }
                }
                let next = argmax(&row);
                out[i].push(next);
                done[i] = next == g.eos;
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        // Trailing pads belong to the batch, not to the item.
        for (o, &d) in out.iter_mut().zip(&done) {
            if d {
                if let Some(p) = o.iter().skip(1).position(|&t| t == g.eos) {
                    o.truncate(p + 2);
                }
            }
        }
        Ok(out)
    }

    /// The source ids of one item, split into sentence groups when it is too long.
    fn encode_item(&self, i: usize, text: &str, src: Lang) -> ItemResult<Vec<Vec<u32>>> {
        if text.trim().is_empty() {
            return Err(TeacherError::BadInput(format!("item {i}: empty text")));
        }
        let limit = self.cfg.max_position_embeddings;
        self.tokenizer
            .encode_source_packed(text, src, limit)
            .map_err(|e| match e {
                TeacherError::BadInput(m) => TeacherError::BadInput(format!("item {i}: {m}")),
                other => other,
            })
    }
}

/// The first index of the largest value (torch.argmax's choice on ties).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
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
        // Work units (item, chunk, ids) grouped by source length: no padding needed.
        let mut groups: BTreeMap<usize, Vec<(usize, usize, Vec<u32>)>> = BTreeMap::new();
        for (i, text) in batch.iter().enumerate() {
            match self.encode_item(i, text, src) {
                Ok(chunks) => {
                    results.push(Ok(vec![None; chunks.len()]));
                    for (c, ids) in chunks.into_iter().enumerate() {
                        groups.entry(ids.len()).or_default().push((i, c, ids));
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        for units in groups.values() {
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
        }
        Ok(results
            .into_iter()
            .map(|r| r.map(|slots| slots.into_iter().flatten().collect::<Vec<_>>().join(" ")))
            .collect())
    }
}
