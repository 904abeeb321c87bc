//! The factory `vaak cascade` uses: the teachers built from `models.<stage>` specs
//! ([`vaak_teachers::spec`] holds the builders, their kinds, options and error messages),
//! plus the dataset codec, EnCodec 24 kHz (`kind: encodec`, weights in the
//! `facebook/encodec_24khz` layout, option `bandwidth` in kbps, default 6).

use std::sync::Arc;

use candle_core::{Device, Tensor};
use vaak_codec::{Codec, Preset};
use vaak_nn::weights::LoadOptions;
use vaak_teachers::spec::{self, options, unknown};
use vaak_teachers::{AudioRef, ItemResult, Lang, ModelId, TeacherError};

use crate::config::ModelSpec;
use crate::teachers::{Asr, SpeakerEncoder, TeacherFactory, TokenCodec, Translator, Tts};

/// The factory the `vaak cascade` command uses.
pub struct BuiltinTeachers;

/// EnCodec's default rate for the dataset: 6 kbps, 8 codebooks.
pub const DEFAULT_ENCODEC_KBPS: f64 = 6.0;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EncodecSpecOptions {
    bandwidth: Option<f64>,
}

impl TeacherFactory for BuiltinTeachers {
    fn asr(&self, spec: &ModelSpec, device: &Device) -> Result<Arc<dyn Asr>, String> {
        spec::build_asr(spec, device)
    }

    fn translator(&self, spec: &ModelSpec, device: &Device) -> Result<Arc<dyn Translator>, String> {
        spec::build_translator(spec, device)
    }

    fn translator_for(
        &self,
        spec: &ModelSpec,
        device: &Device,
        src: Lang,
        tgt: Lang,
    ) -> Result<Arc<dyn Translator>, String> {
        spec::build_translator_for(spec, device, src, tgt)
    }

    fn speaker(
        &self,
        spec: &ModelSpec,
        device: &Device,
    ) -> Result<Arc<dyn SpeakerEncoder>, String> {
        spec::build_speaker(spec, device)
    }

    fn tts(&self, spec: &ModelSpec, device: &Device) -> Result<Arc<dyn Tts>, String> {
        spec::build_tts(spec, device)
    }

    fn codec(&self, spec: &ModelSpec, device: &Device) -> Result<Arc<dyn TokenCodec>, String> {
        match spec.kind.as_str() {
            "encodec" => {
                let o: EncodecSpecOptions = options("codec", spec)?;
                let loc = spec::location("codec", spec)?;
                let c = EncodecTokens::load(
                    &loc,
                    device.clone(),
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
    fn unknown_kinds_and_options_are_refused_with_names() {
        let f = BuiltinTeachers;
        let e = f
            .tts(&spec("festival", None, None), &Device::Cpu)
            .err()
            .unwrap();
        assert!(e.contains("festival") && e.contains("espeak"), "{e}");
        let mut s = spec("openai", None, None);
        s.options.insert("temprature".into(), 0.5.into());
        let e = f.translator(&s, &Device::Cpu).err().unwrap();
        assert!(
            e.contains("models.translator.options") && e.contains("temprature"),
            "{e}"
        );
        let e = f
            .translator(&spec("openai", Some("hf://x/y"), None), &Device::Cpu)
            .err()
            .unwrap();
        assert!(e.contains("must be null"), "{e}");
    }
}
