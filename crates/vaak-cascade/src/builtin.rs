//! The teachers compiled into vaak, built from `models.<stage>` specs.
//!
//! | stage      | kind      | weights                                         | options                      |
//! |------------|-----------|-------------------------------------------------|------------------------------|
//! | asr        | `whisper` | Whisper in the transformers layout (dir/hf://)  | `dtype`, `*_threshold`s      |
//! | translator | `openai`  | none                                            | `OpenAiConfig` keys          |
//! | speaker    | `ecapa`   | `speechbrain/spkrec-ecapa-voxceleb` layout      | `max_batch_frames`           |
//! | tts        | `espeak`  | none                                            | `EspeakConfig` keys          |
//! | codec      | `encodec` | `facebook/encodec_24khz` layout                 | `bandwidth` (kbps, default 6)|
//!
//! Each spec's `revision` pins an `hf://` location that names none (`hf://org/repo` becomes
//! `hf://org/repo@revision`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use vaak_codec::{Codec, Preset};
use vaak_nn::weights::LoadOptions;
use vaak_teachers::asr::{WhisperAsr, WhisperLoadOptions};
use vaak_teachers::mt::{OpenAiConfig, OpenAiTranslator};
use vaak_teachers::speaker::{EcapaOptions, EcapaSpeakerEncoder};
use vaak_teachers::tts::{EspeakConfig, EspeakTts};
use vaak_teachers::{AudioRef, ItemResult, ModelId, TeacherError};

use crate::config::ModelSpec;
use crate::teachers::{Asr, SpeakerEncoder, TeacherFactory, TokenCodec, Translator, Tts};

/// The factory the `vaak cascade` command uses.
pub struct BuiltinTeachers;

/// EnCodec's default rate for the dataset: 6 kbps, 8 codebooks.
pub const DEFAULT_ENCODEC_KBPS: f64 = 6.0;

/// Parses `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let s = s.trim();
    let (kind, idx) = match s.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| format!("device '{s}': '{i}' is not a device index"))?,
        ),
        None => (s, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(idx).map_err(|e| format!("device '{s}': {e}")),
        "metal" => Device::new_metal(idx).map_err(|e| format!("device '{s}': {e}")),
        _ => Err(format!(
            "device '{s}' is not one of cpu, cuda[:N], metal[:N]"
        )),
    }
}

/// The weights location of `spec`, with its revision applied.
fn location(stage: &str, spec: &ModelSpec) -> Result<String, String> {
    let w = spec.weights.as_deref().ok_or_else(|| {
        format!(
            "models.{stage}.weights is required for kind '{}'",
            spec.kind
        )
    })?;
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
fn options<T: DeserializeOwned>(stage: &str, spec: &ModelSpec) -> Result<T, String> {
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

fn unknown<T>(stage: &str, spec: &ModelSpec, known: &str) -> Result<T, String> {
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

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EncodecSpecOptions {
    bandwidth: Option<f64>,
}

impl TeacherFactory for BuiltinTeachers {
    fn asr(&self, spec: &ModelSpec, device: &str) -> Result<Arc<dyn Asr>, String> {
        match spec.kind.as_str() {
            "whisper" => {
                let o: WhisperSpecOptions = options("asr", spec)?;
                let mut opts = WhisperLoadOptions {
                    device: parse_device(device)?,
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
                let w =
                    WhisperAsr::load(&location("asr", spec)?, &opts).map_err(|e| e.to_string())?;
                Ok(Arc::new(w))
            }
            _ => unknown("asr", spec, "whisper"),
        }
    }

    fn translator(&self, spec: &ModelSpec, _device: &str) -> Result<Arc<dyn Translator>, String> {
        match spec.kind.as_str() {
            "openai" => {
                no_weights("translator", spec)?;
                let cfg: OpenAiConfig = options("translator", spec)?;
                let t = OpenAiTranslator::new(cfg).map_err(|e| e.to_string())?;
                Ok(Arc::new(t))
            }
            _ => unknown("translator", spec, "openai"),
        }
    }

    fn speaker(&self, spec: &ModelSpec, device: &str) -> Result<Arc<dyn SpeakerEncoder>, String> {
        match spec.kind.as_str() {
            "ecapa" => {
                let o: EcapaSpecOptions = options("speaker", spec)?;
                let mut opts = EcapaOptions {
                    device: parse_device(device)?,
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

    fn tts(&self, spec: &ModelSpec, _device: &str) -> Result<Arc<dyn Tts>, String> {
        match spec.kind.as_str() {
            "espeak" => {
                no_weights("tts", spec)?;
                let cfg: EspeakConfig = options("tts", spec)?;
                Ok(Arc::new(EspeakTts::new(cfg).map_err(|e| e.to_string())?))
            }
            _ => unknown("tts", spec, "espeak"),
        }
    }

    fn codec(&self, spec: &ModelSpec, device: &str) -> Result<Arc<dyn TokenCodec>, String> {
        match spec.kind.as_str() {
            "encodec" => {
                let o: EncodecSpecOptions = options("codec", spec)?;
                let loc = location("codec", spec)?;
                let c = EncodecTokens::load(
                    &loc,
                    parse_device(device)?,
                    o.bandwidth.unwrap_or(DEFAULT_ENCODEC_KBPS),
                    spec.revision.clone(),
                )
                .map_err(|e| e.to_string())?;
                Ok(Arc::new(c))
            }
            _ => unknown("codec", spec, "encodec"),
        }
    }
}

/// EnCodec 24 kHz behind [`TokenCodec`]. Clips are encoded one at a time: padding a batch
/// would change the last frame of every shorter clip (EnCodec pads the clip end by reflection).
pub struct EncodecTokens {
    codec: Codec,
    device: Device,
    id: ModelId,
}

impl EncodecTokens {
    pub fn load(
        location: &str,
        device: Device,
        kbps: f64,
        revision: Option<String>,
    ) -> vaak_codec::Result<Self> {
        let mut codec = Codec::load(
            location,
            Preset::Encodec24khz,
            &LoadOptions {
                device: device.clone(),
                ..LoadOptions::default()
            },
        )?;
        codec.set_bandwidth(kbps)?;
        Ok(Self {
            codec,
            device,
            id: ModelId {
                name: format!("{location} ({kbps} kbps)"),
                revision,
            },
        })
    }

    fn encode_one(&self, clip: &AudioRef<'_>) -> Result<Vec<Vec<u32>>, TeacherError> {
        if clip.sample_rate != TokenCodec::sample_rate(self) {
            return Err(TeacherError::BadInput(format!(
                "codec input at {} Hz, expected {} Hz",
                clip.sample_rate,
                self.codec.sample_rate()
            )));
        }
        let n = clip.samples.len();
        let x = Tensor::from_slice(clip.samples, (1, 1, n), &self.device)?;
        let codes = self
            .codec
            .encode(&x)
            .map_err(|e| TeacherError::Msg(e.to_string()))?;
        Ok(codes.squeeze(0)?.to_vec2::<u32>()?)
    }
}

impl TokenCodec for EncodecTokens {
    fn model_id(&self) -> ModelId {
        self.id.clone()
    }

    fn num_codebooks(&self) -> usize {
        self.codec.num_codebooks()
    }

    fn sample_rate(&self) -> u32 {
        // Codec rates are small (24 kHz); the codec API counts in usize.
        self.codec.sample_rate() as u32
    }

    fn encode(
        &self,
        batch: &[AudioRef<'_>],
    ) -> vaak_teachers::Result<Vec<ItemResult<Vec<Vec<u32>>>>> {
        Ok(batch.iter().map(|c| self.encode_one(c)).collect())
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
    fn devices_parse_and_bad_ones_are_named() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        let e = parse_device("tpu:0").err().unwrap();
        assert!(e.contains("tpu:0"), "{e}");
        let e = parse_device("cuda:x").err().unwrap();
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn unknown_kinds_and_options_are_refused_with_names() {
        let f = BuiltinTeachers;
        let e = f.tts(&spec("festival", None, None), "cpu").err().unwrap();
        assert!(e.contains("festival") && e.contains("espeak"), "{e}");
        let mut s = spec("openai", None, None);
        s.options.insert("temprature".into(), 0.5.into());
        let e = f.translator(&s, "cpu").err().unwrap();
        assert!(
            e.contains("models.translator.options") && e.contains("temprature"),
            "{e}"
        );
        let e = f
            .translator(&spec("openai", Some("hf://x/y"), None), "cpu")
            .err()
            .unwrap();
        assert!(e.contains("must be null"), "{e}");
    }
}
