//! The teachers a run uses, and how they are built from the config.
//!
//! The cascade only sees traits: [`Asr`], [`Translator`], [`SpeakerEncoder`], [`Tts`] from
//! `vaak-teachers`, plus [`TokenCodec`] defined here for the codec-token stage (EnCodec plugs in
//! behind it). A [`TeacherFactory`] turns each `models.<stage>` spec into an implementation; the
//! CLI passes the factory of the teachers compiled into the binary, tests pass test doubles.

use std::sync::Arc;

use candle_core::Device;

pub use vaak_teachers::{Asr, SpeakerEncoder, Translator, Tts};
use vaak_teachers::{AudioRef, ItemResult, Lang, ModelId};

use crate::config::{Config, ModelSpec};
use crate::error::{CascadeError, Result};

/// Audio to discrete codec tokens, batch first.
pub trait TokenCodec: Send + Sync {
    fn model_id(&self) -> ModelId;
    /// Rows of each item's token matrix.
    fn num_codebooks(&self) -> usize;
    /// The rate `encode` expects its input at (24 kHz for EnCodec 24 kHz).
    fn sample_rate(&self) -> u32;
    /// One `[num_codebooks][frames]` matrix per clip.
    fn encode(
        &self,
        batch: &[AudioRef<'_>],
    ) -> vaak_teachers::Result<Vec<ItemResult<Vec<Vec<u32>>>>>;
}

/// The five teachers of a run.
#[derive(Clone)]
pub struct Teachers {
    pub asr: Arc<dyn Asr>,
    pub translator: Arc<dyn Translator>,
    pub speaker: Arc<dyn SpeakerEncoder>,
    pub tts: Arc<dyn Tts>,
    pub codec: Arc<dyn TokenCodec>,
}

/// Builds teachers from `models.<stage>` specs on a device, parsed once from `compute.device`
/// by [`Teachers::build`]. An error is a message; the caller adds which stage it was.
pub trait TeacherFactory {
    fn asr(&self, spec: &ModelSpec, device: &Device) -> std::result::Result<Arc<dyn Asr>, String>;
    fn translator(
        &self,
        spec: &ModelSpec,
        device: &Device,
    ) -> std::result::Result<Arc<dyn Translator>, String>;
    fn speaker(
        &self,
        spec: &ModelSpec,
        device: &Device,
    ) -> std::result::Result<Arc<dyn SpeakerEncoder>, String>;
    /// The translator of a run in `src -> tgt`. Factories whose models serve fixed pairs
    /// (a Marian checkpoint translates one direction) override this to refuse a wrong
    /// direction while building; the default is [`TeacherFactory::translator`].
    fn translator_for(
        &self,
        spec: &ModelSpec,
        device: &Device,
        src: Lang,
        tgt: Lang,
    ) -> std::result::Result<Arc<dyn Translator>, String> {
        let _ = (src, tgt);
        self.translator(spec, device)
    }
    fn tts(&self, spec: &ModelSpec, device: &Device) -> std::result::Result<Arc<dyn Tts>, String>;
    fn codec(
        &self,
        spec: &ModelSpec,
        device: &Device,
    ) -> std::result::Result<Arc<dyn TokenCodec>, String>;
}

impl Teachers {
    /// Builds every teacher the config names and checks they cover the direction, so a
    /// misconfigured run fails before it touches any audio.
    pub fn build(cfg: &Config, factory: &dyn TeacherFactory) -> Result<Self> {
        // Parsed here, once, not in the CLI: the device may come from the YAML config, which
        // only the library resolves, and a dry run must not open a GPU.
        let device = vaak_nn::parse_device(&cfg.compute.device)?;
        let dev = &device;
        let m = &cfg.models;
        let err = |stage: &str, spec: &ModelSpec| {
            let stage = stage.to_string();
            let kind = spec.kind.clone();
            move |reason: String| CascadeError::Teacher {
                stage: stage.clone(),
                reason: format!("kind '{kind}': {reason}"),
            }
        };
        let tr_spec = cfg.translator_spec();
        let (src, tgt) = (cfg.pipeline.direction.src, cfg.pipeline.direction.tgt);
        let t = Self {
            asr: factory.asr(&m.asr, dev).map_err(err("asr", &m.asr))?,
            translator: factory
                .translator_for(&tr_spec, dev, src, tgt)
                .map_err(err("translator", &tr_spec))?,
            speaker: factory
                .speaker(&m.speaker, dev)
                .map_err(err("speaker", &m.speaker))?,
            tts: factory.tts(&m.tts, dev).map_err(err("tts", &m.tts))?,
            codec: factory
                .codec(&m.codec, dev)
                .map_err(err("codec", &m.codec))?,
        };
        t.check_direction(src, tgt)?;
        Ok(t)
    }

    /// Fails when the translator or TTS cannot serve `src -> tgt`.
    pub fn check_direction(&self, src: Lang, tgt: Lang) -> Result<()> {
        let supports = |stage: &str, l: Lang| match stage {
            "tts" => self.tts.supports(l),
            _ => self.translator.supports(l),
        };
        for (stage, lang) in [("translator", src), ("translator", tgt), ("tts", tgt)] {
            let supports = |l: Lang| supports(stage, l);
            if !supports(lang) {
                let ok: Vec<&str> = Lang::ALL
                    .into_iter()
                    .filter(|&l| supports(l))
                    .map(Lang::code)
                    .collect();
                return Err(CascadeError::Teacher {
                    stage: stage.into(),
                    reason: format!(
                        "does not support language '{lang}' (supported: {})",
                        if ok.is_empty() {
                            "none".into()
                        } else {
                            ok.join(", ")
                        }
                    ),
                });
            }
        }
        if self.codec.num_codebooks() == 0 || self.codec.sample_rate() == 0 {
            return Err(CascadeError::Teacher {
                stage: "codec".into(),
                reason: "reports 0 codebooks or a 0 Hz sample rate".into(),
            });
        }
        Ok(())
    }
}
