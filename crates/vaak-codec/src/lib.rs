//! vaak-codec: one streaming neural audio codec family.
//!
//! A SEANet causal conv encoder/decoder (with EnCodec's LSTM), and residual vector
//! quantization, configurable through [`CodecConfig`]. Presets ([`Preset`]):
//!
//! - `encodec_24khz`: loads `facebook/encodec_24khz` as published in transformers'
//!   `EncodecModel` layout (`config.json` + `model.safetensors`, weight norm in either spelling).
//!   Whole-clip encode/decode match transformers exactly ([`EdgeMode::Reference`]).
//! - `vaak-16k`: vaak's own 16 kHz, 8 x 1024 codec (config only; trained later).
//!
//! # Streaming and the clip edges
//!
//! [`CodecStreamer`] streams over batched slots with per-slot reset. A stream cannot see the
//! future, so it follows [`EdgeMode::Causal`] (zeros before the clip, no right padding); the
//! concatenated stream output equals the causal whole-clip output exactly, for any chunking.
//! HF EnCodec's whole-clip forward differs at two places:
//!
//! 1. *Left edge*: every conv reflect-pads its left edge (`k_eff - stride` samples mirrored
//!    from the clip's start), where a stream has zeros. Through the conv stacks this touches
//!    the first frames only, but the LSTM carries every difference forward, so in principle all
//!    later frames can differ slightly (in floats; codes flip only near ties).
//! 2. *Right edge*: when `T` is not a multiple of the hop, HF reflect-pads each strided conv to
//!    a whole stride block and emits `ceil(T / hop)` frames; the stream emits `floor(T / hop)`
//!    and holds the tail until more audio arrives.
//!
//! The tests measure how many streamed codes agree with HF's on the fixture.
//!
//! # What is reused and what is ours
//!
//! candle-transformers has an EnCodec (`models::encodec`), but it cannot parse transformers'
//! `config.json`, has no per-slot streaming state or masked steps, cannot be trained (its
//! conv-transpose has no backward) and hard-wires one layout. So the model here is ours, built
//! on `vaak_nn::conv` (streaming causal convs, differentiable conv-transpose), `vaak_nn::rvq`
//! (codebooks) and `vaak_nn::weights` (loading, weight norm). Only the numerics of transformers'
//! `modeling_encodec.py` were followed.
//!
//! # Not yet here
//!
//! The `mimi` preset (transformer on the latent, split RVQ) is not implemented yet.

pub mod codec;
pub mod config;
pub mod error;
pub mod seanet;

pub use codec::{Codec, CodecStreamer, Preset};
pub use config::{CodecConfig, HfEncodecConfig, PadMode, SeanetConfig};
pub use error::{CodecError, Result};
pub use seanet::{EdgeMode, Seanet};
