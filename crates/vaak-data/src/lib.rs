//! vaak-data: vaak's on-disk formats, in one crate low in the graph.
//!
//! Every crate that reads or writes these files (codec training, the cascade, the coming
//! speech-to-speech trainer and server) depends on this one instead of on each other, so a
//! format has one definition. It sits on `vaak-audio` and candle only; `tests/layering.rs`
//! keeps it (and every other crate) where it belongs.
//!
//! - [`atomic`]: atomic file writes (temporary name, fsync, rename), for every file a rerun
//!   or reader must never see half-written.
//! - [`corpus`]: corpus manifests (one row per utterance of a downloaded corpus) and audio
//!   references into files or parquet shards.
//! - [`lang`]: the languages vaak serves ([`Lang`]).
//! - [`manifest`]: speech manifests, CSV or JSONL, columns by name; [`paths`] resolves their
//!   `audio_path`s inside a data root without escaping it.
//! - [`parallel`]: the per-sample directory layout of the parallel dataset (`src.wav` ...
//!   `meta.json`, `DONE` last), its writer and a reader of finished samples; [`safe_id`] names
//!   the directories.
//! - [`npy`]: `.npy` arrays (candle reads them; numpy-layout writing).
//! - [`sources`]: the audio files of a directory or a manifest.
//! - [`recipes`]: `vaak data manifest`: downloaded corpora (LibriSpeech, Common Voice, VCTK,
//!   LJSpeech, OpenSLR 66/103, Kathbath, IndicVoices, IndicTTS, Golos, People's Speech) to
//!   corpus manifests; [`parquet_audio`] reads Hugging Face parquet shards with embedded audio,
//!   and [`audio_ref::load_audio`] decodes a row's audio wherever it lives.
//! - [`verify`]: `vaak data verify`: statistics and defects of a corpus manifest.
//! - [`prepare`], [`augment`], [`split`], [`shard`]: `vaak data prepare|augment|split|shard`
//!   (FLAC at 16 kHz, seeded augmentation, speaker-disjoint splits, tar shards and their reader).

pub mod atomic;
pub mod audio_ref;
pub mod augment;
pub mod corpus;
pub mod error;
pub mod lang;
pub mod manifest;
pub mod npy;
pub mod parallel;
pub mod parquet_audio;
pub mod paths;
pub mod prepare;
pub mod recipes;
pub mod safe_id;
pub mod shard;
pub mod sources;
pub mod split;
pub mod verify;

pub use error::{DataError, Result};
pub use lang::Lang;
pub use sources::{collect_audio, AudioClip, AudioSources};
