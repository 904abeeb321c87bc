//! [`S2sTrainer`]: one S2S training run behind vaak-nn's [`RunModel`] (metrics log,
//! checkpoints with exact resume, validation, export).
//!
//! # Determinism
//!
//! The initial weights are drawn from `seed`; the order of batches of epoch `e` is a pure
//! function of `(seed, e)` (shuffle, sort by length within windows of
//! `batch_size * bucket_window`, cut into batches, shuffle the batches); every random choice
//! of a step (the `lm` stage's crop and cut point, the `cond` stage's speaker dropout) draws
//! from the trainer's [`TrainRng`]. A checkpoint stores the weights, the AdamW moments, the
//! RNG position, the epoch and the position in it, so a resumed run takes exactly the steps
//! the uninterrupted one would have.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use vaak_nn::train::run::{CheckpointParts, Intervals, Metric, RunModel, Validation};
use vaak_nn::train::{
    assign_vars, clip_grad_norm, grad_norm, AdamW, AdamWConfig, Checkpoint, LrSchedule, TrainRng,
    TrainState,
};

use crate::cond::{Emotion, SlotCondition};
use crate::config::{CodecSpec, S2sConfig};
use crate::error::{Result, S2sError};
use crate::model::{LossWeights, S2sModel, Sample};
use crate::train::config::{train_err, S2sTrainConfig, Stage};
use crate::train::data::S2sExample;

/// Speakers a `cond` export ships as voices.
pub const EXPORT_VOICES: usize = 8;

/// File of a model export naming the codec its tokens belong to.
pub const CODEC_FILE: &str = "codec.json";

/// `codec.json` of a model export: which codec (`vaak-16k` or a codec export directory) and
/// how many of its codebooks; the stage and step that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub codec: String,
    pub num_codebooks: usize,
    #[serde(default)]
    pub stage: Option<Stage>,
    #[serde(default)]
    pub step: Option<u64>,
}

impl ExportInfo {
    /// Reads `<dir>/codec.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(CODEC_FILE);
        let t = std::fs::read_to_string(&p).map_err(|e| S2sError::Io {
            path: p.clone(),
            source: e,
        })?;
        serde_json::from_str(&t).map_err(|e| S2sError::Json { path: p, source: e })
    }
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Steps completed after this one.
    pub step: u64,
    pub lr: f64,
    /// The weighted total loss.
    pub loss: f64,
    /// Cross-entropy per codebook.
    pub ce: Vec<f64>,
    /// Token accuracy per codebook (teacher forced).
    pub accuracy: Vec<f64>,
    pub text_ce: Option<f64>,
    pub text_accuracy: Option<f64>,
    /// Global grad norm before clipping.
    pub grad_norm: f64,
    /// Target frames in the batch.
    pub frames: usize,
    /// The update was skipped (non-finite gradients).
    pub skipped: bool,
}

/// Validation on the held-out examples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ValMetrics {
    pub loss: f64,
    pub ce: Vec<f64>,
    pub accuracy: Vec<f64>,
    pub text_accuracy: Option<f64>,
    pub examples: usize,
}

/// A training run of the S2S model on in-memory examples.
pub struct S2sTrainer {
    cfg: S2sTrainConfig,
    model_cfg: S2sConfig,
    model: S2sModel,
    vars: VarMap,
    params: Vec<(String, Var)>,
    opt: AdamW,
    schedule: LrSchedule,
    rng: TrainRng,
    step: u64,
    epoch: u64,
    batch_pos: usize,
    batches: Vec<Vec<usize>>,
    train: Vec<S2sExample>,
    val: Vec<S2sExample>,
    weights: LossWeights,
    codec_name: String,
    dropped: usize,
}

pub(crate) fn sorted_vars(vm: &VarMap) -> Result<Vec<(String, Var)>> {
    let mut v: Vec<(String, Var)> = vm
        .data()
        .lock()
        .map_err(|_| S2sError::BadInput("variable map lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Redraws every variable from `seed` with the distribution candle's (unseeded) init gave it,
/// so fresh runs with one seed start from the same weights: embeddings `N(0, 1)`, linear and
/// conv weights Kaiming normal (`N(0, 2 / fan_in)`), biases `U(+-1 / sqrt(fan_in))`, the null
/// speaker `N(0, 0.02)`; constant tensors (norm gains and shifts) stay as they are.
pub(crate) fn seeded_init(params: &[(String, Var)], seed: u64) -> Result<()> {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = TrainRng::new(seed).fork(0x1417);
    let dims: std::collections::HashMap<&str, &[usize]> =
        params.iter().map(|(n, v)| (n.as_str(), v.dims())).collect();
    for (name, v) in params {
        let n = v.elem_count();
        let vals = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if vals.iter().all(|&x| x == vals[0]) {
            continue;
        }
        let leaf = name.rsplit('.').next().unwrap_or("");
        let parent = name.rsplit_once('.').map_or("", |(p, _)| p);
        let is_embedding = leaf == "weight"
            && v.rank() == 2
            && (parent.split('.').any(|p| p.contains("emb"))
                || parent.ends_with("cond.emotion")
                || parent.ends_with("cond.language"));
        let fresh: Vec<f32> = if leaf == "bias" {
            let fan_in: usize = dims
                .get(format!("{parent}.weight").as_str())
                .map_or(1, |d| d[1..].iter().product());
            let b = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-b..b)).collect()
        } else {
            let std = if is_embedding {
                1.0
            } else if v.rank() >= 2 {
                let fan_in: usize = v.dims()[1..].iter().product();
                (2.0 / fan_in.max(1) as f32).sqrt()
            } else {
                0.02
            };
            (0..n)
                .map(|_| {
                    std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, &mut rng)
                })
                .collect()
        };
        v.set(&Tensor::from_vec(fresh, v.dims(), v.device())?.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

impl S2sTrainer {
    /// A run on `examples` (split into train and held-out here) over `codec`'s tokens: a
    /// fresh model from `cfg.preset` or, with `init`, the model exported in that directory
    /// (the previous curriculum stage). Examples too long for the model are dropped and
    /// counted ([`Self::dropped`]); a paired stage refuses unpaired examples.
    pub fn new(
        cfg: S2sTrainConfig,
        codec: CodecSpec,
        examples: Vec<S2sExample>,
        init: Option<&Path>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let (model, vars) = match init {
            Some(dir) => {
                let (m, vm) = S2sModel::load(dir, device)?;
                if m.config().codec.num_codebooks != codec.num_codebooks
                    || m.config().codec.cardinality != codec.cardinality
                {
                    return Err(S2sError::BadInput(format!(
                        "--init {}: the model reads {} codebooks of {} codes, the data has {} of {}",
                        dir.display(),
                        m.config().codec.num_codebooks,
                        m.config().codec.cardinality,
                        codec.num_codebooks,
                        codec.cardinality
                    )));
                }
                (m, vm)
            }
            None => {
                let mc = cfg.model_config(codec)?;
                let (m, vm) = S2sModel::init(&mc, device)?;
                seeded_init(&sorted_vars(&vm)?, cfg.seed)?;
                (m, vm)
            }
        };
        Self::build(cfg, model, vars, examples)
    }

    fn build(
        cfg: S2sTrainConfig,
        model: S2sModel,
        vars: VarMap,
        examples: Vec<S2sExample>,
    ) -> Result<Self> {
        let model_cfg = model.config().clone();
        let k = model_cfg.codec.num_codebooks;
        let weights = LossWeights {
            codebooks: cfg.codebook_weights(k)?,
            text: cfg.loss.text_weight,
        };
        if cfg.stage.paired() {
            let unpaired = examples.iter().filter(|e| !e.is_paired()).count();
            if unpaired > 0 {
                return Err(train_err(
                    "stage",
                    format!(
                        "stage {} trains on source/target pairs, but {unpaired} of {} examples \
                         have no source (unpaired clips train the lm stage)",
                        cfg.stage,
                        examples.len()
                    ),
                ));
            }
        }
        if model_cfg.text_vocab_size.is_some() {
            if cfg.stage == Stage::Lm {
                return Err(train_err(
                    "text_vocab_size",
                    "the lm stage trains on audio alone; a model with a text stream needs \
                     aligned text (stages s2s and cond with text tokens)",
                ));
            }
            if let Some(e) = examples
                .iter()
                .find(|e| e.text.as_ref().is_none_or(|t| t.len() != e.target.len()))
            {
                return Err(S2sError::BadInput(format!(
                    "example {}: the model has a text stream but the example has no text \
                     aligned to its {} target frames",
                    e.id,
                    e.target.len()
                )));
            }
        }
        if cfg.stage == Stage::Cond {
            if let Some(e) = examples.iter().find(|e| {
                e.speaker
                    .as_ref()
                    .is_some_and(|s| s.len() != model_cfg.speaker_dim)
            }) {
                return Err(S2sError::BadInput(format!(
                    "example {}: speaker embedding has {} values, the model takes {}",
                    e.id,
                    e.speaker.as_ref().map_or(0, |s| s.len()),
                    model_cfg.speaker_dim
                )));
            }
        }
        let n_in = examples.len();
        let fits = |e: &S2sExample| {
            !e.target.is_empty()
                && e.target.iter().all(|f| f.len() == k)
                && e.source.iter().all(|f| f.len() == k)
                && match cfg.stage {
                    Stage::Lm => e.target.len() >= 2,
                    _ => {
                        e.source.len() <= model_cfg.max_source_frames
                            && e.target.len() <= model_cfg.max_target_frames
                    }
                }
        };
        let mut examples: Vec<S2sExample> = examples.into_iter().filter(fits).collect();
        let dropped = n_in - examples.len();
        if dropped > 0 {
            tracing::warn!(
                "{dropped} of {n_in} example(s) dropped: wrong codebook count or longer than \
                 max_source_frames {} / max_target_frames {}",
                model_cfg.max_source_frames,
                model_cfg.max_target_frames
            );
        }
        // The held-out split: a seeded shuffle, the first ones held out.
        let n = examples.len();
        let n_val = if n >= 2 && cfg.data.val_fraction > 0.0 {
            ((n as f64 * cfg.data.val_fraction).round() as usize)
                .max(1)
                .min(cfg.data.val_max)
                .min(n - 1)
        } else {
            0
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut TrainRng::new(cfg.seed).fork(0x5917));
        let mut is_val = vec![false; n];
        for &i in &order[..n_val] {
            is_val[i] = true;
        }
        let mut train = Vec::with_capacity(n - n_val);
        let mut val = Vec::with_capacity(n_val);
        for (i, e) in examples.drain(..).enumerate() {
            if is_val[i] {
                val.push(e);
            } else {
                train.push(e);
            }
        }
        if train.is_empty() {
            return Err(S2sError::BadInput(
                "no training examples (all were dropped or held out)".into(),
            ));
        }
        let params = sorted_vars(&vars)?;
        let o = &cfg.optim;
        let opt = AdamW::new(
            params.clone(),
            AdamWConfig {
                lr: o.lr,
                beta1: o.beta1,
                beta2: o.beta2,
                weight_decay: o.weight_decay,
                ..Default::default()
            },
        )?;
        let mut t = Self {
            schedule: cfg.schedule(),
            rng: TrainRng::new(cfg.seed),
            cfg,
            model_cfg,
            model,
            vars,
            params,
            opt,
            step: 0,
            epoch: 0,
            batch_pos: 0,
            batches: Vec::new(),
            train,
            val,
            weights,
            codec_name: "vaak-16k".into(),
            dropped,
        };
        t.batches = t.epoch_batches(0);
        Ok(t)
    }

    /// Restores a run from `ckpt` with its own model config: `cfg` defaults to the
    /// checkpoint's (a given one may change e.g. `steps`); `examples` must be the run's data.
    pub fn resume(
        ckpt: &Checkpoint,
        cfg: Option<S2sTrainConfig>,
        examples: Vec<S2sExample>,
        device: &Device,
    ) -> Result<Self> {
        let bad = |reason: String| S2sError::BadInput(format!("{}: {reason}", ckpt.path.display()));
        let meta = &ckpt.state.metadata;
        let stored: S2sTrainConfig = serde_json::from_value(
            meta.get("config")
                .cloned()
                .ok_or_else(|| bad("state.json has no metadata.config".into()))?,
        )
        .map_err(|e| bad(format!("metadata.config: {e}")))?;
        let model_cfg: S2sConfig = serde_json::from_value(
            meta.get("model_config")
                .cloned()
                .ok_or_else(|| bad("state.json has no metadata.model_config".into()))?,
        )
        .map_err(|e| bad(format!("metadata.model_config: {e}")))?;
        let cfg = cfg.unwrap_or(stored);
        cfg.validate()?;
        let (model, vars) = S2sModel::init(&model_cfg, device)?;
        let mut t = Self::build(cfg, model, vars, examples)?;
        t.load_checkpoint(ckpt)?;
        Ok(t)
    }

    /// Records which codec the tokens belong to (written to the export's `codec.json`).
    pub fn set_codec_name(&mut self, name: &str) {
        self.codec_name = name.to_string();
    }

    /// Changes the total number of steps (the cosine follows the new total).
    pub fn set_total_steps(&mut self, steps: u64) {
        self.cfg.steps = steps.max(1);
        self.schedule = self.cfg.schedule();
    }

    pub fn config(&self) -> &S2sTrainConfig {
        &self.cfg
    }

    pub fn model_config(&self) -> &S2sConfig {
        &self.model_cfg
    }

    pub fn model(&self) -> &S2sModel {
        &self.model
    }

    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn train_examples(&self) -> &[S2sExample] {
        &self.train
    }

    pub fn val_examples(&self) -> &[S2sExample] {
        &self.val
    }

    /// Examples dropped as unusable (see [`Self::new`]).
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// The batches (indices into the training examples) of epoch `epoch`.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = TrainRng::new(self.cfg.seed).fork(1 + epoch);
        let mut idx: Vec<usize> = (0..self.train.len()).collect();
        idx.shuffle(&mut rng);
        let bs = self.cfg.batch_size;
        let len = |i: usize| self.train[i].source.len() + self.train[i].target.len();
        let mut batches = Vec::new();
        for win in idx.chunks(bs * self.cfg.data.bucket_window) {
            let mut win = win.to_vec();
            win.sort_by_key(|&i| len(i));
            batches.extend(win.chunks(bs).map(|b| b.to_vec()));
        }
        batches.shuffle(&mut rng);
        batches
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.batch_pos >= self.batches.len() {
            self.epoch += 1;
            self.batch_pos = 0;
            self.batches = self.epoch_batches(self.epoch);
        }
        self.batch_pos += 1;
        self.batches[self.batch_pos - 1].clone()
    }

    /// The neutral conditioning of the `lm` stage with a given language.
    fn neutral(language: crate::cond::Language) -> SlotCondition {
        SlotCondition {
            speaker: None,
            emotion: Emotion::Neutral,
            language,
            prosody: [0.0; 3],
        }
    }

    /// `lm`: a prompt/continuation cut of a clip's codes. With `rng`, a random window of up to
    /// `lm_max_frames` and a cut in its middle half; without, the first window cut in half
    /// (validation).
    fn lm_sample(&self, e: &S2sExample, rng: Option<&mut TrainRng>) -> Sample {
        let c = &e.target;
        let l = c.len().min(self.cfg.data.lm_max_frames);
        let max_t = self.model_cfg.max_target_frames;
        let max_s = self.model_cfg.max_source_frames;
        let (start, mut cut) = match rng {
            Some(rng) => {
                let start = rng.random_range(0..=c.len() - l);
                let lo = (l / 4).max(1);
                let hi = (3 * l / 4).max(lo).min(l - 1);
                (start, rng.random_range(lo..=hi))
            }
            None => (0, (l / 2).max(1)),
        };
        cut = cut.max(l.saturating_sub(max_t)).min(max_s).clamp(1, l - 1);
        let end = (start + l).min(start + cut + max_t);
        Sample {
            source: c[start..start + cut].to_vec(),
            target: c[start + cut..end].to_vec(),
            text: None,
            cond: Self::neutral(e.language),
        }
    }

    fn pair_sample(&self, e: &S2sExample, drop_speaker: bool) -> Sample {
        let cond = match self.cfg.stage {
            Stage::Cond => SlotCondition {
                speaker: if drop_speaker {
                    None
                } else {
                    e.speaker.clone()
                },
                emotion: e.emotion,
                language: e.language,
                prosody: e.prosody,
            },
            _ => Self::neutral(e.language),
        };
        Sample {
            source: e.source.clone(),
            target: e.target.clone(),
            text: e.text.clone(),
            cond,
        }
    }

    fn training_samples(&mut self, batch: &[usize]) -> Vec<Sample> {
        let mut rng = self.rng.clone();
        let out = batch
            .iter()
            .map(|&i| {
                let e = &self.train[i];
                match self.cfg.stage {
                    Stage::Lm => self.lm_sample(e, Some(&mut rng)),
                    Stage::S2s => self.pair_sample(e, false),
                    Stage::Cond => {
                        let drop = rng.random::<f64>() < self.cfg.cond.speaker_drop_prob;
                        self.pair_sample(e, drop)
                    }
                }
            })
            .collect();
        self.rng = rng;
        out
    }

    fn eval_samples(&self, examples: &[S2sExample]) -> Vec<Sample> {
        examples
            .iter()
            .map(|e| match self.cfg.stage {
                Stage::Lm => self.lm_sample(e, None),
                _ => self.pair_sample(e, false),
            })
            .collect()
    }

    /// One optimizer step on the next batch.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let lr = self.schedule.lr_at(self.step);
        self.opt.set_lr(lr);
        let batch = self.next_batch();
        let samples = self.training_samples(&batch);
        let frames = samples.iter().map(|s| s.target.len()).sum();
        let tf = self.model.forward_batch(&samples, true)?;
        let loss = self.model.loss(&tf, &self.weights)?;
        let mut grads = loss.total.backward()?;
        let vars: Vec<&Var> = self.params.iter().map(|(_, v)| v).collect();
        let clip = self.cfg.optim.clip_grad_norm;
        let gn = if clip > 0.0 {
            clip_grad_norm(&mut grads, &vars, clip)?
        } else {
            grad_norm(&grads, &vars)?
        };
        let skipped = !gn.is_finite();
        if skipped {
            tracing::warn!(
                "step {}: non-finite grad norm; update skipped",
                self.step + 1
            );
        } else {
            self.opt.step(&grads)?;
        }
        self.step += 1;
        let f = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        Ok(StepMetrics {
            step: self.step,
            lr,
            loss: f(&loss.total)?,
            ce: loss.per_codebook.iter().map(f).collect::<Result<_>>()?,
            accuracy: loss.accuracy.iter().map(f).collect::<Result<_>>()?,
            text_ce: loss.text_ce.as_ref().map(f).transpose()?,
            text_accuracy: loss.text_accuracy.as_ref().map(f).transpose()?,
            grad_norm: gn,
            frames,
            skipped,
        })
    }

    /// Loss and per-codebook accuracy over `examples` (teacher forced, no update), batch
    /// means weighted by the batch's examples.
    pub fn evaluate(&self, examples: &[S2sExample]) -> Result<ValMetrics> {
        let k = self.model_cfg.codec.num_codebooks;
        let mut m = ValMetrics {
            ce: vec![0.0; k],
            accuracy: vec![0.0; k],
            ..Default::default()
        };
        let mut text_acc = 0.0;
        let samples = self.eval_samples(examples);
        for chunk in samples.chunks(self.cfg.batch_size) {
            let tf = self.model.forward_batch(chunk, false)?;
            let l = self.model.loss(&tf, &self.weights)?;
            let w = chunk.len() as f64;
            m.loss += w * l.total.to_scalar::<f32>()? as f64;
            for c in 0..k {
                m.ce[c] += w * l.per_codebook[c].to_scalar::<f32>()? as f64;
                m.accuracy[c] += w * l.accuracy[c].to_scalar::<f32>()? as f64;
            }
            if let Some(a) = &l.text_accuracy {
                text_acc += w * a.to_scalar::<f32>()? as f64;
            }
            m.examples += chunk.len();
        }
        if m.examples > 0 {
            let n = m.examples as f64;
            m.loss /= n;
            m.ce.iter_mut().for_each(|x| *x /= n);
            m.accuracy.iter_mut().for_each(|x| *x /= n);
            if self.model_cfg.text_vocab_size.is_some() {
                m.text_accuracy = Some(text_acc / n);
            }
        }
        Ok(m)
    }

    /// Model tensors, optimizer moments and the train state (step, schedule, RNG, epoch and
    /// position, configs).
    pub fn checkpoint_parts(&self) -> Result<CheckpointParts> {
        let model = vaak_nn::train::named_tensors(&self.params);
        let opt = self.opt.state_tensors()?;
        let state = TrainState {
            step: self.step,
            schedule: Some(self.schedule.clone()),
            rng: Some(self.rng.state()),
            metadata: serde_json::json!({
                "config": self.cfg,
                "model_config": self.model_cfg,
                "epoch": self.epoch,
                "batch_pos": self.batch_pos,
                "codec": self.codec_name,
            }),
        };
        Ok((model, opt, state))
    }

    /// Restores weights, optimizer, RNG and data position from `ckpt`.
    pub fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let bad = |reason: &str| S2sError::BadInput(format!("{}: {reason}", ckpt.path.display()));
        assign_vars(&self.params, &ckpt.model)?;
        self.opt.load_state(&ckpt.optimizer)?;
        self.step = ckpt.state.step;
        let rng = ckpt
            .state
            .rng
            .as_ref()
            .ok_or_else(|| bad("state.json has no rng"))?;
        self.rng = TrainRng::from_state(rng)?;
        let meta = &ckpt.state.metadata;
        self.epoch = meta
            .get("epoch")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("state.json has no metadata.epoch"))?;
        self.batch_pos =
            meta.get("batch_pos")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| bad("state.json has no metadata.batch_pos"))? as usize;
        if let Some(c) = meta.get("codec").and_then(|v| v.as_str()) {
            self.codec_name = c.to_string();
        }
        self.batches = self.epoch_batches(self.epoch);
        self.schedule = self.cfg.schedule();
        Ok(())
    }

    /// `config.json` + `model.safetensors` (for [`S2sModel::load`]) and `codec.json`; a
    /// model trained with speakers (`cond` stage) also gets `voices/<id>.npy`: the first
    /// [`EXPORT_VOICES`] distinct training speakers, named by their example's id, for
    /// `vaak s2s translate --voice`.
    pub fn export(&self, dir: &Path) -> Result<()> {
        S2sModel::save(&self.model_cfg, &self.vars, dir)?;
        if self.cfg.stage == Stage::Cond {
            let vdir = dir.join(crate::speech::VOICES_DIR);
            std::fs::create_dir_all(&vdir).map_err(|e| S2sError::Io {
                path: vdir.clone(),
                source: e,
            })?;
            let mut seen: Vec<&[f32]> = Vec::new();
            for e in &self.train {
                let Some(spk) = e.speaker.as_deref() else {
                    continue;
                };
                if seen.len() >= EXPORT_VOICES {
                    break;
                }
                if seen.contains(&spk) {
                    continue;
                }
                seen.push(spk);
                let name: String =
                    e.id.chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect();
                Tensor::from_slice(spk, spk.len(), &Device::Cpu)?
                    .write_npy(vdir.join(format!("{name}.npy")))?;
            }
        }
        let info = ExportInfo {
            codec: self.codec_name.clone(),
            num_codebooks: self.model_cfg.codec.num_codebooks,
            stage: Some(self.cfg.stage),
            step: Some(self.step),
        };
        let p = dir.join(CODEC_FILE);
        let json = serde_json::to_string_pretty(&info).map_err(|e| S2sError::Json {
            path: p.clone(),
            source: e,
        })?;
        std::fs::write(&p, json).map_err(|e| S2sError::Io { path: p, source: e })
    }
}

impl RunModel for S2sTrainer {
    type Error = S2sError;
    type Step = StepMetrics;
    type Val = ValMetrics;

    fn step(&self) -> u64 {
        self.step
    }

    fn total_steps(&self) -> u64 {
        self.cfg.steps
    }

    fn intervals(&self) -> Intervals {
        self.cfg.intervals.clone()
    }

    fn config_yaml(&self) -> Result<String> {
        self.cfg.to_yaml()
    }

    fn train_step(&mut self) -> Result<StepMetrics> {
        S2sTrainer::train_step(self)
    }

    /// Interval means of the loss, per-codebook cross-entropy and accuracy, text terms and
    /// grad norm; the last lr; frames and skipped updates summed.
    fn metrics(&self, m: &StepMetrics) -> Vec<(&'static str, Metric)> {
        let mut v = vec![
            ("lr", Metric::Last(m.lr)),
            ("loss", Metric::Mean(m.loss)),
            ("ce", Metric::MeanVec(m.ce.clone())),
            ("accuracy", Metric::MeanVec(m.accuracy.clone())),
            ("grad_norm", Metric::Mean(m.grad_norm)),
            ("frames", Metric::Count(m.frames as u64)),
            ("skipped", Metric::Count(m.skipped as u64)),
        ];
        if let Some(t) = m.text_ce {
            v.push(("text_ce", Metric::Mean(t)));
        }
        if let Some(t) = m.text_accuracy {
            v.push(("text_accuracy", Metric::Mean(t)));
        }
        v
    }

    fn validate(&mut self) -> Result<Option<Validation<ValMetrics>>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let v = self.evaluate(&self.val)?;
        tracing::info!(
            "step {} val loss {:.4}, accuracy {:?}",
            self.step,
            v.loss,
            v.accuracy
                .iter()
                .map(|a| format!("{a:.3}"))
                .collect::<Vec<_>>()
        );
        let mut fields = serde_json::Map::new();
        fields.insert("val_loss".into(), v.loss.into());
        fields.insert("val_ce".into(), v.ce.clone().into());
        fields.insert("val_accuracy".into(), v.accuracy.clone().into());
        if let Some(t) = v.text_accuracy {
            fields.insert("val_text_accuracy".into(), t.into());
        }
        fields.insert("val_examples".into(), v.examples.into());
        Ok(Some(Validation { value: v, fields }))
    }

    fn save_state(&self) -> Result<CheckpointParts> {
        self.checkpoint_parts()
    }

    fn load_state(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.load_checkpoint(ckpt)
    }

    fn export(&self, dir: &Path) -> Result<()> {
        S2sTrainer::export(self, dir)
    }
}
