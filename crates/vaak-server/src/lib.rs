//! vaak-server: the voice server behind `vaak serve`.
//!
//! - [`protocol`]: wire protocol v1 (`docs/protocol.md`): binary frames, typed payloads.
//! - [`config`]: `serve.toml` with every knob and its default.
//! - [`server`]: model loading, the axum router (`/ws`, `/health`, `/metrics`, the browser
//!   client), admission up to `max_sessions`, auth; [`start`] runs in the background and
//!   returns a [`RunningServer`] (bound address, shutdown), [`serve`] runs until Ctrl-C.
//! - [`session`]: one connection: handshake, limits, VAD turn-taking, barge-in, reply pacing,
//!   with a control lane that audio never blocks.
//! - [`worker`]: the model worker thread stepping every session as one batch.
//! - [`vad`]: earshot VAD with speech start/stop and endpointing.
//! - [`metrics`]: Prometheus metrics.
//! - [`pipeline`]: pipeline mode (ASR → MT or LLM → voice-preserving TTS; the models behind
//!   the `pipeline` cargo feature).

pub mod check;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod protocol;
pub mod server;
pub mod session;
pub mod static_files;
pub mod vad;
pub mod worker;

pub use config::{
    LimitsConfig, PipelineConfig, PipelineMode, SecurityConfig, ServeConfig, VadConfig,
};
pub use error::{Result, ServeError};
pub use server::{load_models, serve, start, start_with_models, ModelInfo, RunningServer};
