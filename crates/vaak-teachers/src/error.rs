//! The error type of `vaak-teachers`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Weights(#[from] vaak_nn::Error),
    #[error(transparent)]
    Audio(#[from] vaak_audio::AudioError),
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("unsupported language '{code}' for {what}; supported: {supported}")]
    UnsupportedLanguage {
        code: String,
        what: String,
        supported: String,
    },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, TeacherError>;
