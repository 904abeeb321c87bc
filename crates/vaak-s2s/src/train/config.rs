//! [`S2sTrainConfig`]: the YAML training config of `vaak train s2s`, with defaults for every
//! field and validation that names the bad key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vaak_nn::train::run::Intervals;
use vaak_nn::train::LrSchedule;

use crate::config::{CodecSpec, HeadKind, S2sConfig};
use crate::error::{Result, S2sError};

/// Where the text stream's tokens come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// No text stream (unless `text_vocab_size` asks for one and the examples bring text).
    None,
    /// The default: the pairs' `tgt.txt` as [`crate::text::CharTokenizer`] ids spread over
    /// the target's voiced frames; sets `text_vocab_size` to
    /// [`crate::text::CharTokenizer::VOCAB`] for a fresh model of a paired stage (`s2s`,
    /// `cond`); the `lm` stage has no text and ignores it. It measured better than `none`
    /// (docs/s2s.md, "The text stream").
    #[default]
    Chars,
}

/// The curriculum stage a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Next-frame audio language model on unpaired codes: each clip is cut at a random point,
    /// the first part is the encoder input (the "prompt") and the decoder learns to continue
    /// it. Conditioning stays neutral (null speaker, neutral emotion, zero prosody).
    #[default]
    Lm,
    /// Paired speech-to-speech: source codes in, target codes out; only the target language
    /// conditions the decoder (null speaker, neutral emotion, zero prosody).
    S2s,
    /// Paired with the full conditioning: speaker embedding (dropped with
    /// `cond.speaker_drop_prob` for classifier-free guidance), emotion, language, prosody.
    Cond,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Lm, Stage::S2s, Stage::Cond];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Lm => "lm",
            Stage::S2s => "s2s",
            Stage::Cond => "cond",
        }
    }

    /// Whether the stage trains on source/target pairs.
    pub fn paired(self) -> bool {
        self != Stage::Lm
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = S2sError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                train_err(
                    "stage",
                    format!("unknown stage {s:?}; valid stages: lm, s2s, cond"),
                )
            })
    }
}

/// Optimizer and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up from 0, in steps.
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Global grad-norm clipping (0: off). A step with a non-finite norm is skipped.
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 500,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            clip_grad_norm: 1.0,
        }
    }
}

/// Weights of the loss terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// One weight per codebook (empty: codebook 0, which carries most of the content and the
    /// end of turn, weighs `first_codebook_weight`, the others 1).
    pub codebook_weights: Vec<f64>,
    /// Weight of codebook 0 when `codebook_weights` is empty.
    pub first_codebook_weight: f64,
    /// Weight of the text stream's cross-entropy (when the model has one).
    pub text_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            codebook_weights: Vec::new(),
            first_codebook_weight: 1.0,
            text_weight: 1.0,
        }
    }
}

/// How examples are cut, split and batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Fraction of the examples held out for validation (at least one when there are two or
    /// more examples).
    pub val_fraction: f64,
    /// At most this many held-out examples.
    pub val_max: usize,
    /// Batches sorted by length together: examples are shuffled, windows of
    /// `batch_size * bucket_window` are sorted by length and cut into batches, and the batches
    /// are shuffled (1: no bucketing).
    pub bucket_window: usize,
    /// Longest source the model takes, in frames (longer pairs are skipped and counted).
    pub max_source_frames: usize,
    /// Longest target, in frames (longer pairs are skipped and counted).
    pub max_target_frames: usize,
    /// `lm` stage: the longest window cut from a clip (prompt + continuation), in frames.
    pub lm_max_frames: usize,
    /// Codebooks the model reads and writes (the codec's first N; null: all of them).
    pub codebooks: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            val_fraction: 0.05,
            val_max: 256,
            bucket_window: 16,
            max_source_frames: 750,
            max_target_frames: 750,
            lm_max_frames: 500,
            codebooks: None,
        }
    }
}

/// Conditioning options of the `cond` stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CondConfig {
    /// Probability that a training row uses the null speaker (classifier-free guidance).
    pub speaker_drop_prob: f64,
}

impl Default for CondConfig {
    fn default() -> Self {
        Self {
            speaker_drop_prob: 0.1,
        }
    }
}

/// The training config of an S2S run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S2sTrainConfig {
    /// Model preset for a fresh run (`tiny`, `small`, `base`); ignored with an init model.
    pub preset: String,
    /// Codebook heads of a fresh model.
    pub head: HeadKind,
    /// Text stream vocabulary of a fresh model (null: no text stream, unless `text` sets it).
    pub text_vocab_size: Option<usize>,
    /// The text stream of a fresh model: `chars` (default: the target text, one id per
    /// character, aligned to the target's voiced frames; stages s2s and cond) or `none`.
    pub text: TextKind,
    /// Width of the speaker embeddings (`spk.npy`) of a fresh model.
    pub speaker_dim: usize,
    pub stage: Stage,
    /// Total optimizer steps.
    pub steps: u64,
    pub batch_size: usize,
    /// Seed of the initial weights, the data order and every random choice of a step.
    pub seed: u64,
    pub optim: OptimConfig,
    pub loss: LossConfig,
    pub data: DataConfig,
    pub cond: CondConfig,
    pub intervals: Intervals,
    /// The codec whose tokens the model reads and writes: `vaak-16k` (the bundled codec) or a
    /// directory with a vaak codec export. Recorded in the model export.
    pub codec: String,
}

impl Default for S2sTrainConfig {
    fn default() -> Self {
        Self {
            preset: "small".into(),
            head: HeadKind::Delay,
            text_vocab_size: None,
            text: TextKind::Chars,
            speaker_dim: 192,
            stage: Stage::Lm,
            steps: 20_000,
            batch_size: 16,
            seed: 0,
            optim: OptimConfig::default(),
            loss: LossConfig::default(),
            data: DataConfig::default(),
            cond: CondConfig::default(),
            intervals: Intervals::default(),
            codec: "vaak-16k".into(),
        }
    }
}

pub(crate) fn train_err(field: &str, reason: impl Into<String>) -> S2sError {
    S2sError::TrainConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl S2sTrainConfig {
    /// Parses YAML (every field optional) and validates it; an unknown key is an error naming
    /// it.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let cfg: Self = serde_yaml::from_str(text).map_err(|e| train_err("yaml", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|e| train_err("yaml", e.to_string()))
    }

    /// Checks every range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !["tiny", "small", "base"].contains(&self.preset.as_str()) {
            return Err(train_err(
                "preset",
                format!(
                    "unknown preset {:?}; valid presets: tiny, small, base",
                    self.preset
                ),
            ));
        }
        if self.text_vocab_size == Some(0) {
            return Err(train_err("text_vocab_size", "must be at least 1 (or null)"));
        }
        let chars = crate::text::CharTokenizer::VOCAB;
        if self.text == TextKind::Chars && self.text_vocab_size.is_some_and(|v| v != chars) {
            return Err(train_err(
                "text_vocab_size",
                format!("text: chars has {chars} ids; leave text_vocab_size null"),
            ));
        }
        if self.speaker_dim == 0 {
            return Err(train_err("speaker_dim", "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(train_err("steps", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(train_err("batch_size", "must be at least 1"));
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(train_err("optim.lr", "must be positive"));
        }
        if !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(train_err("optim.min_lr", "must be in 0..=optim.lr"));
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            return Err(train_err("optim.weight_decay", "must be >= 0"));
        }
        for (f, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(train_err(f, "must be in [0, 1)"));
            }
        }
        if o.clip_grad_norm.is_nan() || o.clip_grad_norm < 0.0 {
            return Err(train_err("optim.clip_grad_norm", "must be >= 0 (0: off)"));
        }
        let l = &self.loss;
        if let Some(w) = l.codebook_weights.iter().find(|w| w.is_nan() || **w < 0.0) {
            return Err(train_err(
                "loss.codebook_weights",
                format!("{w} is not a weight >= 0"),
            ));
        }
        if l.first_codebook_weight.is_nan() || l.first_codebook_weight < 0.0 {
            return Err(train_err("loss.first_codebook_weight", "must be >= 0"));
        }
        if l.text_weight.is_nan() || l.text_weight < 0.0 {
            return Err(train_err("loss.text_weight", "must be >= 0"));
        }
        let d = &self.data;
        if !(0.0..1.0).contains(&d.val_fraction) {
            return Err(train_err("data.val_fraction", "must be in [0, 1)"));
        }
        if d.bucket_window == 0 {
            return Err(train_err("data.bucket_window", "must be at least 1"));
        }
        if d.max_source_frames == 0 {
            return Err(train_err("data.max_source_frames", "must be at least 1"));
        }
        if d.max_target_frames == 0 {
            return Err(train_err("data.max_target_frames", "must be at least 1"));
        }
        if d.lm_max_frames < 2 {
            return Err(train_err(
                "data.lm_max_frames",
                "must be at least 2 (a prompt and a continuation)",
            ));
        }
        if d.codebooks == Some(0) {
            return Err(train_err("data.codebooks", "must be at least 1 (or null)"));
        }
        if !(0.0..=1.0).contains(&self.cond.speaker_drop_prob) {
            return Err(train_err("cond.speaker_drop_prob", "must be in [0, 1]"));
        }
        if self.codec.trim().is_empty() {
            return Err(train_err(
                "codec",
                "must name `vaak-16k` or a codec export directory",
            ));
        }
        Ok(())
    }

    /// The model config of a fresh run on `codec`'s tokens.
    pub fn model_config(&self, codec: CodecSpec) -> Result<S2sConfig> {
        let mut m = S2sConfig::preset(&self.preset, codec)?;
        m.head = self.head;
        m.text_vocab_size = match self.text {
            TextKind::Chars if self.stage.paired() => Some(crate::text::CharTokenizer::VOCAB),
            _ => self.text_vocab_size,
        };
        m.speaker_dim = self.speaker_dim;
        m.max_source_frames = self.data.max_source_frames;
        m.max_target_frames = self.data.max_target_frames;
        m.validate()?;
        Ok(m)
    }

    /// Per-codebook loss weights for `k` codebooks.
    pub fn codebook_weights(&self, k: usize) -> Result<Vec<f64>> {
        let w = &self.loss.codebook_weights;
        if w.is_empty() {
            let mut v = vec![1.0; k];
            if let Some(first) = v.first_mut() {
                *first = self.loss.first_codebook_weight;
            }
            return Ok(v);
        }
        if w.len() != k {
            return Err(train_err(
                "loss.codebook_weights",
                format!("{} weights for a model with {k} codebooks", w.len()),
            ));
        }
        Ok(w.clone())
    }

    /// Warm-up + cosine to `min_lr` at `steps`.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::WarmupCosine {
            peak_lr: self.optim.lr,
            min_lr: self.optim.min_lr,
            warmup_steps: self.optim.warmup_steps,
            total_steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_bad_keys_are_named() {
        let d = S2sTrainConfig::default();
        d.validate().unwrap();
        let back = S2sTrainConfig::from_yaml(&d.to_yaml().unwrap()).unwrap();
        assert_eq!(back, d);
        let c = S2sTrainConfig::from_yaml("stage: s2s\noptim:\n  lr: 0.01\n").unwrap();
        assert_eq!(c.stage, Stage::S2s);
        assert_eq!(c.optim.lr, 0.01);
        assert_eq!(c.optim.warmup_steps, 500);
        let e = S2sTrainConfig::from_yaml("optim:\n  lrr: 0.01\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = S2sTrainConfig::from_yaml("batch_size: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = S2sTrainConfig::from_yaml("preset: huge\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("preset") && e.contains("tiny"), "{e}");
        let e = S2sTrainConfig::from_yaml("stage: lmm\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lmm"), "{e}");
        let e = S2sTrainConfig::from_yaml("loss:\n  codebook_weights: [1, -1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loss.codebook_weights"), "{e}");
        assert!(S2sTrainConfig::default().codebook_weights(3).unwrap() == vec![1.0; 3]);
        let c = S2sTrainConfig::from_yaml("loss:\n  codebook_weights: [1, 2]\n").unwrap();
        assert!(c.codebook_weights(3).is_err());
    }
}
