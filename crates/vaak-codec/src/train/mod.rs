//! Training vaak's own codec (`vaak train codec`).
//!
//! - [`stft`]: a differentiable STFT (framing, then a real FFT on the CPU or one matmul).
//! - [`loss`]: multi-resolution STFT and multi-scale mel losses.
//! - [`data`]: audio clips in memory, seeded random crops with augmentation, a held-out split.
//! - [`config`]: the YAML training config with embedded defaults.
//! - [`disc`], [`conv2d`]: MPD + MS-STFT discriminators and the adversarial losses.
//! - [`trainer`]: the generator step (EMA RVQ with k-means init, dead-code restarts and
//!   quantizer dropout; AdamW, warm-up + cosine, grad clipping), the discriminator step after
//!   a warm-up, validation, exact-resume checkpoints, the inference export, and
//!   [`CodecRun`], the codec's side of the training run every model shares
//!   (`vaak_nn::train::run`: run directory, JSONL metrics, stop flag, cadence).
//! - [`plots`]: PNG curves and spectrograms of a run (`vaak_audio`'s `plot` feature).
//!
//! All of it is ours: candle ships no training losses, schedulers or checkpointing. It reuses
//! `vaak_nn::{conv, rvq, train}` (differentiable convs with a fast CPU path, EMA codebooks,
//! AdamW, checkpoints, the training run, data shards) and
//! `vaak_audio` (decoding, resampling, augmentation, metrics, mel filterbanks). The losses
//! follow Parallel WaveGAN (STFT loss), EnCodec (optimizer, EMA RVQ) and DAC (mel loss,
//! quantizer dropout) in their definitions only.

pub mod config;
pub mod conv2d;
pub mod data;
pub mod disc;
pub mod loss;
pub mod plots;
pub mod stft;
pub mod trainer;

pub use config::{
    AdversarialConfig, CodecTrainConfig, DataConfig, Intervals, LossConfig, LossWeights,
    OptimConfig, QuantizerTrainConfig, TrainDtype,
};
pub use data::{Clip, TrainData};
pub use loss::{MelLoss, MelResolution, MultiResStftLoss, ReconLoss, StftResolution};
pub use stft::{Stft, Window};
pub use trainer::{
    run_training, CodecRun, CodecTrainer, RunOptions, RunSummary, StepMetrics, StepProfile,
    ValMetrics,
};

use std::path::PathBuf;

/// Errors of codec training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Codec(#[from] crate::CodecError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] vaak_nn::Error),
    #[error(transparent)]
    Audio(#[from] vaak_audio::AudioError),
    /// A bad training config (names the file and field).
    #[error("{path}: bad training config: {reason}")]
    Config { path: String, reason: String },
    /// No usable training audio.
    #[error("no usable training audio: {0}")]
    NoData(String),
    /// A file that could not be written or read.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// A checkpoint that does not fit this run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.into(),
            reason: e.to_string(),
        }
    }
}
