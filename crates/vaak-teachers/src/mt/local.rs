//! [`M2m100Translator`]: M2M-100 / NLLB-200 run locally behind [`Translator`].
//!
//! Loads a published repo (local directory or `hf://org/repo[@rev]`): `config.json`, the
//! weights ([`M2m100Model::from_location`]), the tokenizer ([`MtTokenizer`]: M2M-100's
//! `sentencepiece.bpe.model` + `vocab.json`, or NLLB's `tokenizer.json`) and, when present,
//! `generation_config.json` (its `num_beams`, `length_penalty`, `early_stopping`,
//! `no_repeat_ngram_size` are the defaults, as in transformers' `generate()`).
//!
//! Per batch: every item is validated and tokenized (`[src_lang] pieces </s>`); items whose
//! source exceeds the model's positions are split at sentence ends and the pieces translated
//! separately and joined with a space; the pieces of all items are sorted by length and run in
//! chunks of [`M2m100TranslatorOptions::batch_size`] (less padding), with the target language
//! forced as the first generated token. Per-item errors: empty or whitespace-only text, a
//! sentence that alone exceeds the positions, and (unless allowed) a translation cut by the
//! length limit. An unsupported language fails the whole batch with the supported codes named.

use vaak_nn::weights::WeightLocation;

use super::generate::{generate, GenerationConfigFile, GenerationParams, MaxLength};
use super::m2m100::{M2m100Config, M2m100LoadOptions, M2m100Model};
use super::tokenizer::MtTokenizer;
use crate::error::{Result, TeacherError};
use crate::{ItemResult, Lang, ModelId, Translator};

/// How to load and run the translator. `None` fields come from `generation_config.json`.
#[derive(Clone, Debug)]
pub struct M2m100TranslatorOptions {
    pub load: M2m100LoadOptions,
    /// Beam width (1 = greedy); default: generation_config's `num_beams`, else 1.
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    /// Decoder length limit; default `min(cap, ceil(2 * src_len) + 10)` with `cap` the smaller
    /// of generation_config's `max_length` and `max_position_embeddings`.
    pub max_length: Option<MaxLength>,
    /// Most source segments per forward pass.
    pub batch_size: usize,
    /// Return translations cut by the length limit instead of a per-item error.
    pub allow_truncated: bool,
}

impl Default for M2m100TranslatorOptions {
    fn default() -> Self {
        Self {
            load: M2m100LoadOptions::default(),
            num_beams: None,
            length_penalty: None,
            max_length: None,
            batch_size: 16,
            allow_truncated: false,
        }
    }
}

/// M2M-100 / NLLB behind [`Translator`].
pub struct M2m100Translator {
    model: M2m100Model,
    tokenizer: MtTokenizer,
    base: GenerationParams,
    batch_size: usize,
    allow_truncated: bool,
    id: ModelId,
}
impl M2m100Translator {
    /// Loads from a local directory or `hf://org/repo[@revision]`.
    pub fn load(location: &str, opts: &M2m100TranslatorOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let model = M2m100Model::from_location(&loc, &opts.load)?;
        let tokenizer = MtTokenizer::load(&loc, &opts.load.hub)?;
        let cfg = model.config().clone();
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(TeacherError::Config {
                path: location.into(),
                reason: format!(
                    "the tokenizer has {} tokens but the model's vocab_size is {}",
                    tokenizer.vocab_size(),
                    cfg.vocab_size
                ),
            });
        }
        let gen = match loc
            .join("generation_config.json")
            .resolve_file(&opts.load.hub)
        {
            Ok(p) => GenerationConfigFile::from_file(&p)?,
            Err(_) => GenerationConfigFile::default(),
        };
        let base = Self::params(&cfg, &gen, opts)?;
        Ok(Self {
            model,
            tokenizer,
            base,
            batch_size: opts.batch_size.max(1),
            allow_truncated: opts.allow_truncated,
            id: ModelId::of_location(&loc),
        })
    }

    fn params(
        cfg: &M2m100Config,
        gen: &GenerationConfigFile,
        opts: &M2m100TranslatorOptions,
    ) -> Result<GenerationParams> {
        let early = gen
            .early_stopping()
            .map_err(|e| TeacherError::BadInput(format!("generation_config.json: {e}")))?;
        let cap = gen
            .max_length
            .unwrap_or(usize::MAX)
            .min(cfg.max_position_embeddings);
        Ok(GenerationParams {
            num_beams: opts.num_beams.or(gen.num_beams).unwrap_or(1).max(1),
            max_length: opts
                .max_length
                .unwrap_or(MaxLength::Source { a: 2.0, b: 10, cap }),
            min_length: gen.min_length.unwrap_or(0),
            length_penalty: opts.length_penalty.or(gen.length_penalty).unwrap_or(1.0),
            early_stopping: early,
            decoder_start_token_id: gen
                .decoder_start_token_id
                .unwrap_or(cfg.decoder_start_token_id),
            forced_bos_token_id: None,
            forced_eos_token_id: gen.forced_eos_token_id,
            eos_token_ids: gen
                .eos_token_id
                .as_ref()
                .map(|e| e.to_vec())
                .unwrap_or_else(|| cfg.eos_ids()),
            pad_token_id: gen.pad_token_id.unwrap_or(cfg.pad_token_id),
            no_repeat_ngram_size: gen.no_repeat_ngram_size.unwrap_or(0),
        })
    }

    pub fn model(&self) -> &M2m100Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &MtTokenizer {
        &self.tokenizer
    }

    /// The generation settings used (the forced BOS is set per call).
    pub fn generation_params(&self) -> &GenerationParams {
        &self.base
    }

    fn lang_id(&self, lang: Lang) -> Result<u32> {
        let id = self.tokenizer.lang_token_id(lang)?;
        if id as usize >= self.model.config().vocab_size {
            return Err(TeacherError::UnsupportedLanguage {
                code: lang.code().into(),
                what: self.id.name.clone(),
                supported: Lang::ALL
                    .into_iter()
                    .filter(|&l| self.supports(l))
                    .map(Lang::code)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(id)
    }

    /// Source segments of one item: the whole text, or its sentences packed greedily into
    /// pieces that fit the model's positions.
    fn segments(&self, text: &str, src: Lang) -> Result<Vec<Vec<u32>>> {
        let max = self.model.config().max_position_embeddings;
        self.tokenizer.encode_source_packed(text, src, max)
    }

    /// Translates token-id sources already made by [`Self::tokenizer`]; one [`Generated`]
    /// per source, in order. Sorted by length and run in chunks of `batch_size`.
    ///
    /// [`Generated`]: super::generate::Generated
    pub fn generate_ids(
        &self,
        sources: &[Vec<u32>],
        tgt: Lang,
    ) -> Result<Vec<super::generate::Generated>> {
        let mut p = self.base.clone();
        p.forced_bos_token_id = Some(self.lang_id(tgt)?);
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sources[i].len()));
        let mut out = vec![None; sources.len()];
        for chunk in order.chunks(self.batch_size) {
            let refs: Vec<&[u32]> = chunk.iter().map(|&i| sources[i].as_slice()).collect();
            for (&i, g) in chunk.iter().zip(generate(&self.model, &refs, &p)?) {
                out[i] = Some(g);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Translator for M2m100Translator {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn supports(&self, lang: Lang) -> bool {
        self.tokenizer
            .lang_token_id(lang)
            .is_ok_and(|id| (id as usize) < self.model.config().vocab_size)
    }

    fn translate(&self, batch: &[&str], src: Lang, tgt: Lang) -> Result<Vec<ItemResult<String>>> {
        self.lang_id(src)?;
        self.lang_id(tgt)?;
        let mut results: Vec<Option<ItemResult<String>>> = Vec::with_capacity(batch.len());
        // (item, segment ids)
        let mut segs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, text) in batch.iter().enumerate() {
            if text.trim().is_empty() {
                results.push(Some(Err(TeacherError::BadInput(format!(
                    "item {i}: empty text"
                )))));
                continue;
            }
            match self.segments(text, src) {
                Ok(s) => {
                    segs.extend(s.into_iter().map(|ids| (i, ids)));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(TeacherError::BadInput(format!("item {i}: {e}"))))),
            }
        }
        let sources: Vec<Vec<u32>> = segs.iter().map(|(_, s)| s.clone()).collect();
        let generated = self.generate_ids(&sources, tgt)?;
        let eos = self.base.eos_token_ids.clone();
        let mut texts: Vec<Vec<String>> = vec![Vec::new(); batch.len()];
        let mut failed: Vec<Option<TeacherError>> = (0..batch.len()).map(|_| None).collect();
        for ((i, _), g) in segs.iter().zip(&generated) {
            if !g.ended && !self.allow_truncated {
                failed[*i].get_or_insert(TeacherError::BadInput(format!(
                    "item {i}: the translation reached the length limit ({} tokens) without \
                     ending",
                    g.tokens.len()
                )));
                continue;
            }
            match self.tokenizer.decode(g.content(true, &eos)) {
                Ok(t) => texts[*i].push(t),
                Err(e) => {
                    failed[*i].get_or_insert(e);
                }
            }
        }
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => r,
                None => match failed[i].take() {
                    Some(e) => Err(e),
                    None => Ok(texts[i].join(" ")),
                },
            })
            .collect())
    }
}
