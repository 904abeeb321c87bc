//! Training the vaak codec: a differentiable STFT ([`stft`]).

pub mod conv2d;
pub mod disc;
pub mod stft;

pub use stft::{Stft, Window};
