//! The cascade's ASR teacher: Whisper, loaded as published.
//!
//! [`WhisperAsr::load`] takes a local directory or `hf://org/repo[@rev]` holding `config.json`,
//! `tokenizer.json`, the weights (`model.safetensors`, or whatever [`vaak_nn::weights`] finds:
//! shards, `pytorch_model.bin`) and, optionally, `generation_config.json`. Any Whisper size
//! loads: 80 mel bins (tiny ... large-v2) or 128 (large-v3), with any feed-forward width.
//!
//! Per clip: resample to 16 kHz ([`vaak_audio::resample`]), zero-pad to the model's window
//! (`2 * max_source_positions` frames = 30 s for published models), log-mel
//! ([`vaak_audio::features::WhisperMel`], parity-tested against transformers' feature
//! extractor), then one batched encoder pass and batched greedy decoding ([`decode`]).
//!
//! Clips longer than the window are a per-item error rather than being chunked: the cascade's
//! manifests hold utterances (VAD-cut upstream), and sequential 30 s chunking without
//! timestamps would cut words at chunk edges and silently lower transcript quality.
//! Empty clips, non-finite samples and a zero sample rate are per-item errors too.
//!
//! Quality flags on each [`Transcript`] (thresholds in [`QualityThresholds`], Whisper's
//! defaults): `no_speech` when the no-speech probability is above 0.6 and the average log-prob
//! below -1; `hallucination` when the zlib compression ratio of the text is above 2.4;
//! `max_length` when `max_new_tokens` (or the model's position limit) cut the text;
//! `low_logprob` when the average log-prob is below -1.

pub mod config;
pub mod decode;
pub mod model;
pub mod tokenizer;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use vaak_audio::features::{WhisperMel, WHISPER_HOP_LENGTH, WHISPER_SAMPLE_RATE};
use vaak_nn::weights::{HubOptions, WeightLocation};

pub use config::{GenerationConfig, SuppressLists, WhisperConfig};
pub use decode::{compression_ratio, Decoded, LanguagePrompt};
pub use model::{DecoderCache, WhisperModel};
pub use tokenizer::WhisperTokenizer;

use crate::error::{Result, TeacherError};
use crate::seq2seq::model::{checkpoint, required_file};
use crate::{Asr, AsrOptions, AudioRef, ItemResult, ModelId, Transcript};

/// Thresholds behind the quality flags (OpenAI's `transcribe` defaults).
#[derive(Clone, Copy, Debug)]
pub struct QualityThresholds {
    pub no_speech_prob: f32,
    pub logprob: f32,
    pub compression_ratio: f32,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            no_speech_prob: 0.6,
            logprob: -1.0,
            compression_ratio: 2.4,
        }
    }
}

/// How to load Whisper.
#[derive(Clone, Debug)]
pub struct WhisperLoadOptions {
    pub device: Device,
    /// Compute dtype; the published f16 weights are converted to it (F32 on the CPU).
    pub dtype: DType,
    pub hub: HubOptions,
    pub thresholds: QualityThresholds,
}

impl Default for WhisperLoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            hub: HubOptions::default(),
            thresholds: QualityThresholds::default(),
        }
    }
}

/// The quality flags of one transcript (see the module doc).
pub fn quality_flags(
    no_speech_prob: f32,
    avg_logprob: f32,
    compression_ratio: f32,
    ended: bool,
    th: &QualityThresholds,
) -> Vec<String> {
    let mut flags = Vec::new();
    if no_speech_prob > th.no_speech_prob && avg_logprob < th.logprob {
        flags.push("no_speech".to_string());
    }
    if compression_ratio > th.compression_ratio {
        flags.push("hallucination".to_string());
    }
    if !ended {
        flags.push("max_length".to_string());
    }
    if avg_logprob < th.logprob {
        flags.push("low_logprob".to_string());
    }
    flags
}

/// Whisper behind the [`Asr`] trait.
pub struct WhisperAsr {
    model: WhisperModel,
    tokenizer: WhisperTokenizer,
    suppress: SuppressLists,
    mel: WhisperMel,
    thresholds: QualityThresholds,
    id: ModelId,
}

/// A required file next to the weights; a missing one is a config error naming it.
fn required(loc: &WeightLocation, name: &str, hub: &HubOptions) -> Result<PathBuf> {
    required_file(loc, name, hub, "Whisper")
}

impl WhisperAsr {
    /// Loads from a local directory or `hf://org/repo[@revision][/subdir]`.
    pub fn load(location: &str, opts: &WhisperLoadOptions) -> Result<Self> {
        let loc = WeightLocation::parse(location)?;
        let cfg_path = required(&loc, "config.json", &opts.hub)?;
        let cfg = WhisperConfig::from_file(&cfg_path)?;
        let tokenizer = WhisperTokenizer::from_file(&required(&loc, "tokenizer.json", &opts.hub)?)?;
        let gen = match loc.join("generation_config.json").resolve_file(&opts.hub) {
            Ok(p) => Some(GenerationConfig::from_file(&p)?),
            Err(vaak_nn::Error::MissingFile { .. }) => None,
            Err(e) => {
                tracing::warn!("no generation_config.json at {location} ({e}); using config.json");
                None
            }
        };
        let suppress = SuppressLists::merge(&cfg, gen.as_ref());
        let vocab = tokenizer.inner().get_vocab_size(true);
        for (what, id) in [
            ("<|startoftranscript|>", tokenizer.sot),
            ("<|endoftext|>", tokenizer.eot),
            ("<|notimestamps|>", tokenizer.no_timestamps),
        ] {
            if id as usize >= cfg.vocab_size {
                return Err(TeacherError::Config {
                    path: cfg_path.clone(),
                    reason: format!(
                        "vocab_size {} does not hold {what} (id {id}); the tokenizer has {vocab} \
                         tokens",
                        cfg.vocab_size
                    ),
                });
            }
        }
        let vb = checkpoint(&loc, &opts.hub, opts.dtype, &opts.device)?;
        let model = WhisperModel::load(&cfg, vb)?;
        let mel = WhisperMel::new(cfg.num_mel_bins)?;
        Ok(Self {
            model,
            tokenizer,
            suppress,
            mel,
            thresholds: opts.thresholds,
            id: ModelId::of_location(&loc),
        })
    }

    pub fn model(&self) -> &WhisperModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &WhisperTokenizer {
        &self.tokenizer
    }

    pub fn suppress_lists(&self) -> &SuppressLists {
        &self.suppress
    }

    /// Samples in the model's input window at 16 kHz.
    pub fn window_samples(&self) -> usize {
        self.model.config().n_frames() * WHISPER_HOP_LENGTH
    }

    /// Log-mel features `[n_mels, frames]` (row-major) of one clip, padded to the window.
    pub fn features(&self, clip: &AudioRef<'_>) -> Result<Vec<f32>> {
        if clip.samples.is_empty() {
            return Err(TeacherError::BadInput("empty clip".into()));
        }
        if clip.sample_rate == 0 {
            return Err(TeacherError::BadInput("sample rate 0".into()));
        }
        if let Some(i) = clip.samples.iter().position(|x| !x.is_finite()) {
            return Err(TeacherError::BadInput(format!(
                "non-finite sample at index {i}"
            )));
        }
        let resampled;
        let samples = if clip.sample_rate == WHISPER_SAMPLE_RATE {
            clip.samples
        } else {
            resampled = vaak_audio::resample::resample(
                clip.samples,
                clip.sample_rate,
                WHISPER_SAMPLE_RATE,
            )?;
            &resampled[..]
        };
        let window = self.window_samples();
        if samples.len() > window {
            return Err(TeacherError::BadInput(format!(
                "clip of {:.2} s is longer than Whisper's {:.0} s window; split it first",
                clip.duration_s(),
                window as f64 / WHISPER_SAMPLE_RATE as f64
            )));
        }
        let mut padded = vec![0.0f32; window];
        padded[..samples.len()].copy_from_slice(samples);
        Ok(self.mel.compute(&padded, false)?.data)
    }

    /// Encodes feature rows (each from [`Self::features`]) as one batch.
    pub fn encode(&self, feats: &[Vec<f32>]) -> Result<Tensor> {
        let cfg = self.model.config();
        let flat: Vec<f32> = feats.iter().flatten().copied().collect();
        let mel = Tensor::from_vec(
            flat,
            (feats.len(), cfg.num_mel_bins, cfg.n_frames()),
            self.model.device(),
        )?;
        self.model.encode(&mel)
    }

    /// The language prompt for `language` (None: detect per clip).
    pub fn language_prompt(&self, language: Option<crate::Lang>) -> Result<LanguagePrompt> {
        match language {
            Some(l) => Ok(match self.tokenizer.check_language(l)? {
                Some(id) => LanguagePrompt::Forced(id),
                None => LanguagePrompt::None,
            }),
            None if self.tokenizer.is_multilingual() => Ok(LanguagePrompt::Detect),
            None => Ok(LanguagePrompt::None),
        }
    }

    /// Greedy decoding of an encoded batch.
    pub fn decode(
        &self,
        encoded: &Tensor,
        language: LanguagePrompt,
        max_new_tokens: usize,
    ) -> Result<Vec<Decoded>> {
        decode::greedy(
            &self.model,
            &self.tokenizer,
            &self.suppress,
            encoded,
            language,
            max_new_tokens,
        )
    }

    fn transcript(&self, d: &Decoded) -> Result<Transcript> {
        let text = self.tokenizer.decode(&d.tokens)?;
        let language = d
            .language_token
            .and_then(|id| self.tokenizer.language_of(id))
            .unwrap_or("en")
            .to_string();
        let ratio = compression_ratio(&text);
        let flags = quality_flags(
            d.no_speech_prob,
            d.avg_logprob,
            ratio,
            d.ended,
            &self.thresholds,
        );
        Ok(Transcript {
            text,
            language,
            no_speech_prob: d.no_speech_prob,
            avg_logprob: d.avg_logprob,
            compression_ratio: ratio,
            flags,
        })
    }
}

impl Asr for WhisperAsr {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn transcribe(
        &self,
        batch: &[AudioRef<'_>],
        opts: &AsrOptions,
    ) -> Result<Vec<ItemResult<Transcript>>> {
        if opts.max_new_tokens == 0 {
            return Err(TeacherError::BadInput(
                "max_new_tokens must be positive".into(),
            ));
        }
        let language = self.language_prompt(opts.language)?;
        let mut results: Vec<Option<ItemResult<Transcript>>> = Vec::with_capacity(batch.len());
        let mut feats = Vec::new();
        let mut rows = Vec::new();
        for (i, clip) in batch.iter().enumerate() {
            match self.features(clip) {
                Ok(f) => {
                    feats.push(f);
                    rows.push(i);
                    results.push(None);
                }
                Err(e) => {
                    let why = match e {
                        TeacherError::BadInput(m) => m,
                        other => other.to_string(),
                    };
                    results.push(Some(Err(TeacherError::BadInput(format!(
                        "batch item {i}: {why}"
                    )))))
                }
            }
        }
        if !feats.is_empty() {
            let encoded = self.encode(&feats)?;
            drop(feats);
            let decoded = self.decode(&encoded, language, opts.max_new_tokens)?;
            for (row, d) in rows.into_iter().zip(decoded.iter()) {
                results[row] = Some(self.transcript(d));
            }
        }
        Ok(results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| Err(TeacherError::Msg(format!("batch item {i} not decoded"))))
            })
            .collect())
    }
}
