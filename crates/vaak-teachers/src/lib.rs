//! vaak-teachers: the pretrained models of the teacher cascade, behind batch-first traits.
//!
//! Each stage of the cascade talks to one trait: [`Asr`] (Whisper), [`Translator`] (M2M-100 /
//! NLLB, Marian, or an OpenAI-compatible server), [`SpeakerEncoder`] (ECAPA-TDNN) and [`Tts`]
//! (espeak-ng, alone or with the OpenVoice tone-colour converter in the speaker's voice). Whisper,
//! M2M-100 and Marian share one encoder-decoder stack (`seq2seq`). Every method takes a whole batch and
//! returns one result per item, so one bad sample never sinks its batch-mates; the outer
//! `Result` is for failures of the batch as a whole (a dead server, a device error).

pub mod asr;
pub mod error;
pub mod mt;
mod pool;
pub mod seq2seq;
pub mod speaker;
pub mod spec;
pub mod tts;
pub mod vc;

pub use error::{Result, TeacherError};
pub use vaak_data::Lang;

/// The languages, now defined in `vaak-data`; this path stays for teacher code and callers.
pub mod lang {
    pub use vaak_data::lang::*;
}

/// A mono clip borrowed from the caller, at its own sample rate. Teachers resample as needed.
#[derive(Clone, Copy, Debug)]
pub struct AudioRef<'a> {
    pub samples: &'a [f32],
    pub sample_rate: u32,
}

impl<'a> AudioRef<'a> {
    pub fn new(samples: &'a [f32], sample_rate: u32) -> Self {
        Self {
            samples,
            sample_rate,
        }
    }

    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate.max(1) as f64
    }
}

/// Which model (and revision) produced an output; recorded in each sample's `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelId {
    /// E.g. `openai/whisper-large-v3`, a local path, or `espeak-ng`.
    pub name: String,
    /// Hub revision, file hash or program version, when known.
    pub revision: Option<String>,
}

impl ModelId {
    /// The id of weights at `loc`: the local path, or `org/repo[/path]` with its revision.
    pub fn of_location(loc: &vaak_nn::weights::WeightLocation) -> Self {
        use vaak_nn::weights::WeightLocation;
        match loc {
            WeightLocation::Local(p) => Self {
                name: p.display().to_string(),
                revision: None,
            },
            WeightLocation::Hub {
                repo,
                revision,
                path,
            } => Self {
                name: if path.is_empty() {
                    repo.clone()
                } else {
                    format!("{repo}/{path}")
                },
                revision: Some(revision.clone()),
            },
        }
    }
}

/// Per-item outcome of a batched call.
pub type ItemResult<T> = std::result::Result<T, TeacherError>;

/// What the ASR stage is asked to do.
#[derive(Clone, Debug)]
pub struct AsrOptions {
    /// Force the spoken language; `None` lets the model detect it.
    pub language: Option<Lang>,
    /// Upper bound on generated tokens per clip.
    pub max_new_tokens: usize,
}

/// One clip's transcript, with the signals the cascade's quality flags are built from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Transcript {
    pub text: String,
    /// The language decoded with (forced or detected), as a [`Lang`] code or Whisper's code.
    pub language: String,
    /// Probability of the no-speech token at the first decoding step.
    pub no_speech_prob: f32,
    /// Mean log-probability of the generated tokens.
    pub avg_logprob: f32,
    /// gzip-style compression ratio of the text; high values mean repetition loops.
    pub compression_ratio: f32,
    /// Quality flags, e.g. `no_speech`, `hallucination`, `max_length`.
    pub flags: Vec<String>,
}

/// Speech recognition, batch first.
pub trait Asr: Send + Sync {
    fn model_id(&self) -> ModelId;
    fn transcribe(
        &self,
        batch: &[AudioRef<'_>],
        opts: &AsrOptions,
    ) -> Result<Vec<ItemResult<Transcript>>>;
}

/// Text translation, batch first.
pub trait Translator: Send + Sync {
    fn model_id(&self) -> ModelId;
    /// Languages this translator accepts, so configs can fail fast on others.
    fn supports(&self, lang: Lang) -> bool;
    fn translate(&self, batch: &[&str], src: Lang, tgt: Lang) -> Result<Vec<ItemResult<String>>>;
}

/// A fixed-size speaker embedding per clip.
pub trait SpeakerEncoder: Send + Sync {
    fn model_id(&self) -> ModelId;
    fn dim(&self) -> usize;
    fn embed(&self, batch: &[AudioRef<'_>]) -> Result<Vec<ItemResult<Vec<f32>>>>;
}

/// One synthesis request. `reference` is the voice to preserve; base voices ignore it and a
/// voice-preserving TTS requires it.
#[derive(Clone, Copy, Debug)]
pub struct TtsRequest<'a> {
    pub text: &'a str,
    pub lang: Lang,
    pub reference: Option<AudioRef<'a>>,
}

/// Synthesised speech: mono samples at `sample_rate`.
#[derive(Clone, Debug)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Text to speech, batch first.
pub trait Tts: Send + Sync {
    fn model_id(&self) -> ModelId;
    fn supports(&self, lang: Lang) -> bool;
    fn synthesize(&self, batch: &[TtsRequest<'_>]) -> Result<Vec<ItemResult<Speech>>>;
}
