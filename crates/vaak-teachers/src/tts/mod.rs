//! Text-to-speech teachers (the cascade's TTS stage), behind [`crate::Tts`].
//!
//! - [`EspeakTts`]: espeak-ng's formant voices for en, ru, hi and te. A base voice: it ignores
//!   [`crate::TtsRequest::reference`]; a voice-preserving converter is meant to wrap it.
//! - [`VoiceConvertingTts`]: any base [`crate::Tts`] followed by OpenVoice V2's tone-colour
//!   converter ([`crate::vc::ToneColorConverter`]), speaking in the reference clip's voice.

pub mod espeak;
pub mod openvoice;

pub use espeak::{EspeakConfig, EspeakTts, EspeakVoices, ESPEAK_DEBIAN_PACKAGE};
pub use openvoice::{VoiceConvertingTts, VoiceConvertingTtsConfig};
