//! Voice conversion teachers: OpenVoice V2's tone-colour converter, ported to candle.
//!
//! * [`config`]: the published `converter/config.json`.
//! * [`spectrogram`]: `spectrogram_torch` (reflect pad + STFT, on vaak-audio's realfft STFT).
//! * [`layers`]: the VITS/HiFi-GAN parts (our own code; candle-transformers has no VITS).
//! * [`openvoice`]: [`ToneColorConverter`] (`extract_se`, `convert`, `convert_with_noise`).
//!
//! The voice-preserving TTS stage built on it is `crate::tts::VoiceConvertingTts`. Parity with
//! openvoice-cli 0.0.5 on a tiny random converter is in `tests/openvoice.rs`.

pub mod config;
pub mod layers;
pub mod openvoice;
pub mod spectrogram;

pub use config::{DataConfig, ModelConfig, OpenVoiceConfig};
pub use openvoice::{
    gaussian_noise, ConvertItem, ConverterOptions, ToneColorConverter, CHECKPOINT_FILE,
    CONFIG_FILE, DEFAULT_TAU,
};
pub use spectrogram::LinearSpectrogram;
