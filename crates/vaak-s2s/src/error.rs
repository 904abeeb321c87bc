//! The typed errors of `vaak-s2s`: bad configs, bad inputs and checkpoint mismatches are
//! reported with the field, slot or tensor they concern instead of a bare candle message.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A training-config value out of range (or an unknown key), named by its field.
    #[error("s2s training config: {field}: {reason}")]
    TrainConfig { field: String, reason: String },

    /// The training kit (optimizer, checkpoints, RNG state).
    #[error(transparent)]
    Train(#[from] vaak_nn::Error),

    /// The codec that turns audio into the model's tokens and back.
    #[error("codec: {0}")]
    Codec(#[from] vaak_codec::CodecError),

    /// The on-disk dataset formats (the cascade's parallel layout).
    #[error(transparent)]
    Data(#[from] vaak_data::DataError),

    /// Reading or writing audio.
    #[error(transparent)]
    Audio(#[from] vaak_audio::AudioError),

    /// A config value out of range, named by its field.
    #[error("s2s config: {field}: {reason}")]
    Config { field: String, reason: String },

    /// An audio code outside `0..cardinality` for its codebook.
    #[error("{what}: row {row}, frame {frame}, codebook {codebook}: code {code} is outside 0..{cardinality}")]
    CodeOutOfRange {
        what: &'static str,
        row: usize,
        frame: usize,
        codebook: usize,
        code: u32,
        cardinality: usize,
    },

    /// A text token outside the text vocabulary.
    #[error("{what}: row {row}, frame {frame}: text token {token} is outside 0..{vocab}")]
    TextOutOfRange {
        what: &'static str,
        row: usize,
        frame: usize,
        token: u32,
        vocab: usize,
    },

    /// Input that does not fit the model (wrong frame width, missing text, batch mismatch).
    #[error("bad input: {0}")]
    BadInput(String),

    /// An unknown emotion name; lists the valid ones.
    #[error("unknown emotion {name:?}; valid emotions: {valid}")]
    UnknownEmotion { name: String, valid: String },

    /// An unknown target language code; lists the valid ones.
    #[error("unknown language {name:?}; valid languages: {valid}")]
    UnknownLanguage { name: String, valid: String },

    /// A checkpoint tensor whose shape disagrees with the config.
    #[error("checkpoint tensor {name}: the config expects shape {expected:?}, the weights hold {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor the config needs but the checkpoint lacks.
    #[error("checkpoint lacks tensor {name} (shape {expected:?} expected by the config)")]
    MissingTensor { name: String, expected: Vec<usize> },

    /// A checkpoint tensor the config has no use for (a different architecture).
    #[error("checkpoint holds tensor {name} {found:?} that the config does not use")]
    UnexpectedTensor { name: String, found: Vec<usize> },

    /// A slot index or a slot in the wrong state for the call.
    #[error("slot {slot}: {reason}")]
    Slot { slot: usize, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, S2sError>;

pub(crate) fn config_err(field: &str, reason: impl Into<String>) -> S2sError {
    S2sError::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}
