//! Loading published weights as published.
//!
//! A weight *location* is a local file, a local directory, or `hf://org/repo[@revision]/path`
//! ([`WeightLocation`]). Hub locations resolve through the Hugging Face cache ([`Hub`]), which
//! works offline when the files are already cached. The files found there (safetensors, single
//! or sharded; PyTorch `.pth`/`.ckpt`/`.bin`; gguf) all open into one [`Weights`], a lazy map from
//! tensor name to candle `Tensor` that also serves as a `candle_nn::VarBuilder` backend.
//! [`weight_norm`] merges the two spellings of PyTorch's weight normalisation.

mod hub;
mod legacy;
mod location;
mod norm;
mod pickle_scan;
mod store;

pub use hub::{Hub, HubOptions};
pub use location::WeightLocation;
pub use norm::{merge_weight_norm, weight_norm};
pub use store::{resolve_files, LoadOptions, WeightFormat, Weights};
