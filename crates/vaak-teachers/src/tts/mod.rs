//! Text-to-speech teachers (the cascade's TTS stage), behind [`crate::Tts`].
//!
//! - [`EspeakTts`]: espeak-ng's formant voices for en, ru, hi and te. A base voice: it ignores
//!   [`crate::TtsRequest::reference`]; a voice-preserving converter is meant to wrap it.

pub mod espeak;

pub use espeak::{EspeakConfig, EspeakTts, EspeakVoices, ESPEAK_DEBIAN_PACKAGE};
