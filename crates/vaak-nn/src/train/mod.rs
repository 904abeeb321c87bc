//! Training kit for candle 0.11, which ships none of these: AdamW with weight-decay
//! exclusions and exportable state ([`AdamW`]), learning-rate schedules ([`LrSchedule`]),
//! global grad-norm clipping ([`clip_grad_norm`]), a resumable seeded RNG ([`TrainRng`]),
//! atomic, resumable checkpoints ([`CheckpointManager`]), data sharding for data parallelism
//! ([`Shard`]), and one training run for every model ([`run`]: run directory, metrics log,
//! stop flag, checkpoint / export / validation cadence behind the [`run::RunModel`] trait), and
//! EnCodec's loss balancer ([`LossBalancer`]).
//!
//! Conventions follow PyTorch (`torch.optim.AdamW`, `clip_grad_norm_`) and transformers'
//! schedules, and are checked against them by `tools/fixtures/train_kit.py`.

pub mod balancer;
mod checkpoint;
mod clip;
mod optim;
mod rng;
pub mod run;
mod schedule;
mod shard;

pub use balancer::{BalancedTerm, BalancerConfig, LossBalancer};
pub use checkpoint::{
    assign_vars, latest_path, load_checkpoint, load_latest, named_tensors, Checkpoint,
    CheckpointManager, TrainState, LATEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
pub use clip::{clip_grad_norm, grad_norm, grad_norm_tensor};
pub use optim::{AdamW, AdamWConfig, DecayFilter, DecayPredicate};
pub use rng::{RngState, TrainRng};
pub use schedule::LrSchedule;
pub use shard::Shard;
