//! One encoder-decoder stack for the text-producing teachers: Whisper (ASR), M2M-100 / NLLB-200
//! and Marian (MT), as transformers' Bart-family models compute them.
//!
//! - [`layers`]: attention (self, and cross over per-item encoder keys shared by a group of
//!   rows), the feed-forward block, encoder/decoder layers and stacks, the output head; the
//!   per-model differences (activation, `k_proj` bias, pre- or post-norm) come from a
//!   [`LayerConfig`].
//! - [`cache`]: [`Encoded`] (padded encoder states with their lengths) and [`KvCache`], whose
//!   rows can be dropped and reordered between steps.
//! - [`generate`]: greedy and beam search matching transformers' `generate()`, with the logits
//!   processors the three models' generation configs use.
//! - [`select`]: the logits processors, greedy arg-max and beam top-k on the logits' device
//!   (only chosen ids and scores reach the host).
//! - [`config`]: one `generation_config.json` reader.
//! - [`rows`]: the projections of a few rows in a decoder step (its attention over cached
//!   keys is `vaak_nn::attention`'s).
//!
//! Each model keeps only what is its own: its config.json, embeddings and positions (Whisper's
//! convolutions and learned tables, M2M-100's fairseq sinusoids, Marian's sinusoids and
//! `final_logits_bias`) and its prompt rules (Whisper's prompt and suppressed tokens, M2M-100's
//! forced target-language BOS, Marian's `<pad>` start and banned `<pad>`).

pub mod cache;
pub mod config;
pub mod generate;
pub mod layers;
pub mod model;
pub mod rows;
pub mod select;

pub use cache::{Encoded, KvCache};
pub use config::{EarlyStopping, GenerationConfigFile, TokenIds};
pub use generate::{
    generate, generate_with, greedy_search, pad_batch, Decoder, Generated, GenerationParams,
    MaxLength, Seq2Seq, TokenRules,
};
pub use layers::{
    Activation, DecoderStack, EncoderStack, LayerConfig, LmHead, NormPosition, Stacks, LN_EPS,
};
pub use model::{decode_tokens, embed_scale, encode_tokens, TokenSeq2Seq};
