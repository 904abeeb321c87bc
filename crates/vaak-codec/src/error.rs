//! The error type of `vaak-codec`.

/// Everything that can go wrong loading or running a codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Weight resolution or loading (names the file or tensor).
    #[error(transparent)]
    Weights(#[from] vaak_nn::Error),
    /// A config file that cannot be read or parsed.
    #[error("{path}: cannot read codec config: {reason}")]
    ConfigFile { path: String, reason: String },
    /// A config field whose value vaak's codec cannot run (e.g. a non-causal EnCodec).
    #[error("{path}: unsupported {field} = {value}: {reason}")]
    Unsupported {
        path: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A config whose fields contradict each other.
    #[error("{path}: invalid config field {field}: {reason}")]
    BadConfig {
        path: String,
        field: &'static str,
        reason: String,
    },
    /// A tensor passed in with the wrong rank, shape, dtype or length.
    #[error("{what}: expected {expected}, got {got}")]
    BadInput {
        what: &'static str,
        expected: String,
        got: String,
    },
    /// A code outside `0..codebook_size`.
    #[error(
        "code {value} at [batch {batch}, codebook {codebook}, frame {frame}] is out of range \
         0..{size}"
    )]
    CodeOutOfRange {
        value: i64,
        batch: usize,
        codebook: usize,
        frame: usize,
        size: usize,
    },
    /// A bandwidth that the checkpoint does not list.
    #[error("bandwidth {bandwidth} kbps is not one of this codec's target bandwidths {allowed:?}")]
    UnsupportedBandwidth { bandwidth: f64, allowed: Vec<f64> },
    /// A number of codebooks outside `1..=max`.
    #[error("num_codebooks {requested} is not in 1..={max}")]
    BadNumCodebooks { requested: usize, max: usize },
}

pub type Result<T> = std::result::Result<T, CodecError>;

/// A name that is none of the valid ones (of a [`Preset`](crate::Preset), a
/// [`TrainDtype`](crate::train::TrainDtype)): what `FromStr` says, listing the valid names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}: expected one of {}", .valid.join(", "))]
pub struct UnknownName {
    /// What was named, e.g. "codec preset".
    pub what: &'static str,
    pub got: String,
    pub valid: Vec<&'static str>,
}

impl From<UnknownName> for CodecError {
    fn from(e: UnknownName) -> Self {
        CodecError::BadInput {
            what: e.what,
            expected: format!("one of {}", e.valid.join(", ")),
            got: e.got,
        }
    }
}
