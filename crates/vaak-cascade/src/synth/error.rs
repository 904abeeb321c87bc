//! The error type of [`crate::synth`]. Variants that concern a file or an option name it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("word list for '{lang}' not found at {path}: install the Debian package '{package}' (apt-get install {package}) or pass --wordlist {lang}=PATH")]
    MissingWordList {
        lang: String,
        path: PathBuf,
        package: String,
    },
    #[error("word list {path} has only {count} usable words for '{lang}' (need at least {min})")]
    TooFewWords {
        lang: String,
        path: PathBuf,
        count: usize,
        min: usize,
    },
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument { name: String, reason: String },
    #[error("espeak-ng: {0}")]
    Espeak(String),
    #[error("{out}: made with other settings ({reason}); use another --out or the same settings")]
    SettingsMismatch { out: PathBuf, reason: String },
    #[error("audio: {0}")]
    Audio(#[from] vaak_audio::AudioError),
}

impl SynthError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn arg(name: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, SynthError>;
