//! vaak-s2s: the speech-to-speech transformer over codec tokens.
//!
//! - [`Encoder`]: a chunk-causal Conformer over the source frames that streams as the user
//!   speaks ([`EncoderState`]).
//! - [`S2sModel`]: the encoder, a causal RoPE decoder that cross-attends to the encoder output
//!   (keys/values cached and grown as the encoder streams), conditioning, the codebook heads
//!   (delay pattern or depth transformer) and the optional aligned text stream.
//! - [`S2sStream`]: batched, per-slot generation state for a server: every session steps
//!   together under a mask, with its own seed, and resets alone.
//! - Training: [`S2sModel::forward_batch`] (teacher forced) and [`S2sModel::loss`].

pub mod cond;
pub mod config;
pub mod encoder;
pub mod error;
pub mod generate;
pub mod model;
mod nn;

pub use cond::{Emotion, Language, SlotCondition};
pub use config::{CodecSpec, EncoderConfig, HeadKind, S2sConfig, Specials, StackConfig};
pub use encoder::{EncodedChunk, Encoder, EncoderState, Frame};
pub use error::{Result, S2sError};
pub use generate::{GenerationConfig, S2sStream, SlotOutput};
pub use model::{DecoderState, LossOutput, LossWeights, S2sModel, Sample, TeacherForced};
