//! The one error type of `vaak-data`. Every variant about a file names it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An I/O step of writing a sample directory; `what` says which (`copying to`, ...).
    #[error("{what} {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported language '{code}' for vaak; supported: {supported}")]
    UnsupportedLanguage { code: String, supported: String },
    #[error("manifest {path}: missing required column(s) {missing:?} (header has {found:?})")]
    MissingColumns {
        path: PathBuf,
        missing: Vec<String>,
        found: Vec<String>,
    },
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    AudioSource { path: PathBuf, reason: String },
    #[error("npy {path}: {source}")]
    NpyRead {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("npy {path}: dtype {got:?}, expected one of {expected:?}")]
    NpyDtype {
        path: PathBuf,
        got: candle_core::DType,
        expected: Vec<candle_core::DType>,
    },
    #[error("npy {path}: shape {shape:?}, expected rank {rank}")]
    NpyRank {
        path: PathBuf,
        shape: Vec<usize>,
        rank: usize,
    },
    #[error("npy: shape {shape:?} needs {want} elements, got {got}")]
    NpyShape {
        shape: Vec<usize>,
        want: usize,
        got: usize,
    },
    #[error("{path}: bad meta.json: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error("audio: {0}")]
    Audio(#[from] vaak_audio::AudioError),
    /// A parquet shard that cannot be read, or a row or column of it.
    #[error("parquet {path}: {reason}")]
    Parquet { path: PathBuf, reason: String },
    /// `vaak data manifest` with a recipe name it does not know.
    #[error("unknown recipe '{name}'; known recipes: {known}")]
    UnknownRecipe { name: String, known: String },
    /// A recipe that cannot run on a directory (missing, or not the corpus it expects).
    #[error("{recipe} recipe on {dir}: {reason}")]
    Recipe {
        recipe: String,
        dir: PathBuf,
        reason: String,
    },
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
