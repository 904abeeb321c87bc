//! The error type of `vaak-nn`'s fallible, non-tensor APIs (weight loading, checkpoints).
//! Tensor code returns `candle_core::Result`, which converts into this.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Msg(String),

    /// A weight location string that is neither a path nor a well-formed `hf://` spec.
    #[error("bad weight location {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },

    /// A local file or directory that does not exist.
    #[error("weight file not found: {path}")]
    MissingFile { path: PathBuf },

    /// A directory (local or a hub repo) with no weight file vaak knows how to load.
    #[error("no weight file found in {location} (looked for: {looked_for})")]
    NoWeightFile {
        location: String,
        looked_for: String,
    },

    /// A directory (local or a hub repo) holding several candidate weight files and no index.
    #[error("{location} holds several weight files ({candidates}); name the one to load")]
    AmbiguousWeights {
        location: String,
        candidates: String,
    },

    /// A hub file (or, with an empty `path`, a whole revision) that is not in the local cache
    /// while running offline. The message says how to fetch it.
    #[error("{}", not_cached_message(repo, revision, path, cache_dir))]
    HubFileNotCached {
        repo: String,
        revision: String,
        path: String,
        cache_dir: PathBuf,
    },

    /// A hub request that failed while online.
    #[error("downloading {path} from hf://{repo}@{revision} failed: {reason}")]
    HubDownload {
        repo: String,
        revision: String,
        path: String,
        reason: String,
    },

    /// A tensor name that none of the loaded files contains.
    #[error("tensor {name:?} not found in {files}")]
    MissingTensor { name: String, files: String },

    /// A tensor whose shape differs from what the caller asked for.
    #[error("tensor {name:?} in {file}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        file: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A file that starts like a known format but cannot be parsed (truncated, damaged).
    #[error("corrupt {format} file {path}: {reason}")]
    CorruptFile {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    /// A file whose contents match no format vaak loads, or a variant of one it does not.
    #[error("unsupported weight file {path}: {reason}")]
    UnsupportedFormat { path: PathBuf, reason: String },

    /// A checkpoint directory that lacks a file or holds one that does not parse.
    #[error("incomplete checkpoint {path}: {reason}")]
    CheckpointIncomplete { path: PathBuf, reason: String },
}

fn not_cached_message(repo: &str, revision: &str, path: &str, cache_dir: &Path) -> String {
    let (what, cli_path) = if path.is_empty() {
        (format!("revision {revision} of hf://{repo}"), String::new())
    } else {
        (
            format!("{path} of hf://{repo}@{revision}"),
            format!(" {path}"),
        )
    };
    format!(
        "offline: {what} is not in the Hugging Face cache (searched {cache}). To fetch it, on a \
         machine with network access run `huggingface-cli download {repo}{cli_path} --revision \
         {revision}` and copy that machine's hub cache (~/.cache/huggingface/hub or \
         $HF_HUB_CACHE) to {cache}; or download the file(s) anywhere and give vaak the local \
         path instead of the hf:// location",
        cache = cache_dir.display()
    )
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
