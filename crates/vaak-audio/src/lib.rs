//! vaak-audio: everything vaak does to audio without a neural network.
//!
//! Decoding (symphonia) and writing (hound), resampling (rubato), features that match their
//! reference implementations (Whisper log-mel, Kaldi fbank, speechbrain Fbank), seeded
//! augmentation, quality metrics, and, with the `plot` feature (off by default), PNG plots of
//! training curves and spectrograms.

pub mod augment;
pub mod error;
pub mod features;
pub mod io;
pub mod metrics;
#[cfg(feature = "plot")]
pub mod plot;
pub mod resample;

pub use error::{AudioError, Result};
