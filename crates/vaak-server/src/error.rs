//! Typed errors of the server library.

use std::path::PathBuf;

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error(
        "refusing to bind {host}: a non-loopback address needs security.api_key (--api-key) and \
         at least one security.allowed_origins (--allow-origin); or bind 127.0.0.1"
    )]
    Insecure { host: String },
    #[error("device {spec:?}: {source}")]
    Device {
        spec: String,
        source: Box<vaak_nn::DeviceError>,
    },
    #[error("codec {location}: {source}")]
    Codec {
        location: String,
        source: Box<vaak_codec::CodecError>,
    },
    #[error("S2S model {location}: {source}")]
    S2s {
        location: String,
        source: Box<vaak_s2s::S2sError>,
    },
    #[error("S2S model {location} reads {model} codebooks of {model_card} codes; codec {codec} has {codec_k} of {codec_card}")]
    CodecMismatch {
        location: String,
        codec: String,
        model: usize,
        model_card: usize,
        codec_k: usize,
        codec_card: usize,
    },
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("--pipeline {mode} needs {key}: {why}")]
    PipelineMissing {
        mode: &'static str,
        key: &'static str,
        why: String,
    },
    #[error(
        "--pipeline {mode}: this vaak-server was built without the `pipeline` feature; \
         rebuild with `--features pipeline` (vaak-cli enables it by default)"
    )]
    PipelineNotBuilt { mode: &'static str },
    #[error("pipeline {stage}: {reason}")]
    Pipeline { stage: &'static str, reason: String },
    #[error("model worker: {0}")]
    Worker(String),
}
