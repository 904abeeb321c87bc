//! Learning-rate schedules as pure functions of the step, so resuming needs only the step.
//!
//! `step` counts optimizer steps already taken: `lr_at(0)` is the rate for the first step.
//! The warmup ramp and the decay shapes are those of transformers'
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//! `get_cosine_with_min_lr_schedule_with_warmup` (so warmup starts at 0), except that past
//! `total_steps` the rate stays at `min_lr` instead of rising again along the cosine.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warmup from 0 to `lr`, then constant.
    Constant { lr: f64, warmup_steps: u64 },
    /// Linear warmup from 0 to `peak_lr`, then linear decay to `min_lr` at `total_steps`.
    WarmupLinear {
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    },
    /// Linear warmup from 0 to `peak_lr`, then half a cosine down to `min_lr` at `total_steps`.
    WarmupCosine {
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    },
}

impl LrSchedule {
    /// The learning rate for the optimizer step that follows `step` completed steps.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = |w: u64| step as f64 / w.max(1) as f64;
        match *self {
            Self::Constant { lr, warmup_steps } => {
                if step < warmup_steps {
                    lr * warm(warmup_steps)
                } else {
                    lr
                }
            }
            Self::WarmupLinear {
                peak_lr,
                min_lr,
                warmup_steps,
                total_steps,
            }
            | Self::WarmupCosine {
                peak_lr,
                min_lr,
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    return peak_lr * warm(warmup_steps);
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let shape = if matches!(self, Self::WarmupCosine { .. }) {
                    let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                } else {
                    total_steps.saturating_sub(step) as f64 / span
                };
                // Written as transformers does (peak * (f * (1 - r) + r)) so the values agree
                // to the last bit.
                let rate = if peak_lr == 0.0 {
                    0.0
                } else {
                    min_lr / peak_lr
                };
                peak_lr * (shape * (1.0 - rate) + rate).max(0.0)
            }
        }
    }
}
