//! The codec training configuration: one YAML file (every field optional; defaults are
//! [`CodecTrainConfig::default`]), overridden by CLI flags.
//!
//! ```yaml
//! model: { ... }            # CodecConfig (default: the vaak-16k preset)
//! steps: 20000
//! batch_size: 8
//! segment_s: 1.0
//! optim: { lr: 3.0e-4, warmup_steps: 500 }
//! loss: { weights: { mel: 1.0, commit: 0.5 } }
//! ```

use serde::{Deserialize, Serialize};
use vaak_audio::augment::AugmentConfig;
use vaak_nn::train::{BalancerConfig, LrSchedule};

use super::disc::{AdvLoss, DiscConfig};
use super::loss::{MelResolution, StftResolution};
use super::TrainError;
use crate::config::CodecConfig;

/// Compute precision of the forward/backward pass. Master weights, optimizer moments, EMA
/// codebooks and losses stay f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    #[default]
    F32,
    /// bf16 activations and weight copies (CUDA; on the CPU it is slow and only for tests).
    Bf16,
}

impl TrainDtype {
    /// Every precision, in the order `--help` lists them.
    pub const ALL: [TrainDtype; 2] = [Self::F32, Self::Bf16];

    /// The name in the YAML config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// Writes [`TrainDtype::name`], which [`std::str::FromStr`] reads back.
impl std::fmt::Display for TrainDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TrainDtype {
    type Err = crate::error::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| crate::error::UnknownName {
                what: "training dtype",
                got: s.to_string(),
                valid: Self::ALL.map(Self::name).to_vec(),
            })
    }
}

/// Everything a codec training run needs besides the data and the output directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecTrainConfig {
    /// The codec to train.
    pub model: CodecConfig,
    /// Seeds initialisation, crops, augmentation, quantizer dropout and code restarts.
    pub seed: u64,
    /// Total optimizer steps.
    pub steps: u64,
    pub batch_size: usize,
    /// Crop length in seconds (rounded to whole codec frames).
    pub segment_s: f64,
    pub dtype: TrainDtype,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub quantizer: QuantizerTrainConfig,
    pub loss: LossConfig,
    pub adversarial: AdversarialConfig,
    pub intervals: Intervals,
}

impl Default for CodecTrainConfig {
    fn default() -> Self {
        Self {
            model: CodecConfig::vaak_16k(),
            seed: 0,
            steps: 20_000,
            batch_size: 8,
            segment_s: 1.0,
            dtype: TrainDtype::F32,
            data: DataConfig::default(),
            optim: OptimConfig::default(),
            quantizer: QuantizerTrainConfig::default(),
            loss: LossConfig::default(),
            adversarial: AdversarialConfig::default(),
            intervals: Intervals::default(),
        }
    }
}

/// Data loading and augmentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Clips held out for validation (chosen by a hash of the path, so independent of the
    /// listing order).
    pub val_clips: usize,
    /// Validation uses at most this many seconds from the start of each held-out clip.
    pub val_max_s: f64,
    /// Probability that a training crop is augmented at all (then each effect is drawn with
    /// its own probability from `augment`).
    pub augment_prob: f64,
    pub augment: AugmentConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            val_clips: 4,
            val_max_s: 5.0,
            augment_prob: 0.5,
            augment: AugmentConfig::default(),
        }
    }
}

/// AdamW and the learning-rate schedule (linear warm-up, then cosine to `min_lr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    /// EnCodec's generator optimizer (Adam, lr 3e-4, betas 0.5/0.9), with a short warm-up.
    fn default() -> Self {
        Self {
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 200,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad_norm: 1.0,
        }
    }
}

impl OptimConfig {
    /// The schedule over `total_steps`.
    pub fn schedule(&self, total_steps: u64) -> LrSchedule {
        LrSchedule::WarmupCosine {
            peak_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: total_steps.max(self.warmup_steps + 1),
        }
    }
}

/// EMA codebooks, their initialisation, dead-code restarts and quantizer dropout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizerTrainConfig {
    pub ema_decay: f64,
    pub ema_epsilon: f64,
    /// A code is restarted when its EMA usage falls below this fraction of the mean usage
    /// per code (`rows per step / codebook size`); a fraction rather than EnCodec's absolute
    /// 2.0 because small CPU batches give each code far less than 2 rows a step.
    pub dead_code_ratio: f64,
    /// Probability that an item uses a random number of codebooks in `1..=n_q` (else all).
    pub dropout_prob: f64,
    /// Draw the number of codebooks per item (else per batch).
    pub dropout_per_item: bool,
    /// Batches whose latents seed the k-means initialisation of the codebooks.
    pub kmeans_batches: usize,
    pub kmeans_iters: usize,
}

impl Default for QuantizerTrainConfig {
    fn default() -> Self {
        Self {
            ema_decay: 0.99,
            ema_epsilon: 1e-5,
            dead_code_ratio: 0.05,
            dropout_prob: 0.3,
            dropout_per_item: true,
            kmeans_batches: 4,
            kmeans_iters: 10,
        }
    }
}

/// Reconstruction loss resolutions and weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Multi-resolution STFT loss resolutions (an empty list turns it off).
    pub stft: Vec<StftResolution>,
    /// Multi-scale mel loss scales (an empty list turns it off).
    pub mel: Vec<MelResolution>,
    pub weights: LossWeights,
    /// EnCodec's loss balancer (off by default). When on, the weights of the terms computed
    /// from the decoded audio (time L1, STFT SC and log-magnitude, mel, and the adversarial
    /// and feature-matching weights) become each term's share of the gradient that reaches
    /// the audio, whatever the loss's own scale; the commitment loss is added as is.
    pub balancer: BalancerConfig,
}

impl Default for LossConfig {
    /// EnCodec's / Parallel WaveGAN's (512, 1024, 2048) at 24 kHz scaled to 16 kHz windows of
    /// 16-64 ms; mel scales from 8 to 64 ms (as DAC's, fewer and scaled to 16 kHz).
    fn default() -> Self {
        let r = |n_fft: usize| StftResolution {
            n_fft,
            hop: n_fft / 4,
            win_length: n_fft,
        };
        let m = |n_fft: usize, n_mels: usize| MelResolution {
            n_fft,
            hop: n_fft / 4,
            n_mels,
        };
        Self {
            stft: vec![r(256), r(512), r(1024)],
            mel: vec![m(128, 16), m(256, 32), m(512, 64), m(1024, 80)],
            weights: LossWeights::default(),
            balancer: BalancerConfig::default(),
        }
    }
}

/// Weights of the generator loss terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    /// Waveform L1.
    pub time_l1: f64,
    /// Spectral convergence of the STFT loss.
    pub stft_sc: f64,
    /// Log-magnitude L1 of the STFT loss.
    pub stft_mag: f64,
    pub mel: f64,
    /// RVQ commitment loss.
    pub commit: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            time_l1: 0.1,
            stft_sc: 1.0,
            stft_mag: 1.0,
            mel: 1.0,
            commit: 0.5,
        }
    }
}

/// Adversarial training with the MPD + MS-STFT discriminators (`super::disc`). Off by
/// default: with the published discriminator sizes a step costs several times the small
/// codec's, which suits a GPU run, not a CPU one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    pub enabled: bool,
    /// Generator steps before the discriminators start training and the adversarial and
    /// feature-matching losses switch on (the codec first learns to reconstruct).
    pub start_step: u64,
    pub loss: AdvLoss,
    /// Weight of the generator's adversarial loss.
    pub adv_weight: f64,
    /// Weight of the feature-matching loss.
    pub feat_weight: f64,
    /// Discriminator AdamW (constant rate).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip of the discriminators (0: off).
    pub clip_grad_norm: f64,
    pub disc: DiscConfig,
}

impl Default for AdversarialConfig {
    /// EnCodec's balance (adversarial 3, feature matching 3 against a unit reconstruction
    /// loss) and discriminator optimizer (lr 3e-4, betas 0.5/0.9).
    fn default() -> Self {
        Self {
            enabled: false,
            start_step: 2000,
            loss: AdvLoss::Hinge,
            adv_weight: 3.0,
            feat_weight: 3.0,
            lr: 3e-4,
            beta1: 0.5,
            beta2: 0.9,
            weight_decay: 0.0,
            clip_grad_norm: 10.0,
            disc: DiscConfig::default(),
        }
    }
}

/// How often things happen, in optimizer steps: the run's cadence, shared by every model
/// (`vaak_nn::train::run`).
pub use vaak_nn::train::run::Intervals;

impl CodecTrainConfig {
    /// Parses YAML (every field optional); `path` labels errors.
    pub fn from_yaml(text: &str, path: &str) -> Result<Self, TrainError> {
        let cfg: Self = serde_yaml::from_str(text).map_err(|e| TrainError::Config {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The resolved config as YAML (written next to a run).
    pub fn to_yaml(&self) -> Result<String, TrainError> {
        serde_yaml::to_string(self).map_err(|e| TrainError::Config {
            path: "config".into(),
            reason: e.to_string(),
        })
    }

    /// Crop length in samples: `segment_s` rounded to whole frames (at least one).
    pub fn segment_samples(&self) -> usize {
        let hop = self.model.hop_length();
        let frames = (self.segment_s * self.model.sample_rate as f64 / hop as f64).round();
        (frames.max(1.0) as usize) * hop
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self, path: &str) -> Result<(), TrainError> {
        let bad = |field: &str, reason: String| TrainError::Config {
            path: path.to_string(),
            reason: format!("{field}: {reason}"),
        };
        self.model.validate(path)?;
        if self.model.latent.is_some() {
            return Err(bad("model", "only plain-RVQ codecs train here".into()));
        }
        if self.steps == 0 {
            return Err(bad("steps", "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1".into()));
        }
        if !(self.segment_s.is_finite() && self.segment_s > 0.0) {
            return Err(bad(
                "segment_s",
                format!("{} is not a positive length", self.segment_s),
            ));
        }
        if !(0.0..=1.0).contains(&self.data.augment_prob) {
            return Err(bad(
                "data.augment_prob",
                format!("{} not in [0, 1]", self.data.augment_prob),
            ));
        }
        self.data
            .augment
            .validate()
            .map_err(|e| bad("data.augment", e.to_string()))?;
        let o = &self.optim;
        if !(o.lr > 0.0 && o.min_lr >= 0.0 && o.min_lr <= o.lr) {
            return Err(bad(
                "optim.lr",
                format!("need 0 <= min_lr ({}) <= lr ({}), lr > 0", o.min_lr, o.lr),
            ));
        }
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
            return Err(bad("optim.beta1/beta2", "must be in [0, 1)".into()));
        }
        let q = &self.quantizer;
        if !(0.0..1.0).contains(&q.ema_decay) {
            return Err(bad(
                "quantizer.ema_decay",
                format!("{} not in [0, 1)", q.ema_decay),
            ));
        }
        if !(0.0..=1.0).contains(&q.dropout_prob) {
            return Err(bad(
                "quantizer.dropout_prob",
                format!("{} not in [0, 1]", q.dropout_prob),
            ));
        }
        if q.kmeans_batches == 0 {
            return Err(bad("quantizer.kmeans_batches", "must be at least 1".into()));
        }
        let seg = self.segment_samples();
        for r in &self.loss.stft {
            if r.n_fft / 2 >= seg || r.win_length > r.n_fft || r.hop == 0 {
                return Err(bad(
                    "loss.stft",
                    format!("{r:?} does not fit a {seg}-sample crop"),
                ));
            }
        }
        for r in &self.loss.mel {
            if r.n_fft / 2 >= seg || r.hop == 0 || r.n_mels == 0 {
                return Err(bad(
                    "loss.mel",
                    format!("{r:?} does not fit a {seg}-sample crop"),
                ));
            }
        }
        if self.loss.stft.is_empty() && self.loss.mel.is_empty() && self.loss.weights.time_l1 == 0.0
        {
            return Err(bad("loss", "no reconstruction loss is on".into()));
        }
        let b = &self.loss.balancer;
        if b.enabled && !(0.0..1.0).contains(&b.ema_decay) {
            return Err(bad(
                "loss.balancer.ema_decay",
                format!("{} not in [0, 1)", b.ema_decay),
            ));
        }
        if b.enabled && !(b.total_norm > 0.0 && b.total_norm.is_finite()) {
            return Err(bad(
                "loss.balancer.total_norm",
                format!("{} is not a positive number", b.total_norm),
            ));
        }
        Ok(())
    }
}
