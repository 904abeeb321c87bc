//! The teachers compiled into vaak, built from `models.<stage>` specs ([`ModelSpec`]): the
//! cascade's factory and the server's pipeline mode both build them here.
//!
//! | stage      | kind               | weights                                        | options                                    |
//! |------------|--------------------|------------------------------------------------|--------------------------------------------|
//! | asr        | `whisper`          | Whisper in the transformers layout (dir/hf://) | `dtype`, `*_threshold`s                    |
//! | translator | `openai`           | none                                           | `OpenAiConfig` keys                        |
//! | translator | `m2m100`           | `facebook/m2m100_418M` layout (+ tokenizer)    | `num_beams`, `length_penalty`, `max_length`, `batch_size`, `allow_truncated`, `dtype` |
//! | translator | `nllb`             | `facebook/nllb-200-distilled-600M` layout      | as `m2m100`                                |
//! | translator | `marian`           | `Helsinki-NLP/opus-mt-xx-yy` layout            | `max_length`, `batch_size`, `dtype`, `pair`|
//! | speaker    | `ecapa`            | `speechbrain/spkrec-ecapa-voxceleb` layout     | `max_batch_frames`                         |
//! | tts        | `espeak`           | none                                           | `EspeakConfig` keys                        |
//! | tts        | `espeak+openvoice` | OpenVoice V2 converter (`config.json` + `checkpoint.pth`) | `tau`, `seed`, `output_rate`, `min_reference_s`, `silence_rms`, `calibration_texts`, `base` (`EspeakConfig`) |
//!
//! Each spec's `revision` pins an `hf://` location that names none (`hf://org/repo` becomes
//! `hf://org/repo@revision`). Unknown option keys are refused by name.
//!
//! Languages: the config's short codes (`en`, `ru`, `hi`, `te`) map to each model's own
//! spelling (M2M-100 `__ru__`, NLLB `rus_Cyrl`); a Marian checkpoint serves the one pair its
//! `tokenizer_config.json` (or `opus-mt-xx-yy` name, or the `pair` option) names. A run whose
//! direction the translator cannot serve fails while the teachers are built
//! ([`build_translator_for`]), naming the codes it does support.

use std::sync::Arc;

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::asr::{WhisperAsr, WhisperLoadOptions};
use crate::mt::generate::MaxLength;
use crate::mt::local::{M2m100Translator, M2m100TranslatorOptions};
use crate::mt::m2m100::M2m100LoadOptions;
use crate::mt::marian::{MarianLoadOptions, MarianTranslator};
use crate::mt::tokenizer::TokenizerKind;
use crate::mt::{OpenAiConfig, OpenAiTranslator};
use crate::speaker::{EcapaOptions, EcapaSpeakerEncoder};
use crate::tts::{EspeakConfig, EspeakTts, VoiceConvertingTts, VoiceConvertingTtsConfig};
use crate::vc::{ConverterOptions, ToneColorConverter};
use crate::{Asr, Lang, SpeakerEncoder, Translator, Tts};

/// One teacher: its implementation `kind`, where its weights are, and kind-specific options
/// (free-form; the factory that builds the kind validates them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// Implementation name, e.g. `whisper`, `m2m100`, `openai`, `ecapa`, `espeak`, `encodec`.
    pub kind: String,
    /// Local directory/file or `hf://org/repo[@rev]/path`; `null` for kinds without weights.
    pub weights: Option<String>,
    /// Hub revision pinned for reproducibility.
    pub revision: Option<String>,
    /// Kind-specific settings (e.g. `bandwidth: 6.0` for EnCodec, `base_url` for `openai`).
    pub options: serde_yaml::Mapping,
}

impl ModelSpec {
    pub fn new(kind: &str, weights: Option<&str>) -> Self {
        Self {
            kind: kind.to_string(),
            weights: weights.map(str::to_string),
            revision: None,
            options: serde_yaml::Mapping::new(),
        }
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self::new("", None)
    }
}

/// The translator kinds built in, for error messages.
const TRANSLATOR_KINDS: &str = "openai, m2m100, nllb, marian";

/// The weights location of `spec` (`models.<stage>.weights`), with its revision applied.
pub fn location(stage: &str, spec: &ModelSpec) -> Result<String, String> {
    weights_location(&format!("models.{stage}"), spec)
}

/// The weights location of `spec` with its revision applied (`hf://org/repo` becomes
/// `hf://org/repo@revision`); `key` names the spec in the error when weights are missing.
pub fn weights_location(key: &str, spec: &ModelSpec) -> Result<String, String> {
    let w = spec
        .weights
        .as_deref()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| format!("{key}.weights is required for kind '{}'", spec.kind))?;
    Ok(match (&spec.revision, w.strip_prefix("hf://")) {
        (Some(rev), Some(rest)) => {
            let mut parts = rest.splitn(3, '/');
            let (org, name, tail) = (parts.next(), parts.next(), parts.next());
            match (org, name) {
                (Some(org), Some(name)) if !name.contains('@') => {
                    let tail = tail.map(|t| format!("/{t}")).unwrap_or_default();
                    format!("hf://{org}/{name}@{rev}{tail}")
                }
                _ => w.to_string(),
            }
        }
        _ => w.to_string(),
    })
}

/// Deserializes `spec.options` into a teacher's config struct (which rejects unknown keys).
pub fn options<T: DeserializeOwned>(stage: &str, spec: &ModelSpec) -> Result<T, String> {
    serde_yaml::from_value(serde_yaml::Value::Mapping(spec.options.clone()))
        .map_err(|e| format!("models.{stage}.options: {e}"))
}

fn no_weights(stage: &str, spec: &ModelSpec) -> Result<(), String> {
    match &spec.weights {
        None => Ok(()),
        Some(w) => Err(format!(
            "models.{stage}.weights must be null for kind '{}' (got '{w}')",
            spec.kind
        )),
    }
}

pub fn unknown<T>(stage: &str, spec: &ModelSpec, known: &str) -> Result<T, String> {
    Err(format!(
        "models.{stage}.kind '{}' is not built into this vaak binary; known: {known}",
        spec.kind
    ))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhisperSpecOptions {
    /// Compute dtype: f32 (default; right for the CPU), f16 or bf16.
    dtype: Option<String>,
    no_speech_threshold: Option<f32>,
    logprob_threshold: Option<f32>,
    compression_ratio_threshold: Option<f32>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EcapaSpecOptions {
    max_batch_frames: Option<usize>,
}

/// Options of the `m2m100` and `nllb` translator kinds; unset ones come from the checkpoint's
/// `generation_config.json`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct M2m100SpecOptions {
    num_beams: Option<usize>,
    length_penalty: Option<f32>,
    /// A fixed decoder length limit (tokens, with the start token).
    max_length: Option<usize>,
    batch_size: Option<usize>,
    allow_truncated: Option<bool>,
    dtype: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MarianSpecOptions {
    max_length: Option<usize>,
    batch_size: Option<usize>,
    dtype: Option<String>,
    /// `ru-en` or `ruen`, for checkpoints whose tokenizer config and name say no pair.
    pair: Option<String>,
}

/// Options of `espeak+openvoice`: the converter's settings plus the base voice (`base`).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenVoiceSpecOptions {
    tau: Option<f32>,
    seed: Option<u64>,
    output_rate: Option<u32>,
    min_reference_s: Option<f64>,
    silence_rms: Option<f32>,
    /// Per-language sentence the base voice speaks to measure its own tone colour.
    calibration_texts: Option<std::collections::HashMap<Lang, String>>,
    base: Option<EspeakConfig>,
}

fn parse_dtype(stage: &str, d: Option<&str>) -> Result<DType, String> {
    match d {
        None | Some("f32") => Ok(DType::F32),
        Some("f16") => Ok(DType::F16),
        Some("bf16") => Ok(DType::BF16),
        Some(d) => Err(format!(
            "models.{stage}.options.dtype '{d}': use f32, f16 or bf16"
        )),
    }
}

fn at_least(stage: &str, key: &str, v: Option<usize>, min: usize) -> Result<(), String> {
    match v {
        Some(n) if n < min => Err(format!(
            "models.{stage}.options.{key} is {n}; it must be at least {min}"
        )),
        _ => Ok(()),
    }
}

/// `ru-en` / `ruen` / `ru_en` as a language pair.
fn parse_pair(s: &str) -> Result<(Lang, Lang), String> {
    let t = s.trim();
    let (a, b) = match t.split_once(['-', '_']) {
        Some(p) => p,
        None if t.len() == 4 && t.is_ascii() => t.split_at(2),
        None => ("", ""),
    };
    let bad = || {
        format!(
            "models.translator.options.pair '{s}': expected e.g. 'ru-en' (languages: {})",
            Lang::supported_list()
        )
    };
    let a: Lang = a.parse().map_err(|_| bad())?;
    let b: Lang = b.parse().map_err(|_| bad())?;
    Ok((a, b))
}

/// How the `m2m100` / `nllb` kind spells `lang`.
fn model_code(kind: &str, lang: Lang) -> String {
    match kind {
        "nllb" => lang.nllb_code().to_string(),
        _ => format!("__{}__", lang.code()),
    }
}

fn load_m2m100(spec: &ModelSpec, device: &Device) -> Result<M2m100Translator, String> {
    let o: M2m100SpecOptions = options("translator", spec)?;
    at_least("translator", "num_beams", o.num_beams, 1)?;
    at_least("translator", "batch_size", o.batch_size, 1)?;
    at_least("translator", "max_length", o.max_length, 2)?;
    if let Some(lp) = o.length_penalty.filter(|v| !v.is_finite()) {
        return Err(format!(
            "models.translator.options.length_penalty {lp} must be finite"
        ));
    }
    let defaults = M2m100TranslatorOptions::default();
    let opts = M2m100TranslatorOptions {
        load: M2m100LoadOptions {
            device: device.clone(),
            dtype: parse_dtype("translator", o.dtype.as_deref())?,
            ..M2m100LoadOptions::default()
        },
        num_beams: o.num_beams,
        length_penalty: o.length_penalty,
        max_length: o.max_length.map(MaxLength::Fixed),
        batch_size: o.batch_size.unwrap_or(defaults.batch_size),
        allow_truncated: o.allow_truncated.unwrap_or(defaults.allow_truncated),
    };
    let loc = location("translator", spec)?;
    let t = M2m100Translator::load(&loc, &opts).map_err(|e| e.to_string())?;
    let want = if spec.kind == "nllb" {
        TokenizerKind::Nllb
    } else {
        TokenizerKind::M2m100
    };
    let got = t.tokenizer().kind();
    if got != want {
        let other = if got == TokenizerKind::Nllb {
            "nllb"
        } else {
            "m2m100"
        };
        return Err(format!(
            "{loc} holds a {} tokenizer; use kind '{other}'",
            got.name()
        ));
    }
    Ok(t)
}

fn load_marian(spec: &ModelSpec, device: &Device) -> Result<MarianTranslator, String> {
    let o: MarianSpecOptions = options("translator", spec)?;
    at_least("translator", "batch_size", o.batch_size, 1)?;
    at_least("translator", "max_length", o.max_length, 2)?;
    let defaults = MarianLoadOptions::default();
    let opts = MarianLoadOptions {
        device: device.clone(),
        dtype: parse_dtype("translator", o.dtype.as_deref())?,
        pair: o.pair.as_deref().map(parse_pair).transpose()?,
        max_length: o.max_length,
        max_batch: o.batch_size.unwrap_or(defaults.max_batch),
        ..defaults
    };
    MarianTranslator::load(&location("translator", spec)?, &opts).map_err(|e| e.to_string())
}

/// Refuses `lang` when `t` cannot translate it, naming what it can in both spellings.
fn require_lang(kind: &str, t: &dyn Translator, lang: Lang) -> Result<(), String> {
    if t.supports(lang) {
        return Ok(());
    }
    let ok: Vec<String> = Lang::ALL
        .into_iter()
        .filter(|&l| t.supports(l))
        .map(|l| format!("{} ({})", l.code(), model_code(kind, l)))
        .collect();
    Err(format!(
        "{} has no language token for '{lang}' ({}); supported: {}",
        t.model_id().name,
        model_code(kind, lang),
        if ok.is_empty() {
            "none of vaak's languages".to_string()
        } else {
            ok.join(", ")
        }
    ))
}

fn espeak_openvoice(
    spec: &ModelSpec,
    device: &Device,
) -> std::result::Result<Arc<dyn Tts>, String> {
    let o: OpenVoiceSpecOptions = options("tts", spec)?;
    let base = EspeakTts::new(o.base.unwrap_or_default())
        .map_err(|e| format!("models.tts.options.base: {e}"))?;
    let converter = ToneColorConverter::load(
        &location("tts", spec)?,
        &ConverterOptions {
            device: device.clone(),
            ..ConverterOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut cfg = VoiceConvertingTtsConfig::default();
    cfg.tau = o.tau.unwrap_or(cfg.tau);
    cfg.seed = o.seed.unwrap_or(cfg.seed);
    cfg.output_rate = o.output_rate.unwrap_or(cfg.output_rate);
    cfg.min_reference_s = o.min_reference_s.unwrap_or(cfg.min_reference_s);
    cfg.silence_rms = o.silence_rms.unwrap_or(cfg.silence_rms);
    cfg.calibration_texts
        .extend(o.calibration_texts.unwrap_or_default());
    let t = VoiceConvertingTts::new(base, Arc::new(converter), cfg)
        .map_err(|e| format!("models.tts.options: {e}"))?;
    Ok(Arc::new(t))
}

/// The load options a `whisper` spec asks for (`options`: `dtype` f32 | f16 | bf16 and the
/// fallback thresholds), on `device`.
pub fn whisper_load_options(
    spec: &ModelSpec,
    device: &Device,
) -> std::result::Result<WhisperLoadOptions, String> {
    let o: WhisperSpecOptions = options("asr", spec)?;
    let mut opts = WhisperLoadOptions {
        device: device.clone(),
        ..WhisperLoadOptions::default()
    };
    if let Some(d) = o.dtype.as_deref() {
        opts.dtype = match d {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            _ => {
                return Err(format!(
                    "models.asr.options.dtype '{d}': use f32, f16 or bf16"
                ))
            }
        };
    }
    let th = &mut opts.thresholds;
    th.no_speech_prob = o.no_speech_threshold.unwrap_or(th.no_speech_prob);
    th.logprob = o.logprob_threshold.unwrap_or(th.logprob);
    th.compression_ratio = o
        .compression_ratio_threshold
        .unwrap_or(th.compression_ratio);
    Ok(opts)
}

/// The ASR teacher `spec` names, on `device`.
pub fn build_asr(spec: &ModelSpec, device: &Device) -> std::result::Result<Arc<dyn Asr>, String> {
    match spec.kind.as_str() {
        "whisper" => {
            let opts = whisper_load_options(spec, device)?;
            let w = WhisperAsr::load(&location("asr", spec)?, &opts).map_err(|e| e.to_string())?;
            Ok(Arc::new(w))
        }
        _ => unknown("asr", spec, "whisper"),
    }
}

pub fn build_translator(
    spec: &ModelSpec,
    device: &Device,
) -> std::result::Result<Arc<dyn Translator>, String> {
    match spec.kind.as_str() {
        "openai" => {
            no_weights("translator", spec)?;
            let cfg: OpenAiConfig = options("translator", spec)?;
            let t = OpenAiTranslator::new(cfg).map_err(|e| e.to_string())?;
            Ok(Arc::new(t))
        }
        "m2m100" | "nllb" => Ok(Arc::new(load_m2m100(spec, device)?)),
        "marian" => Ok(Arc::new(load_marian(spec, device)?)),
        _ => unknown("translator", spec, TRANSLATOR_KINDS),
    }
}

pub fn build_translator_for(
    spec: &ModelSpec,
    device: &Device,
    src: Lang,
    tgt: Lang,
) -> std::result::Result<Arc<dyn Translator>, String> {
    match spec.kind.as_str() {
        "m2m100" | "nllb" => {
            let t = load_m2m100(spec, device)?;
            for lang in [src, tgt] {
                require_lang(&spec.kind, &t, lang)?;
            }
            Ok(Arc::new(t))
        }
        "marian" => {
            let t = load_marian(spec, device)?;
            let (a, b) = t.pair();
            if (a, b) != (src, tgt) {
                return Err(format!(
                    "the Marian checkpoint {} translates {a}->{b} only (one direction per \
                     checkpoint), but the run's direction is {src}->{tgt}; use an \
                     opus-mt-{src}-{tgt} checkpoint",
                    t.model_id().name
                ));
            }
            Ok(Arc::new(t))
        }
        _ => build_translator(spec, device),
    }
}

pub fn build_speaker(
    spec: &ModelSpec,
    device: &Device,
) -> std::result::Result<Arc<dyn SpeakerEncoder>, String> {
    match spec.kind.as_str() {
        "ecapa" => {
            let o: EcapaSpecOptions = options("speaker", spec)?;
            let mut opts = EcapaOptions {
                device: device.clone(),
                ..EcapaOptions::default()
            };
            if let Some(n) = o.max_batch_frames {
                opts.max_batch_frames = n;
            }
            let e = EcapaSpeakerEncoder::load(&location("speaker", spec)?, opts)
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(e))
        }
        _ => unknown("speaker", spec, "ecapa"),
    }
}

pub fn build_tts(spec: &ModelSpec, device: &Device) -> std::result::Result<Arc<dyn Tts>, String> {
    match spec.kind.as_str() {
        "espeak" => {
            no_weights("tts", spec)?;
            let cfg: EspeakConfig = options("tts", spec)?;
            Ok(Arc::new(EspeakTts::new(cfg).map_err(|e| e.to_string())?))
        }
        "espeak+openvoice" => espeak_openvoice(spec, device),
        _ => unknown("tts", spec, "espeak, espeak+openvoice"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, weights: Option<&str>, rev: Option<&str>) -> ModelSpec {
        ModelSpec {
            kind: kind.into(),
            weights: weights.map(Into::into),
            revision: rev.map(Into::into),
            options: serde_yaml::Mapping::new(),
        }
    }

    #[test]
    fn revision_is_applied_to_hub_locations_only_once() {
        let s = spec("encodec", Some("hf://facebook/encodec_24khz"), Some("abc"));
        assert_eq!(
            location("codec", &s).unwrap(),
            "hf://facebook/encodec_24khz@abc"
        );
        let s = spec("x", Some("hf://org/repo/sub/file.ckpt"), Some("v2"));
        assert_eq!(location("x", &s).unwrap(), "hf://org/repo@v2/sub/file.ckpt");
        let s = spec("x", Some("hf://org/repo@pinned"), Some("v2"));
        assert_eq!(location("x", &s).unwrap(), "hf://org/repo@pinned");
        let s = spec("x", Some("/models/local"), Some("v2"));
        assert_eq!(location("x", &s).unwrap(), "/models/local");
        assert!(location("x", &spec("x", None, None)).is_err());
    }

    #[test]
    fn a_missing_location_names_the_key() {
        let e = weights_location("pipeline.asr", &spec("whisper", Some(""), None)).unwrap_err();
        assert!(
            e.contains("pipeline.asr.weights") && e.contains("whisper"),
            "{e}"
        );
    }
}
