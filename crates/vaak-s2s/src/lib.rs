//! vaak-s2s: the speech-to-speech transformer over codec tokens.
//!
//! - [`Encoder`]: a chunk-causal Conformer over the source frames that streams as the user
//!   speaks ([`EncoderState`]).
//! - [`S2sModel`]: the encoder, a causal RoPE decoder that cross-attends to the encoder output
//!   (keys/values cached and grown as the encoder streams), conditioning, the codebook heads
//!   (delay pattern or depth transformer) and the optional aligned text stream.
//! - [`S2sStream`]: batched, per-slot generation state for a server: every session steps
//!   together under a mask, with its own seed, and resets alone.
//! - Training: [`S2sModel::forward_batch`] (teacher forced) and [`S2sModel::loss`]; the
//!   weights live in a `VarMap` from [`S2sModel::init`] / [`S2sModel::load`], trained with
//!   vaak-nn's `AdamW`.
//! - [`train`]: [`S2sTrainer`] behind vaak-nn's shared training run (curriculum stages
//!   `lm` -> `s2s` -> `cond`, length-bucketed batches, exact resume, validation, export), the
//!   examples built from audio through a codec with an on-disk code cache, and prosody.
//! - [`SpeechModel`]: a model export and its codec, audio in and audio out.
//!
//! # One attention implementation
//!
//! The encoder's chunk-causal self-attention, the decoder's causal self-attention and its
//! cross-attention all run through vaak-nn's transformer (`Transformer::with_options`:
//! `chunk_size`, `cross_attention_dim`). Cross-attention there reuses the same projection and
//! attention code as self-attention, its per-slot `CrossKvCache` grows as encoder chunks are
//! appended (projected once, never recomputed), and the decoder's self-attention uses the
//! existing `SlotKvCache`, so slot masks and resets behave the same everywhere.
//!
//! # Serving a turn
//!
//! ```text
//! stream.start(slot, condition, seed)        // the user starts speaking (or barges in)
//! stream.push_source(&frames_per_slot)      // as codec frames arrive; encoder runs per chunk
//! stream.end_source(slot)                   // end of the user's turn: last partial chunk
//! loop { stream.step(&mask) }               // all slots at once; frames as soon as complete
//! ```
//! Each turn starts fresh: context from earlier turns is not carried over yet.

pub mod bundled;
pub mod cond;
pub mod config;
pub mod encoder;
pub mod error;
pub mod generate;
pub mod model;
mod nn;
pub mod speech;
pub mod text;
pub mod train;

pub use cond::{Emotion, Language, SlotCondition};
pub use config::{CodecSpec, EncoderConfig, HeadKind, S2sConfig, Specials, StackConfig};
pub use encoder::{EncodedChunk, Encoder, EncoderState, Frame};
pub use error::{Result, S2sError};
pub use generate::{GenerationConfig, S2sStream, SlotOutput};
pub use model::{DecoderState, LossOutput, LossWeights, S2sModel, Sample, TeacherForced};
pub use speech::{Reply, SpeechModel};
pub use train::{S2sExample, S2sTrainConfig, S2sTrainer, Stage};
