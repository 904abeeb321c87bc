//! Training the vaak codec: a differentiable STFT ([`stft`]) and the reconstruction losses
//! ([`loss`]).

pub mod loss;
pub mod stft;

pub use loss::{MelLoss, MelResolution, MultiResStftLoss, StftResolution};
pub use stft::{Stft, Window};
