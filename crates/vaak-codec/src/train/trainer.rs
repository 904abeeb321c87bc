//! The codec trainer: one generator step, validation, exact-resume checkpoints, the
//! inference export, and [`run_training`], the loop `vaak train codec` drives.
//!
//! # What a step does
//!
//! A batch `[B, 1, T]` goes through [`Codec::forward_train`] (causal SEANet encoder,
//! straight-through RVQ where each item uses a random number of codebooks with probability
//! `quantizer.dropout_prob`, causal SEANet decoder). The loss is
//! `time_l1·|y − x|₁ + stft_sc·SC + stft_mag·logmag + mel·mel + commit·commitment`; its
//! gradient is clipped to a global norm and AdamW steps with the warm-up + cosine rate. Then
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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::Serialize;
use vaak_audio::metrics::{si_sdr_db, snr_db, MelDistance, MelDistanceConfig};
use vaak_nn::rvq::{kmeans_init, sample_n_q, seeded_randn, Codebook, EmaCodebook};
use vaak_nn::train::{
    assign_vars, clip_grad_norm, grad_norm, AdamW, AdamWConfig, Checkpoint, CheckpointManager,
    LrSchedule, TrainRng, TrainState,
};

use super::config::{CodecTrainConfig, TrainDtype};
use super::data::{Clip, TrainData};
use super::disc::{disc_loss, feature_matching_loss, gen_adv_loss, DiscOutput, Discriminators};
use super::loss::{MelLoss, MultiResStftLoss};
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

/// Model tensors, optimizer tensors and the train state of a checkpoint.
pub type CheckpointParts = (HashMap<String, Tensor>, HashMap<String, Tensor>, TrainState);

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
    stft_loss: Option<MultiResStftLoss>,
    mel_loss: Option<MelLoss>,
    dead_threshold: f64,
    adversary: Option<Adversary>,
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
        let mut all: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("VarMap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let params: Vec<(String, Var)> = all.into_iter().filter(|(n, _)| !is_codebook(n)).collect();
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
        let stft_loss = if cfg.loss.stft.is_empty() {
            None
        } else {
            Some(MultiResStftLoss::new(&cfg.loss.stft, device)?)
        };
        let mel_loss = if cfg.loss.mel.is_empty() {
            None
        } else {
            Some(MelLoss::new(&cfg.loss.mel, sr, device)?)
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
            stft_loss,
            mel_loss,
            dead_threshold,
            adversary,
        })
    }

    pub fn config(&self) -> &CodecTrainConfig {
        &self.cfg
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
        let codec = self.training_codec()?;
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
        let y = out.audio.to_dtype(DType::F32)?;
        let x = batch.to_dtype(DType::F32)?.detach();
        let w = &self.cfg.loss.weights;
        let time_l1 = (&y - &x)?.abs()?.mean_all()?;
        let mut total = (&time_l1 * w.time_l1)?;
        let zero = || Tensor::zeros((), DType::F32, &self.device);
        let (sc, mag) = match &self.stft_loss {
            Some(l) => l.forward(&y, &x)?,
            None => (zero()?, zero()?),
        };
        let mel = match &self.mel_loss {
            Some(l) => l.forward(&y, &x)?,
            None => zero()?,
        };
        let commit = out.commitment_loss.to_dtype(DType::F32)?;
        total = (total + (&sc * w.stft_sc)?)?;
        total = (total + (&mag * w.stft_mag)?)?;
        total = (total + (&mel * w.mel)?)?;
        total = (total + (&commit * w.commit)?)?;
        let adv_cfg = self.cfg.adversarial.clone();
        let mut adv = AdvTerms::default();
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
            let real: Vec<DiscOutput> = a.disc.forward(&x)?.iter().map(|o| o.detach()).collect();
            let fake = a.disc.forward(&y)?;
            let g_adv = gen_adv_loss(&fake, adv_cfg.loss)?;
            let feat = feature_matching_loss(&real, &fake)?;
            total = (total + (&g_adv * adv_cfg.adv_weight)?)?;
            total = (total + (&feat * adv_cfg.feat_weight)?)?;
            adv = AdvTerms {
                on: true,
                disc_loss: dl.to_scalar::<f32>()? as f64,
                gen_adv: g_adv.to_scalar::<f32>()? as f64,
                feat: feat.to_scalar::<f32>()? as f64,
                disc_grad_norm: dgn,
            };
        }
        let mut grads = total.backward()?;
        let vars: Vec<&Var> = self.params.iter().map(|(_, v)| v).collect();
        let clip = self.cfg.optim.clip_grad_norm;
        let gn = if clip > 0.0 {
            clip_grad_norm(&mut grads, &vars, clip)?
        } else {
            grad_norm(&grads, &vars)?
        };
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
        let mut perplexity = Vec::with_capacity(out.stages.len());
        let mut restarted = 0;
        if !skipped {
            for (e, (rows, codes)) in self.emas.iter_mut().zip(&out.stages) {
                let rows = rows.to_dtype(DType::F32)?;
                e.update(&rows, codes)?;
                restarted += e.restart_dead_codes(&rows, &mut self.rng)?.len();
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
        let k = self.cfg.model.codebook_size;
        for (_, codes) in &out.stages {
            perplexity.push(perplexity_of(&codes.to_vec1::<u32>()?, k));
        }
        self.step += 1;
        let scalar = |t: &Tensor| -> Result<f64, TrainError> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok(StepMetrics {
            step: self.step,
            lr,
            loss: scalar(&total)?,
            time_l1: scalar(&time_l1)?,
            stft_sc: scalar(&sc)?,
            stft_mag: scalar(&mag)?,
            mel: scalar(&mel)?,
            commit: scalar(&commit)?,
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
        Ok(t)
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
        let mut params: Vec<(String, Var)> = vm
            .data()
            .lock()
            .expect("VarMap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
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
    /// Run directory: `metrics.jsonl`, `train_config.yaml`, `checkpoints/`, `export/`.
    pub out_dir: PathBuf,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Numbers of codebooks validation reports (each `<= num_quantizers`).
    pub val_codebooks: Vec<usize>,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub steps: u64,
    pub stopped_early: bool,
    pub last_checkpoint: Option<PathBuf>,
    pub export_dir: PathBuf,
    pub final_val: Vec<ValMetrics>,
    pub steps_per_s: f64,
}

/// Appends JSON lines to `metrics.jsonl`.
struct MetricsLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl MetricsLog {
    /// Opens the log; lines of steps after `keep_up_to` (from a run that crashed after its
    /// last checkpoint) are dropped so the resumed run does not log them twice.
    fn open(path: PathBuf, keep_up_to: u64) -> Result<Self, TrainError> {
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= keep_up_to)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, kept).map_err(|e| TrainError::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    fn write(&self, v: &serde_json::Value) -> Result<(), TrainError> {
        let mut f = self.file.lock().expect("metrics lock");
        writeln!(f, "{v}").map_err(|e| TrainError::io(&self.path, e))?;
        f.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Running sums of step metrics between log lines.
#[derive(Default)]
struct Window {
    n: usize,
    loss: f64,
    time_l1: f64,
    stft_sc: f64,
    stft_mag: f64,
    mel: f64,
    commit: f64,
    grad_norm: f64,
    restarted: usize,
    skipped: usize,
    perplexity: Vec<f64>,
    adv_steps: usize,
    disc_loss: f64,
    gen_adv: f64,
    feat: f64,
    disc_grad_norm: f64,
}

impl Window {
    fn add(&mut self, m: &StepMetrics) {
        self.n += 1;
        self.loss += m.loss;
        self.time_l1 += m.time_l1;
        self.stft_sc += m.stft_sc;
        self.stft_mag += m.stft_mag;
        self.mel += m.mel;
        self.commit += m.commit;
        self.grad_norm += m.grad_norm;
        self.restarted += m.restarted;
        self.skipped += m.skipped as usize;
        if m.adversarial {
            self.adv_steps += 1;
            self.disc_loss += m.disc_loss;
            self.gen_adv += m.gen_adv;
            self.feat += m.feat;
            self.disc_grad_norm += m.disc_grad_norm;
        }
        if self.perplexity.len() < m.perplexity.len() {
            self.perplexity.resize(m.perplexity.len(), 0.0);
        }
        for (a, p) in self.perplexity.iter_mut().zip(&m.perplexity) {
            *a += p;
        }
    }
}

/// `plots/curves.png`, `plots/val_*.png` and `plots/val_step_<step>.png` (the first validation
/// clip, original against decoded with all codebooks).
fn draw_pictures(
    trainer: &CodecTrainer,
    data: &TrainData,
    out: &Path,
    val_max: usize,
) -> Result<(), TrainError> {
    super::plots::plot_curves(out)?;
    if let Some(clip) = data.val_clips().first() {
        let codec = trainer.inference_codec()?;
        let n = clip.samples.len().min(val_max);
        let path = out
            .join("plots")
            .join(format!("val_step_{:08}.png", trainer.step()));
        let title = format!(
            "step {}: original (top) vs decoded (bottom)",
            trainer.step()
        );
        super::plots::plot_reconstruction(&codec, &clip.samples[..n], &path, &title)?;
    }
    Ok(())
}

/// Trains until `trainer.config().steps` (or `stop`), logging, validating, checkpointing and
/// exporting into `opts.out_dir`; `on_step` sees every step (progress bars).
///
/// Layout: `metrics.jsonl` (a line per `log_every` steps with the interval's mean losses,
/// grad norm, lr, perplexity and usage per codebook, restarts, steps/s; a `"val"` line per
/// validation), `train_config.yaml` (the resolved config), `checkpoints/step_*/` with a
/// `latest` pointer, and `export/` (`config.json` + `model.safetensors`, rewritten at every
/// checkpoint and at the end), `plots/` (PNG curves and a validation spectrogram, redrawn at
/// every validation). A stop request ends with a checkpoint.
pub fn run_training(
    trainer: &mut CodecTrainer,
    data: &TrainData,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<RunSummary, TrainError> {
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let cfg_path = out.join("train_config.yaml");
    std::fs::write(&cfg_path, trainer.config().to_yaml()?)
        .map_err(|e| TrainError::io(&cfg_path, e))?;
    let mgr = CheckpointManager::new(
        out.join("checkpoints"),
        trainer.config().intervals.keep_last,
    )?;
    let log = MetricsLog::open(out.join("metrics.jsonl"), trainer.step())?;
    let export_dir = out.join("export");
    let nq_max = trainer.config().model.num_quantizers;
    let mut val_nq: Vec<usize> = opts
        .val_codebooks
        .iter()
        .copied()
        .filter(|&n| n >= 1 && n <= nq_max)
        .collect();
    if val_nq.is_empty() {
        val_nq.push(nq_max);
    }
    let val_max = (trainer.config().data.val_max_s * data.sample_rate() as f64) as usize;
    let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));

    if !trainer.codebooks_ready() {
        let n = trainer.config().quantizer.kmeans_batches;
        let batches = (0..n)
            .map(|_| trainer.sample_batch(data))
            .collect::<Result<Vec<_>, _>>()?;
        trainer.init_codebooks(&batches)?;
        tracing::info!("codebooks initialised by k-means on {n} batch(es)");
    }

    let total = trainer.config().steps;
    let iv = trainer.config().intervals.clone();
    let mut window = Window::default();
    let mut t_window = Instant::now();
    let t_run = Instant::now();
    let start_step = trainer.step();
    let mut last_ckpt = None;
    let mut last_ckpt_step = None;
    let mut last_val: Vec<ValMetrics> = Vec::new();
    let mut last_val_step = None;
    let mut stopped = false;
    let validate =
        |trainer: &CodecTrainer, log: &MetricsLog| -> Result<Vec<ValMetrics>, TrainError> {
            let v = trainer.validate(data.val_clips(), &val_nq, val_max)?;
            log.write(&serde_json::json!({
                "step": trainer.step(),
                "val": v,
                "held_out": data.val_held_out(),
            }))?;
            for m in &v {
                tracing::info!(
                    "step {} val n_q {} ({:.2} kbps): mel {:.4}, SNR {:.2} dB, SI-SDR {:.2} dB",
                    trainer.step(),
                    m.n_q,
                    m.kbps,
                    m.mel_distance,
                    m.snr_db,
                    m.si_sdr_db
                );
            }
            // Pictures are a convenience: a failure to draw is logged, never fatal.
            if let Err(e) = draw_pictures(trainer, data, out, val_max) {
                tracing::warn!("step {}: plots not written: {e}", trainer.step());
            }
            Ok(v)
        };

    while trainer.step() < total {
        if stop_requested() {
            stopped = true;
            break;
        }
        let batch = trainer.sample_batch(data)?;
        let m = trainer.train_step(&batch)?;
        window.add(&m);
        on_step(&m);
        let s = m.step;
        if iv.log_every > 0 && (s % iv.log_every == 0 || s == total) {
            let n = window.n.max(1) as f64;
            let dt = t_window.elapsed().as_secs_f64().max(1e-9);
            let mut line = serde_json::json!({
                "step": s,
                "lr": m.lr,
                "loss": window.loss / n,
                "time_l1": window.time_l1 / n,
                "stft_sc": window.stft_sc / n,
                "stft_mag": window.stft_mag / n,
                "mel": window.mel / n,
                "commit": window.commit / n,
                "grad_norm": window.grad_norm / n,
                "perplexity": window.perplexity.iter().map(|p| p / n).collect::<Vec<_>>(),
                "usage": trainer.codebook_usage()?,
                "restarted": window.restarted,
                "skipped": window.skipped,
                "steps_per_s": window.n as f64 / dt,
            });
            if window.adv_steps > 0 {
                let k = window.adv_steps as f64;
                line["disc_loss"] = (window.disc_loss / k).into();
                line["gen_adv"] = (window.gen_adv / k).into();
                line["feat"] = (window.feat / k).into();
                line["disc_grad_norm"] = (window.disc_grad_norm / k).into();
            }
            log.write(&line)?;
            window = Window::default();
            t_window = Instant::now();
        }
        if iv.val_every > 0 && s % iv.val_every == 0 && !data.val_clips().is_empty() {
            last_val = validate(trainer, &log)?;
            last_val_step = Some(s);
        }
        if iv.ckpt_every > 0 && s % iv.ckpt_every == 0 {
            last_ckpt = Some(trainer.save_checkpoint(&mgr)?);
            last_ckpt_step = Some(s);
            trainer.export(&export_dir)?;
        }
    }
    let end = trainer.step();
    if last_ckpt_step != Some(end) {
        last_ckpt = Some(trainer.save_checkpoint(&mgr)?);
    }
    trainer.export(&export_dir)?;
    if last_val_step != Some(end) && !data.val_clips().is_empty() {
        last_val = validate(trainer, &log)?;
    }
    let done = (end - start_step) as f64;
    Ok(RunSummary {
        steps: end,
        stopped_early: stopped,
        last_checkpoint: last_ckpt,
        export_dir,
        final_val: last_val,
        steps_per_s: done / t_run.elapsed().as_secs_f64().max(1e-9),
    })
}
