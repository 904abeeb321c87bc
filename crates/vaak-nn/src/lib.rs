//! vaak-nn: the candle building blocks of vaak's own models.
//!
//! Streaming modules with per-slot state, causal convolutions (one differentiable conv with a
//! fast CPU path), reflect padding, vectorised activations, a transformer with rotating and per-slot KV caches and cross-attention, residual
//! vector quantization, weight loading from local paths or `hf://`, a training kit with the
//! training run every model shares (`train::run`), and the one parser of device names
//! ([`parse_device`]).

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod device;
pub mod error;
pub mod fused;
pub mod pad;
pub mod rvq;
pub mod simd;
pub mod streaming;
pub mod train;
pub mod transformer;
pub mod weights;

pub use device::{parse_device, DeviceError};
pub use error::{Error, Result};
pub use streaming::{StreamMask, StreamTensor, StreamingModule};
