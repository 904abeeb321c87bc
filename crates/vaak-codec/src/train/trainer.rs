//! The codec trainer: one generator step, validation, exact-resume checkpoints, the
//! inference export, and [`run_training`], the run `vaak train codec` drives: the codec's
//! side of `vaak_nn::train::run` ([`CodecRun`] implements its `RunModel`).
//!
//! # What a step does
//!
//! A batch `[B, 1, T]` goes through [`Codec::forward_train`] (causal SEANet encoder,
//! straight-through RVQ where each item uses a random number of codebooks with probability
//! `quantizer.dropout_prob`, causal SEANet decoder). The loss is
//! `time_l1·|y − x|₁ + stft_sc·SC + stft_mag·logmag + mel·mel + commit·commitment`; its
//! gradient is clipped to a global norm and AdamW steps with the warm-up + cosine rate (with
//! `loss.balancer` on, the terms taken from the audio are balanced first: see
//! `vaak_nn::train::balancer`). Then
//! each codebook takes an EMA step on the residuals assigned to it, and codes whose EMA usage
//! fell below `dead_code_ratio` of the mean are restarted from this batch's residuals. The
//! codebooks are initialised by k-means on the latents of the first `kmeans_batches` batches.
//!
//! # Precision
//!
//! Master weights live in a `VarMap` in f32. The codec is rebuilt every step from casts of
//! them (free in f32: the cast is the variable itself), so with `dtype: bf16` the forward and
//! backward run in bf16 while AdamW updates f32 weights. Losses, metrics and the EMA codebooks
//! are f32. bf16 is meant for CUDA; on the CPU it is much slower than f32 (candle's CPU bf16
//! kernels are scalar), so the CLI keeps CPU runs in f32.
//!
//! # Resume
//!
//! A checkpoint holds the weights, the AdamW moments, the EMA codebooks (entries and usage),
//! the RNG position and the step, so `N` steps in one go and `N/2 + save/load + N/2` are
//! bit-identical. `vaak_nn::rvq::EmaCodebook::from_state` rebuilds the EMA sums as entries x
//! smoothed usage, which differs from the running sums by rounding (and Adam amplifies such
//! differences early in training), so the trainer puts every codebook into that form after
//! each update, and a restore then reproduces it exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::Serialize;
use vaak_audio::metrics::{si_sdr_db, snr_db, MelDistance, MelDistanceConfig};
use vaak_nn::rvq::{kmeans_init, sample_n_q, seeded_randn, Codebook, EmaCodebook};
use vaak_nn::train::run::{self, Intervals, Metric, RunModel, Validation};
use vaak_nn::train::{
    assign_vars, clip_grad_norm, grad_norm, AdamW, AdamWConfig, BalancedTerm, Checkpoint,
    CheckpointManager, LossBalancer, LrSchedule, TrainRng, TrainState,
};

use super::config::{CodecTrainConfig, TrainDtype};
use super::data::{Clip, TrainData};
use super::disc::{disc_loss, feature_matching_loss, gen_adv_loss, DiscOutput, Discriminators};
use super::loss::ReconLoss;
use super::TrainError;
use crate::codec::{save_vaak_checkpoint, Codec, Preset};

/// Names of EMA-learnt tensors (no gradient, not in the optimizer).
fn is_codebook(name: &str) -> bool {
    name.contains(".codebook.")
}

fn codebook_name(i: usize) -> String {
    format!("quantizer.layers.{i}.codebook.embed")
}

fn usage_name(i: usize) -> String {
    format!("quantizer.layers.{i}.codebook.cluster_size")
}

/// A `VarBuilder` backend over f32 master variables that hands out casts to the compute
/// dtype (the variables themselves in f32), so gradients land on the f32 variables.
struct MasterCast(VarMap);

impl SimpleBackend for MasterCast {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, DType::F32, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.0.data().lock().expect("VarMap lock");
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .data()
            .lock()
            .expect("VarMap lock")
            .contains_key(name)
    }
}

pub use vaak_nn::train::run::CheckpointParts;

/// A `VarMap`'s variables, sorted by name.
fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .expect("VarMap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// One step's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    /// Steps completed after this one.
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    pub time_l1: f64,
    pub stft_sc: f64,
    pub stft_mag: f64,
    pub mel: f64,
    pub commit: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Mean codebooks used per item (quantizer dropout).
    pub mean_n_q: f64,
    /// Per codebook: perplexity of this batch's codes (`exp` of their entropy).
    pub perplexity: Vec<f64>,
    /// Codes restarted this step, over all codebooks.
    pub restarted: usize,
    /// Whether the adversarial terms were on this step (then the three below are set).
    pub adversarial: bool,
    /// Discriminator loss (before its update).
    pub disc_loss: f64,
    /// Generator adversarial loss.
    pub gen_adv: f64,
    /// Feature-matching loss.
    pub feat: f64,
    /// Discriminator gradient norm before clipping.
    pub disc_grad_norm: f64,
    /// The update was skipped (non-finite gradient norm).
    pub skipped: bool,
    /// With the loss balancer: each balanced term's gradient norm with respect to the decoded
    /// audio (per item, averaged), before balancing.
    pub term_grad_norms: Vec<(&'static str, f64)>,
}

/// Wall seconds of each phase of one training step, measured when profiling is on
/// ([`CodecTrainer::set_profiling`]); the device is synchronised at each phase boundary, so on
/// CUDA the numbers are exact but the step is slower than without profiling.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepProfile {
    /// The training codec rebuilt from the master variables (casts in bf16).
    pub build_s: f64,
    /// Encoder, RVQ (straight-through, commitment) and decoder forward.
    pub forward_s: f64,
    /// Reconstruction losses forward (time L1, multi-resolution STFT, mel).
    pub losses_s: f64,
    /// Discriminator step: forward on real and fake, loss, backward, clipping, AdamW.
    pub disc_step_s: f64,
    /// Generator adversarial and feature-matching terms (discriminator forward twice).
    pub gen_adv_s: f64,
    /// Backward of the generator's total loss.
    pub backward_s: f64,
    /// Gradient norm and clipping.
    pub clip_s: f64,
    /// AdamW update.
    pub optim_s: f64,
    /// EMA codebook updates and dead-code restarts.
    pub ema_s: f64,
    /// Loss values and codes back to the host, perplexities.
    pub readback_s: f64,
}

impl StepProfile {
    /// The sum of the phases.
    pub fn total_s(&self) -> f64 {
        self.build_s
            + self.forward_s
            + self.losses_s
            + self.disc_step_s
            + self.gen_adv_s
            + self.backward_s
            + self.clip_s
            + self.optim_s
            + self.ema_s
            + self.readback_s
    }

    /// Adds `other` phase by phase (for means over steps).
    pub fn add(&mut self, other: &StepProfile) {
        self.build_s += other.build_s;
        self.forward_s += other.forward_s;
        self.losses_s += other.losses_s;
        self.disc_step_s += other.disc_step_s;
        self.gen_adv_s += other.gen_adv_s;
        self.backward_s += other.backward_s;
        self.clip_s += other.clip_s;
        self.optim_s += other.optim_s;
        self.ema_s += other.ema_s;
        self.readback_s += other.readback_s;
    }

    /// Every phase times `f`.
    pub fn scaled(&self, f: f64) -> StepProfile {
        StepProfile {
            build_s: self.build_s * f,
            forward_s: self.forward_s * f,
            losses_s: self.losses_s * f,
            disc_step_s: self.disc_step_s * f,
            gen_adv_s: self.gen_adv_s * f,
            backward_s: self.backward_s * f,
            clip_s: self.clip_s * f,
            optim_s: self.optim_s * f,
            ema_s: self.ema_s * f,
            readback_s: self.readback_s * f,
        }
    }
}

/// Phase timer of one step: a no-op unless profiling is on.
struct PhaseClock<'a> {
    device: &'a Device,
    last: Option<std::time::Instant>,
}

impl<'a> PhaseClock<'a> {
    fn new(device: &'a Device, on: bool) -> Self {
        Self {
            device,
            last: on.then(std::time::Instant::now),
        }
    }

    /// Seconds since the previous mark (after a device sync), added to `slot`.
    fn mark(&mut self, slot: &mut f64) -> Result<(), TrainError> {
        if let Some(t0) = self.last {
            self.device.synchronize()?;
            let now = std::time::Instant::now();
            *slot += (now - t0).as_secs_f64();
            self.last = Some(now);
        }
        Ok(())
    }
}

/// Validation at one number of codebooks, averaged over the held-out clips.
#[derive(Clone, Debug, Serialize)]
pub struct ValMetrics {
    pub n_q: usize,
    pub kbps: f64,
    /// Multi-resolution log-mel L1 (`vaak_audio::metrics::MelDistance`, FFT 512/1024/2048).
    pub mel_distance: f64,
    pub snr_db: f64,
    pub si_sdr_db: f64,
}

/// The discriminators and their optimizer (variables named `disc.*`).
struct Adversary {
    disc: Discriminators,
    params: Vec<(String, Var)>,
    opt: AdamW,
}

/// The generator (and, when configured, discriminator) training state.
pub struct CodecTrainer {
    cfg: CodecTrainConfig,
    device: Device,
    compute: DType,
    varmap: VarMap,
    /// Trainable variables (codebooks excluded), sorted by name.
    params: Vec<(String, Var)>,
    emas: Vec<EmaCodebook>,
    opt: AdamW,
    schedule: LrSchedule,
    rng: TrainRng,
    step: u64,
    codebooks_ready: bool,
    /// The STFT and mel losses, sharing their transforms.
    recon_loss: Option<ReconLoss>,
    dead_threshold: f64,
    adversary: Option<Adversary>,
    /// EnCodec's loss balancer, when `loss.balancer.enabled`.
    balancer: Option<LossBalancer>,
    /// Phase times of the last step, when profiling is on.
    profile: Option<StepProfile>,
}

impl CodecTrainer {
    /// A fresh run: weights drawn from `cfg.seed` (normal, std `1/sqrt(fan_in)`, zero
    /// biases), codebooks still to be initialised (see [`CodecTrainer::init_codebooks`]).
    pub fn new(cfg: CodecTrainConfig, device: &Device) -> Result<Self, TrainError> {
        cfg.validate("train config")?;
        let compute = match cfg.dtype {
            TrainDtype::F32 => DType::F32,
            TrainDtype::Bf16 => DType::BF16,
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_backend(
            Box::new(MasterCast(varmap.clone())),
            compute,
            device.clone(),
        );
        Codec::new(cfg.model.clone(), Preset::Vaak16k, vb)?;
        let params: Vec<(String, Var)> = sorted_vars(&varmap)
            .into_iter()
            .filter(|(n, _)| !is_codebook(n))
            .collect();
        let mut rng = TrainRng::new(cfg.seed);
        for (_, v) in &params {
            let dims = v.dims().to_vec();
            if dims.len() >= 2 {
                let fan_in: usize = dims[1..].iter().product();
                let n = v.elem_count();
                let w = (seeded_randn(&mut rng, n, 1, device)? / (fan_in.max(1) as f64).sqrt())?;
                v.set(&w.reshape(dims)?)?;
            }
        }
        let k = cfg.model.codebook_size;
        let d = cfg.model.seanet.dimension;
        let q = &cfg.quantizer;
        let mut emas = Vec::with_capacity(cfg.model.num_quantizers);
        for _ in 0..cfg.model.num_quantizers {
            emas.push(EmaCodebook::new(
                seeded_randn(&mut rng, k, d, device)?,
                q.ema_decay,
                q.ema_epsilon,
                0.0,
            )?);
        }
        let o = &cfg.optim;
        let opt = AdamW::new(
            params.clone(),
            AdamWConfig {
                lr: o.lr,
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
                ..Default::default()
            },
        )?;
        let schedule = o.schedule(cfg.steps);
        let sr = cfg.model.sample_rate;
        let recon_loss = if cfg.loss.stft.is_empty() && cfg.loss.mel.is_empty() {
            None
        } else {
            Some(ReconLoss::new(&cfg.loss.stft, &cfg.loss.mel, sr, device)?)
        };
        let frames = cfg.segment_samples() / cfg.model.hop_length();
        let dead_threshold = q.dead_code_ratio * (cfg.batch_size * frames) as f64 / k as f64;
        for e in &mut emas {
            e.threshold = dead_threshold;
        }
        let adversary = if cfg.adversarial.enabled {
            Some(Adversary::new(&cfg, &mut rng, device)?)
        } else {
            None
        };
        let balancer = cfg
            .loss
            .balancer
            .enabled
            .then(|| LossBalancer::new(cfg.loss.balancer.clone()));
        Ok(Self {
            cfg,
            device: device.clone(),
            compute,
            varmap,
            params,
            emas,
            opt,
            schedule,
            rng,
            step: 0,
            codebooks_ready: false,
            recon_loss,
            dead_threshold,
            adversary,
            balancer,
            profile: None,
        })
    }

    pub fn config(&self) -> &CodecTrainConfig {
        &self.cfg
    }

    /// Turns per-phase timing of each step on or off (see [`StepProfile`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(StepProfile::default);
    }

    /// The phase times of the last step (profiling on and a step taken), else `None`.
    pub fn last_profile(&self) -> Option<&StepProfile> {
        self.profile.as_ref()
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Whether the codebooks have been initialised (k-means).
    pub fn codebooks_ready(&self) -> bool {
        self.codebooks_ready
    }

    /// The trainable variables by name (codebooks excluded).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// EMA codebooks.
    pub fn codebooks(&self) -> &[EmaCodebook] {
        &self.emas
    }

    /// Crop length in samples.
    pub fn segment(&self) -> usize {
        self.cfg.segment_samples()
    }

    /// The codec in training form (weights are the live variables, in the compute dtype).
    fn training_codec(&self) -> Result<Codec, TrainError> {
        let vb = VarBuilder::from_backend(
            Box::new(MasterCast(self.varmap.clone())),
            self.compute,
            self.device.clone(),
        );
        let mut codec = Codec::new(self.cfg.model.clone(), Preset::Vaak16k, vb)?;
        for (i, e) in self.emas.iter().enumerate() {
            let embed = e.codebook().embed().to_dtype(self.compute)?;
            codec.set_codebook(i, Codebook::new(embed)?)?;
        }
        Ok(codec)
    }

    /// The inference weights under the names `Codec::load` reads.
    pub fn export_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut t: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        for (i, e) in self.emas.iter().enumerate() {
            t.insert(codebook_name(i), e.codebook().embed().detach());
        }
        Ok(t)
    }

    /// A detached f32 codec with the current weights, for validation and inference.
    pub fn inference_codec(&self) -> Result<Codec, TrainError> {
        let vb = VarBuilder::from_tensors(self.export_tensors()?, DType::F32, &self.device);
        Ok(Codec::new(self.cfg.model.clone(), Preset::Vaak16k, vb)?)
    }

    /// Writes `config.json` + `model.safetensors` for `Codec::load(dir, Preset::Vaak16k)`.
    pub fn export(&self, dir: &Path) -> Result<(), TrainError> {
        save_vaak_checkpoint(dir, &self.cfg.model, &self.export_tensors()?)?;
        Ok(())
    }

    /// A batch of random training crops `[batch_size, 1, segment]` (draws from the trainer's
    /// RNG, so it is part of the resumable state).
    pub fn sample_batch(&mut self, data: &TrainData) -> Result<Tensor, TrainError> {
        data.sample_batch(
            &mut self.rng,
            self.cfg.batch_size,
            self.cfg.segment_samples(),
            self.cfg.data.augment_prob,
            &self.cfg.data.augment,
            &self.device,
        )
    }

    /// k-means initialisation of every codebook, stage by stage on the residual of the
    /// previous ones, from the encoder latents of `batches`.
    pub fn init_codebooks(&mut self, batches: &[Tensor]) -> Result<(), TrainError> {
        if batches.is_empty() {
            return Err(TrainError::NoData(
                "no batch to initialise the codebooks".into(),
            ));
        }
        let codec = self.inference_codec()?;
        let mut rows = Vec::with_capacity(batches.len());
        for b in batches {
            let lat = codec.encode_latent(b)?; // [B, D, F]
            let (n, d, f) = lat.dims3()?;
            rows.push(lat.transpose(1, 2)?.contiguous()?.reshape((n * f, d))?);
        }
        let mut res = Tensor::cat(&rows, 0)?.to_dtype(DType::F32)?;
        let q = self.cfg.quantizer.clone();
        let k = self.cfg.model.codebook_size;
        for e in self.emas.iter_mut() {
            let centres = kmeans_init(&res, k, q.kmeans_iters, &mut self.rng)?;
            let cb = Codebook::new(centres.clone())?;
            let codes = cb.encode(&res)?;
            res = (&res - centres.index_select(&codes, 0)?)?;
            *e = EmaCodebook::new(centres, q.ema_decay, q.ema_epsilon, self.dead_threshold)?;
        }
        self.codebooks_ready = true;
        Ok(())
    }

    /// One optimizer step on `batch: [B, 1, T]` (`T` a multiple of the hop).
    pub fn train_step(&mut self, batch: &Tensor) -> Result<StepMetrics, TrainError> {
        if !self.codebooks_ready {
            return Err(TrainError::Config {
                path: "trainer".into(),
                reason: "codebooks not initialised (call init_codebooks first)".into(),
            });
        }
        let b = batch.dim(0)?;
        let dev = self.device.clone();
        let mut prof = StepProfile::default();
        let mut clock = PhaseClock::new(&dev, self.profile.is_some());
        let codec = self.training_codec()?;
        clock.mark(&mut prof.build_s)?;
        let q = &self.cfg.quantizer;
        let n_q = sample_n_q(
            &mut self.rng,
            b,
            self.cfg.model.num_quantizers,
            q.dropout_prob,
            q.dropout_per_item,
        );
        let mean_n_q = n_q.iter().sum::<usize>() as f64 / b as f64;
        let out = codec.forward_train(&batch.to_dtype(self.compute)?, &n_q)?;
        clock.mark(&mut prof.forward_s)?;
        let y = out.audio.to_dtype(DType::F32)?;
        let x = batch.to_dtype(DType::F32)?.detach();
        // With the balancer, the losses are taken on a detached copy of the audio so that
        // each one's gradient with respect to it can be read separately.
        let y_loss = match &self.balancer {
            Some(_) => Some(Var::from_tensor(&y.detach())?),
            None => None,
        };
        let y_in = y_loss.as_ref().map(|v| v.as_tensor()).unwrap_or(&y);
        let w = &self.cfg.loss.weights;
        let time_l1 = (y_in - &x)?.abs()?.mean_all()?;
        let mut total = (&time_l1 * w.time_l1)?;
        let zero = || Tensor::zeros((), DType::F32, &self.device);
        let (sc, mag, mel) = match &self.recon_loss {
            Some(l) => l.forward(y_in, &x)?,
            None => (zero()?, zero()?, zero()?),
        };
        let commit = out.commitment_loss.to_dtype(DType::F32)?;
        total = (total + (&sc * w.stft_sc)?)?;
        total = (total + (&mag * w.stft_mag)?)?;
        total = (total + (&mel * w.mel)?)?;
        total = (total + (&commit * w.commit)?)?;
        clock.mark(&mut prof.losses_s)?;
        let adv_cfg = self.cfg.adversarial.clone();
        // The adversarial losses, read back with the other metrics at the end of the step.
        let mut adv_losses = None;
        let mut disc_grad_norm = 0.0;
        if let Some(a) = self
            .adversary
            .as_mut()
            .filter(|_| self.step >= adv_cfg.start_step)
        {
            // Discriminator step on the detached reconstruction, then the generator terms
            // through the updated discriminators (HiFi-GAN's order).
            let real = a.disc.forward(&x)?;
            let fake = a.disc.forward(&y.detach())?;
            let dl = disc_loss(&real, &fake, adv_cfg.loss)?;
            let mut dg = dl.backward()?;
            let dvars: Vec<&Var> = a.params.iter().map(|(_, v)| v).collect();
            let dgn = if adv_cfg.clip_grad_norm > 0.0 {
                clip_grad_norm(&mut dg, &dvars, adv_cfg.clip_grad_norm)?
            } else {
                grad_norm(&dg, &dvars)?
            };
            if dgn.is_finite() {
                a.opt.step(&dg)?;
            } else {
                tracing::warn!(
                    "step {}: non-finite discriminator gradient; skipped",
                    self.step + 1
                );
            }
            clock.mark(&mut prof.disc_step_s)?;
            let real: Vec<DiscOutput> = a.disc.forward(&x)?.iter().map(|o| o.detach()).collect();
            let fake = a.disc.forward(y_in)?;
            let g_adv = gen_adv_loss(&fake, adv_cfg.loss)?;
            let feat = feature_matching_loss(&real, &fake)?;
            total = (total + (&g_adv * adv_cfg.adv_weight)?)?;
            total = (total + (&feat * adv_cfg.feat_weight)?)?;
            adv_losses = Some([dl, g_adv, feat]);
            disc_grad_norm = dgn;
            clock.mark(&mut prof.gen_adv_s)?;
        }
        let mut term_norms = Vec::new();
        let mut grads = match (&mut self.balancer, &y_loss) {
            (Some(bal), Some(y_var)) => {
                let mut terms = vec![
                    BalancedTerm {
                        name: "time_l1",
                        weight: w.time_l1,
                        loss: &time_l1,
                    },
                    BalancedTerm {
                        name: "stft_sc",
                        weight: w.stft_sc,
                        loss: &sc,
                    },
                    BalancedTerm {
                        name: "stft_mag",
                        weight: w.stft_mag,
                        loss: &mag,
                    },
                    BalancedTerm {
                        name: "mel",
                        weight: w.mel,
                        loss: &mel,
                    },
                ];
                if let Some([_, g_adv, feat]) = &adv_losses {
                    terms.push(BalancedTerm {
                        name: "gen_adv",
                        weight: adv_cfg.adv_weight,
                        loss: g_adv,
                    });
                    terms.push(BalancedTerm {
                        name: "feat",
                        weight: adv_cfg.feat_weight,
                        loss: feat,
                    });
                }
                let balanced = bal.balance(y_var, &terms)?;
                term_norms = balanced.norms;
                // d/dy of sum(y * g) is g: the balanced gradient enters the decoder here.
                let surrogate = (&y * balanced.grad.detach())?.sum_all()?;
                (surrogate + (&commit * w.commit)?)?.backward()?
            }
            _ => total.backward()?,
        };
        clock.mark(&mut prof.backward_s)?;
        let vars: Vec<&Var> = self.params.iter().map(|(_, v)| v).collect();
        let clip = self.cfg.optim.clip_grad_norm;
        let gn = if clip > 0.0 {
            clip_grad_norm(&mut grads, &vars, clip)?
        } else {
            grad_norm(&grads, &vars)?
        };
        clock.mark(&mut prof.clip_s)?;
        let lr = self.schedule.lr_at(self.step);
        let skipped = !gn.is_finite();
        if skipped {
            tracing::warn!(
                "step {}: non-finite gradient norm; update skipped",
                self.step + 1
            );
        } else {
            self.opt.set_lr(lr);
            self.opt.step(&grads)?;
        }
        clock.mark(&mut prof.optim_s)?;
        let mut perplexity = Vec::with_capacity(out.stages.len());
        let mut restarted = 0;
        if !skipped {
            let mut rows_f32 = Vec::with_capacity(out.stages.len());
            for (e, (rows, codes)) in self.emas.iter_mut().zip(&out.stages) {
                let rows = rows.to_dtype(DType::F32)?;
                e.update(&rows, codes)?;
                rows_f32.push(rows);
            }
            // Which codebooks have a code below the restart threshold: every usage vector in
            // one transfer (one host sync per step, not one per codebook); only those
            // codebooks go through `restart_dead_codes`, which draws from the RNG only when
            // it restarts something, so the draws are those of calling it on every codebook.
            let n = rows_f32.len();
            let usage: Vec<Tensor> = self.emas[..n]
                .iter()
                .map(|e| e.cluster_size().clone())
                .collect();
            let k = self.cfg.model.codebook_size;
            let usage = Tensor::cat(&usage, 0)?.to_vec1::<f32>()?;
            for (i, (e, rows)) in self.emas.iter_mut().zip(&rows_f32).enumerate() {
                let has_dead = usage[i * k..(i + 1) * k]
                    .iter()
                    .any(|&s| (s as f64) < e.threshold);
                if has_dead {
                    restarted += e.restart_dead_codes(rows, &mut self.rng)?.len();
                }
                // Keep the EMA sums in the form a checkpoint restores them in (entries x
                // smoothed usage, `EmaCodebook::from_state`), so resuming is bit-exact; this
                // moves the sums by float rounding only.
                *e = EmaCodebook::from_state(
                    e.codebook().embed().clone(),
                    e.cluster_size().clone(),
                    e.decay,
                    e.epsilon,
                    e.threshold,
                )?;
            }
        }
        clock.mark(&mut prof.ema_s)?;
        // Every loss and every stage's codes come back to the host in one transfer (one sync
        // per step instead of one per number); f32 holds the codes exactly (< 2^24).
        let mut losses = vec![total, time_l1, sc, mag, mel, commit];
        let adv_on = adv_losses.is_some();
        losses.extend(adv_losses.into_iter().flatten());
        let n_losses = losses.len();
        let mut parts = vec![Tensor::stack(&losses, 0)?.to_dtype(DType::F32)?];
        let mut code_lens = Vec::with_capacity(out.stages.len());
        for (_, codes) in &out.stages {
            code_lens.push(codes.elem_count());
            parts.push(codes.flatten_all()?.to_dtype(DType::F32)?);
        }
        let host = Tensor::cat(&parts, 0)?.to_vec1::<f32>()?;
        let (vals, mut codes_host) = host.split_at(n_losses);
        let k = self.cfg.model.codebook_size;
        for n in code_lens {
            let (stage, rest) = codes_host.split_at(n);
            let stage: Vec<u32> = stage.iter().map(|&c| c as u32).collect();
            perplexity.push(perplexity_of(&stage, k));
            codes_host = rest;
        }
        let val = |i: usize| vals[i] as f64;
        let adv = if adv_on {
            AdvTerms {
                on: true,
                disc_loss: val(6),
                gen_adv: val(7),
                feat: val(8),
                disc_grad_norm,
            }
        } else {
            AdvTerms::default()
        };
        clock.mark(&mut prof.readback_s)?;
        if self.profile.is_some() {
            self.profile = Some(prof);
        }
        self.step += 1;
        Ok(StepMetrics {
            step: self.step,
            lr,
            loss: val(0),
            time_l1: val(1),
            stft_sc: val(2),
            stft_mag: val(3),
            mel: val(4),
            commit: val(5),
            grad_norm: gn,
            mean_n_q,
            perplexity,
            restarted,
            skipped,
            adversarial: adv.on,
            disc_loss: adv.disc_loss,
            gen_adv: adv.gen_adv,
            feat: adv.feat,
            disc_grad_norm: adv.disc_grad_norm,
            term_grad_norms: term_norms,
        })
    }

    /// Fraction of each codebook's codes whose EMA usage is above the restart threshold.
    pub fn codebook_usage(&self) -> Result<Vec<f64>, TrainError> {
        self.emas
            .iter()
            .map(|e| {
                let s = e.cluster_size().to_vec1::<f32>()?;
                let alive = s
                    .iter()
                    .filter(|&&v| v as f64 >= self.dead_threshold)
                    .count();
                Ok(alive as f64 / s.len() as f64)
            })
            .collect()
    }

    /// Encodes and decodes each clip (cut to `max_samples`, whole frames) with the first
    /// `n` codebooks for each `n` in `n_qs`; averages mel distance, SNR and SI-SDR.
    pub fn validate(
        &self,
        clips: &[Clip],
        n_qs: &[usize],
        max_samples: usize,
    ) -> Result<Vec<ValMetrics>, TrainError> {
        let mut codec = self.inference_codec()?;
        let hop = codec.hop_length();
        let sr = codec.sample_rate();
        let md = MelDistance::new(MelDistanceConfig {
            sample_rate: sr as u32,
            ..Default::default()
        })?;
        let mut out = Vec::with_capacity(n_qs.len());
        for &n in n_qs {
            codec.set_num_codebooks(n)?;
            let (mut m, mut s, mut si, mut cnt) = (0.0, 0.0, 0.0, 0usize);
            for c in clips {
                let len = c.samples.len().min(max_samples) / hop * hop;
                if len == 0 {
                    continue;
                }
                let x = &c.samples[..len];
                let t = Tensor::from_slice(x, (1, 1, len), &self.device)?;
                let codes = codec.encode(&t)?;
                let y = codec.decode(&codes)?.flatten_all()?.to_vec1::<f32>()?;
                m += md.distance(x, &y)?;
                s += snr_db(x, &y)?;
                si += si_sdr_db(x, &y)?;
                cnt += 1;
            }
            if cnt == 0 {
                continue;
            }
            let c = cnt as f64;
            let kbps = n as f64
                * (self.cfg.model.codebook_size as f64).log2()
                * self.cfg.model.frame_rate()
                / 1000.0;
            out.push(ValMetrics {
                n_q: n,
                kbps,
                mel_distance: m / c,
                snr_db: s / c,
                si_sdr_db: si / c,
            });
        }
        Ok(out)
    }

    /// The checkpoint contents: model (weights + EMA codebooks and usage), optimizer state,
    /// and the train state (step, schedule, RNG, config).
    pub fn checkpoint_parts(&self) -> Result<CheckpointParts, TrainError> {
        let mut model = self.export_tensors()?;
        for (i, e) in self.emas.iter().enumerate() {
            model.insert(usage_name(i), e.cluster_size().detach());
        }
        let mut opt = self.opt.state_tensors()?;
        if let Some(a) = &self.adversary {
            for (n, v) in &a.params {
                model.insert(n.clone(), v.as_tensor().detach());
            }
            opt.extend(a.opt.state_tensors()?);
        }
        let state = TrainState {
            step: self.step,
            schedule: Some(self.schedule.clone()),
            rng: Some(self.rng.state()),
            metadata: serde_json::json!({
                "config": self.cfg,
                "codebooks_ready": self.codebooks_ready,
                "balancer": self.balancer.as_ref().map(|b| b.state()),
            }),
        };
        Ok((model, opt, state))
    }

    /// Saves a checkpoint through `mgr` (atomic, `latest` updated); returns its directory.
    pub fn save_checkpoint(&self, mgr: &CheckpointManager) -> Result<PathBuf, TrainError> {
        let (model, opt, state) = self.checkpoint_parts()?;
        Ok(mgr.save(&model, &opt, &state)?)
    }

    /// The training config stored in a checkpoint.
    pub fn checkpoint_config(ckpt: &Checkpoint) -> Result<CodecTrainConfig, TrainError> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: ckpt.path.clone(),
            reason,
        };
        let v = ckpt
            .state
            .metadata
            .get("config")
            .ok_or_else(|| bad("state.json has no metadata.config".into()))?;
        serde_json::from_value(v.clone()).map_err(|e| bad(format!("metadata.config: {e}")))
    }

    /// Restores a run from `ckpt`. `cfg` defaults to the checkpoint's own; a given one must
    /// describe the same model (other fields, e.g. `steps`, may differ).
    pub fn resume(
        ckpt: &Checkpoint,
        cfg: Option<CodecTrainConfig>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let stored = Self::checkpoint_config(ckpt)?;
        let cfg = match cfg {
            Some(c) if c.model != stored.model => {
                return Err(TrainError::Checkpoint {
                    path: ckpt.path.clone(),
                    reason: "its model config differs from the requested one".into(),
                })
            }
            Some(c) => c,
            None => stored,
        };
        let mut t = Self::new(cfg, device)?;
        t.load_state(ckpt)?;
        Ok(t)
    }

    /// Restores the state [`CodecTrainer::checkpoint_parts`] saved into this trainer (built
    /// with the checkpoint's model config): weights, EMA codebooks, optimizer moments,
    /// discriminators, step and RNG.
    pub fn load_state(&mut self, ckpt: &Checkpoint) -> Result<(), TrainError> {
        let t = self;
        let device = t.device.clone();
        let device = &device;
        let ck_err = |reason: String| TrainError::Checkpoint {
            path: ckpt.path.clone(),
            reason,
        };
        assign_vars(&t.params, &ckpt.model)?;
        let q = t.cfg.quantizer.clone();
        for i in 0..t.emas.len() {
            let get = |name: String| {
                ckpt.model
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| ck_err(format!("missing tensor {name}")))
            };
            let embed = get(codebook_name(i))?.to_device(device)?;
            let usage = get(usage_name(i))?.to_device(device)?;
            t.emas[i] = EmaCodebook::from_state(
                embed,
                usage,
                q.ema_decay,
                q.ema_epsilon,
                t.dead_threshold,
            )?;
        }
        t.opt.load_state(&ckpt.optimizer)?;
        if let Some(a) = &mut t.adversary {
            if !ckpt.model.keys().any(|k| k.starts_with("disc.")) {
                return Err(ck_err(
                    "adversarial training is on but the checkpoint has no discriminators".into(),
                ));
            }
            assign_vars(&a.params, &ckpt.model)?;
            a.opt.load_state(&ckpt.optimizer)?;
        }
        t.step = ckpt.state.step;
        let rng = ckpt
            .state
            .rng
            .as_ref()
            .ok_or_else(|| ck_err("state.json has no rng".into()))?;
        t.rng = TrainRng::from_state(rng)?;
        t.codebooks_ready = ckpt
            .state
            .metadata
            .get("codebooks_ready")
            .and_then(|v| v.as_bool())
            .unwrap_or(t.step > 0);
        t.schedule = t.cfg.optim.schedule(t.cfg.steps);
        if let Some(b) = &mut t.balancer {
            // A run that turns the balancer on at resume starts its running norms afresh.
            match ckpt.state.metadata.get("balancer") {
                Some(v) if !v.is_null() => b
                    .load_state(v)
                    .map_err(|e| ck_err(format!("metadata.balancer: {e}")))?,
                _ => *b = LossBalancer::new(b.config().clone()),
            }
        }
        Ok(())
    }

    /// Starts this (fresh) run from a codec export (`config.json` + `model.safetensors`, the
    /// layout [`CodecTrainer::export`] writes and `models/vaak-16k` holds): its weights and
    /// codebooks (EMA usage restarts at 1 per code), marked ready so no k-means runs. The
    /// optimizer, step, schedule and RNG stay fresh. The export's model config must equal
    /// this trainer's.
    pub fn init_from_export(&mut self, dir: &Path) -> Result<(), TrainError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
        let model =
            crate::config::CodecConfig::from_vaak_json(&text, &cfg_path.display().to_string())?;
        if model != self.cfg.model {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: "its model config differs from the training config's model".into(),
            });
        }
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &self.device)
            .map_err(|e| TrainError::io(&weights, e))?;
        assign_vars(&self.params, &tensors).map_err(|e| TrainError::Checkpoint {
            path: weights.clone(),
            reason: e.to_string(),
        })?;
        let q = self.cfg.quantizer.clone();
        for i in 0..self.emas.len() {
            let name = codebook_name(i);
            let embed = tensors.get(&name).ok_or_else(|| TrainError::Checkpoint {
                path: weights.clone(),
                reason: format!("missing tensor {name}"),
            })?;
            self.emas[i] = EmaCodebook::new(
                embed.to_dtype(DType::F32)?,
                q.ema_decay,
                q.ema_epsilon,
                self.dead_threshold,
            )?;
        }
        self.codebooks_ready = true;
        Ok(())
    }

    /// Changes the total number of steps (e.g. to extend a resumed run); the cosine schedule
    /// follows the new total.
    pub fn set_total_steps(&mut self, steps: u64) {
        self.cfg.steps = steps.max(1);
        self.schedule = self.cfg.optim.schedule(self.cfg.steps);
    }
}

impl Adversary {
    /// Builds the discriminators with weights drawn from `rng` (PyTorch's conv init: uniform
    /// `±1/sqrt(fan_in)` for `weight_v` and biases; `weight_g` as the builder sets it).
    fn new(
        cfg: &CodecTrainConfig,
        rng: &mut TrainRng,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let a = &cfg.adversarial;
        let vm = VarMap::new();
        let disc = Discriminators::new(
            &a.disc,
            VarBuilder::from_varmap(&vm, DType::F32, device).pp("disc"),
        )?;
        let params = sorted_vars(&vm);
        let dims_of: HashMap<String, Vec<usize>> = params
            .iter()
            .map(|(n, v)| (n.clone(), v.dims().to_vec()))
            .collect();
        for (n, v) in &params {
            // The VarMap's own random init is not seeded: redraw weights and biases.
            let weight = if n.ends_with("weight_v") {
                Some(n.clone())
            } else {
                n.strip_suffix("bias").map(|p| format!("{p}weight_v"))
            };
            let Some(w) = weight.and_then(|w| dims_of.get(&w).cloned()) else {
                continue;
            };
            let fan_in: usize = w[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let vals: Vec<f32> = (0..v.elem_count())
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), device)?)?;
        }
        let opt = AdamW::new(
            params.clone(),
            AdamWConfig {
                lr: a.lr,
                beta1: a.beta1,
                beta2: a.beta2,
                weight_decay: a.weight_decay,
                ..Default::default()
            },
        )?;
        Ok(Self { disc, params, opt })
    }
}

/// The `metrics.jsonl` key of a balanced term's gradient norm.
fn term_grad_norm_key(term: &str) -> &'static str {
    match term {
        "time_l1" => "grad_norm_time_l1",
        "stft_sc" => "grad_norm_stft_sc",
        "stft_mag" => "grad_norm_stft_mag",
        "mel" => "grad_norm_mel",
        "gen_adv" => "grad_norm_gen_adv",
        "feat" => "grad_norm_feat",
        _ => "grad_norm_other",
    }
}

/// This step's adversarial numbers (all zero while the adversary is off).
#[derive(Default)]
struct AdvTerms {
    on: bool,
    disc_loss: f64,
    gen_adv: f64,
    feat: f64,
    disc_grad_norm: f64,
}

/// `exp(entropy)` of the code histogram.
fn perplexity_of(codes: &[u32], k: usize) -> f64 {
    if codes.is_empty() {
        return 0.0;
    }
    let mut h = vec![0usize; k];
    for &c in codes {
        if (c as usize) < k {
            h[c as usize] += 1;
        }
    }
    let n = codes.len() as f64;
    let ent: f64 = h
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    ent.exp()
}

/// Where and how [`run_training`] works.
pub struct RunOptions {
    /// Run directory: `metrics.jsonl`, `train_config.yaml`, `checkpoints/`, `export/`, `plots/`.
    pub out_dir: PathBuf,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Numbers of codebooks validation reports (each `<= num_quantizers`).
    pub val_codebooks: Vec<usize>,
}

/// How a run ended (`final_val` empty when nothing was validated).
pub type RunSummary = run::RunSummary<Vec<ValMetrics>>;

/// A codec run: the trainer with its data and validation settings, as the model side of
/// `vaak_nn::train::run` (crops from the trainer's RNG, k-means before the first step, the
/// codec's loss terms in the metrics, validation at several codebook counts, pictures).
pub struct CodecRun<'a> {
    trainer: &'a mut CodecTrainer,
    data: &'a TrainData,
    /// Codebook counts validated.
    val_nq: Vec<usize>,
    /// Samples of each validation clip used.
    val_max: usize,
}

impl<'a> CodecRun<'a> {
    /// `val_codebooks` outside `1..=num_quantizers` are dropped; none left means all codebooks.
    pub fn new(
        trainer: &'a mut CodecTrainer,
        data: &'a TrainData,
        val_codebooks: &[usize],
    ) -> Self {
        let nq_max = trainer.config().model.num_quantizers;
        let mut val_nq: Vec<usize> = val_codebooks
            .iter()
            .copied()
            .filter(|&n| n >= 1 && n <= nq_max)
            .collect();
        if val_nq.is_empty() {
            val_nq.push(nq_max);
        }
        let val_max = (trainer.config().data.val_max_s * data.sample_rate() as f64) as usize;
        Self {
            trainer,
            data,
            val_nq,
            val_max,
        }
    }
}

impl RunModel for CodecRun<'_> {
    type Error = TrainError;
    type Step = StepMetrics;
    type Val = Vec<ValMetrics>;

    fn step(&self) -> u64 {
        self.trainer.step()
    }

    fn total_steps(&self) -> u64 {
        self.trainer.config().steps
    }

    fn intervals(&self) -> Intervals {
        self.trainer.config().intervals.clone()
    }

    fn config_yaml(&self) -> Result<String, TrainError> {
        self.trainer.config().to_yaml()
    }

    /// k-means initialisation of the codebooks on a fresh run.
    fn prepare(&mut self) -> Result<(), TrainError> {
        if !self.trainer.codebooks_ready() {
            let n = self.trainer.config().quantizer.kmeans_batches;
            let batches = (0..n)
                .map(|_| self.trainer.sample_batch(self.data))
                .collect::<Result<Vec<_>, _>>()?;
            self.trainer.init_codebooks(&batches)?;
            tracing::info!("codebooks initialised by k-means on {n} batch(es)");
        }
        Ok(())
    }

    fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        let batch = self.trainer.sample_batch(self.data)?;
        self.trainer.train_step(&batch)
    }

    /// Interval means of the loss terms, grad norm and perplexity per codebook; restarts and
    /// skipped updates summed; the adversarial terms averaged over the steps that had them.
    fn metrics(&self, m: &StepMetrics) -> Vec<(&'static str, Metric)> {
        let mut v = vec![
            ("lr", Metric::Last(m.lr)),
            ("loss", Metric::Mean(m.loss)),
            ("time_l1", Metric::Mean(m.time_l1)),
            ("stft_sc", Metric::Mean(m.stft_sc)),
            ("stft_mag", Metric::Mean(m.stft_mag)),
            ("mel", Metric::Mean(m.mel)),
            ("commit", Metric::Mean(m.commit)),
            ("grad_norm", Metric::Mean(m.grad_norm)),
            ("perplexity", Metric::MeanVec(m.perplexity.clone())),
            ("restarted", Metric::Count(m.restarted as u64)),
            ("skipped", Metric::Count(m.skipped as u64)),
        ];
        for &(term, n) in &m.term_grad_norms {
            v.push((term_grad_norm_key(term), Metric::Mean(n)));
        }
        if m.adversarial {
            v.extend([
                ("disc_loss", Metric::Mean(m.disc_loss)),
                ("gen_adv", Metric::Mean(m.gen_adv)),
                ("feat", Metric::Mean(m.feat)),
                ("disc_grad_norm", Metric::Mean(m.disc_grad_norm)),
            ]);
        }
        v
    }

    /// Codebook usage at the log step.
    fn log_fields(&self) -> Result<Vec<(&'static str, serde_json::Value)>, TrainError> {
        Ok(vec![("usage", self.trainer.codebook_usage()?.into())])
    }

    fn validate(&mut self) -> Result<Option<Validation<Vec<ValMetrics>>>, TrainError> {
        if self.data.val_clips().is_empty() {
            return Ok(None);
        }
        let step = self.trainer.step();
        let v = self
            .trainer
            .validate(self.data.val_clips(), &self.val_nq, self.val_max)?;
        for m in &v {
            tracing::info!(
                "step {step} val n_q {} ({:.2} kbps): mel {:.4}, SNR {:.2} dB, SI-SDR {:.2} dB",
                m.n_q,
                m.kbps,
                m.mel_distance,
                m.snr_db,
                m.si_sdr_db
            );
        }
        let mut fields = serde_json::Map::new();
        fields.insert(
            "val".into(),
            serde_json::to_value(&v).expect("plain numbers"),
        );
        fields.insert("held_out".into(), self.data.val_held_out().into());
        Ok(Some(Validation { value: v, fields }))
    }

    /// `plots/curves.png`, `plots/val_*.png` and `plots/val_step_<step>.png` (the first
    /// validation clip, original against decoded with all codebooks).
    fn plot(&self, run_dir: &Path) -> Result<(), TrainError> {
        super::plots::plot_curves(run_dir)?;
        if let Some(clip) = self.data.val_clips().first() {
            let step = self.trainer.step();
            let codec = self.trainer.inference_codec()?;
            let n = clip.samples.len().min(self.val_max);
            let path = run_dir
                .join(run::PLOTS_DIR)
                .join(format!("val_step_{step:08}.png"));
            let title = format!("step {step}: original (top) vs decoded (bottom)");
            super::plots::plot_reconstruction(&codec, &clip.samples[..n], &path, &title)?;
        }
        Ok(())
    }

    fn save_state(&self) -> Result<CheckpointParts, TrainError> {
        self.trainer.checkpoint_parts()
    }

    fn load_state(&mut self, ckpt: &Checkpoint) -> Result<(), TrainError> {
        self.trainer.load_state(ckpt)
    }

    fn export(&self, dir: &Path) -> Result<(), TrainError> {
        self.trainer.export(dir)
    }
}

/// Trains until `trainer.config().steps` (or `stop`), logging, validating, checkpointing and
/// exporting into `opts.out_dir`; `on_step` sees every step (progress bars).
///
/// Layout (`vaak_nn::train::run`): `metrics.jsonl` (a line per `log_every` steps with the
/// interval's mean losses, grad norm, lr, perplexity and usage per codebook, restarts,
/// steps/s; a `"val"` line per validation), `train_config.yaml` (the resolved config),
/// `checkpoints/step_*/` with a `latest` pointer, and `export/` (`config.json` +
/// `model.safetensors`, rewritten at every checkpoint and at the end), `plots/` (PNG curves
/// and a validation spectrogram, redrawn at every validation). A stop request ends with a
/// checkpoint.
pub fn run_training(
    trainer: &mut CodecTrainer,
    data: &TrainData,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<RunSummary, TrainError> {
    let mut model = CodecRun::new(trainer, data, &opts.val_codebooks);
    let run_opts = run::RunOptions {
        out_dir: opts.out_dir.clone(),
        stop: opts.stop.clone(),
    };
    run::run(&mut model, &run_opts, on_step)
}
