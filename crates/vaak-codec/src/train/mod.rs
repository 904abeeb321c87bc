//! Training the vaak codec: a differentiable STFT ([`stft`]).

pub mod stft;

pub use stft::{Stft, Window};
