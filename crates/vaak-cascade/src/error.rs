//! The error type of `vaak-cascade`.

use std::path::PathBuf;

/// Errors that stop a run (bad config, unreadable manifest, unusable output directory).
/// Per-sample failures never become a `CascadeError`; they are logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    #[error("{path}: cannot read config: {reason}")]
    ConfigRead { path: PathBuf, reason: String },
    #[error("config {origin}: {reason}")]
    Config { origin: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the {stage} teacher: {reason}")]
    Teacher { stage: String, reason: String },
    /// The manifest of the run's language is not a readable file; `origin` says where the
    /// path came from (`config key manifests.ru`, `--manifest`).
    #[error("the manifest for {lang} {problem}: {path} ({origin})")]
    Manifest {
        lang: String,
        path: PathBuf,
        origin: String,
        problem: String,
    },
    /// `data_root` is not a readable directory.
    #[error("data_root {problem}: {path} ({origin}); manifest audio paths are relative to it")]
    DataRoot {
        path: PathBuf,
        origin: String,
        problem: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Data(#[from] vaak_data::DataError),
    #[error("compute.device: {0}")]
    Device(#[from] vaak_nn::DeviceError),
}

impl CascadeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, CascadeError>;
