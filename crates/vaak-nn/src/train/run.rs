//! One training run for any model: the run directory, the resumable metrics log, the stop
//! flag, and the checkpoint, export and validation cadence. A model's trainer implements
//! [`RunModel`] (a step, its metrics, validation, export, checkpoint state) and [`run`] drives
//! it.
//!
//! # Run directory
//!
//! | path                  | what                                                          |
//! |-----------------------|---------------------------------------------------------------|
//! | `train_config.yaml`   | the resolved config ([`RunModel::config_yaml`])               |
//! | `metrics.jsonl`       | a line per `log_every` steps and one per validation           |
//! | `checkpoints/step_*/` | atomic checkpoints with a `latest` pointer ([`CheckpointManager`]) |
//! | `export/`             | the inference export, rewritten at every checkpoint and at the end |
//! | `plots/`              | whatever [`RunModel::plot`] draws after each validation       |
//!
//! # Metrics lines
//!
//! A log line holds `"step"`, the step [`Metric`]s folded over the steps since the previous
//! line (means, counts, the last value), the model's [`RunModel::log_fields`] and
//! `"steps_per_s"`. A validation line holds `"step"` and the fields [`RunModel::validate`]
//! returns. Every line also carries `"peak_host_mb"`, the process's peak resident memory so
//! far (`VmHWM`; left out where `/proc` is missing). Device memory is not logged: candle
//! 0.11.1 has no API for it. When a run resumes, lines of steps after the checkpoint (written by a run that
//! stopped without one) are dropped first, so no step is logged twice.
//!
//! # Resume
//!
//! [`RunModel::save_state`] and [`RunModel::load_state`] carry everything a step depends on
//! (weights, optimizer moments, RNG position, step), so `N` steps in one run and `N/2` steps,
//! a checkpoint, a restore and `N/2` more are bit-identical; [`resume_latest`] restores a run
//! directory's newest checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointManager, TrainState};
use crate::Error;

/// The resolved config of the run.
pub const CONFIG_FILE: &str = "train_config.yaml";
/// The metrics log.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoints (with their `latest` pointer).
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The inference export.
pub const EXPORT_DIR: &str = "export";
/// Pictures of the run.
pub const PLOTS_DIR: &str = "plots";

/// Model tensors, optimizer tensors and the train state of a checkpoint.
pub type CheckpointParts = (HashMap<String, Tensor>, HashMap<String, Tensor>, TrainState);

/// How often things happen, in optimizer steps (0: never, except the final checkpoint,
/// export and validation, which always run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Intervals {
    /// A metrics line in `metrics.jsonl` (averaged over the interval).
    pub log_every: u64,
    /// Validation on the held-out clips.
    pub val_every: u64,
    /// A checkpoint (and the inference export).
    pub ckpt_every: u64,
    /// Checkpoints kept (0: all).
    pub keep_last: usize,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            log_every: 10,
            val_every: 500,
            ckpt_every: 500,
            keep_last: 3,
        }
    }
}

/// One named number of a step, and how a log line folds it over the steps since the last.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// Averaged over the steps that reported it; a line leaves it out when none did.
    Mean(f64),
    /// Averaged element by element over the steps that reported it (e.g. per codebook).
    MeanVec(Vec<f64>),
    /// Summed (an integer in the line).
    Count(u64),
    /// The last step's value (e.g. the learning rate).
    Last(f64),
}

/// What a validation gives: the model's own value (kept for [`RunSummary::final_val`]) and the
/// fields of its `metrics.jsonl` line (next to `"step"`).
#[derive(Clone, Debug)]
pub struct Validation<V> {
    pub value: V,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A model's side of a training run.
pub trait RunModel {
    /// The model's error; the run's own (files, checkpoints) convert into it.
    type Error: From<Error> + std::fmt::Display;
    /// What a step returns (the `on_step` callback of [`run`] sees it).
    type Step;
    /// What a validation returns.
    type Val: Default;

    /// Steps completed.
    fn step(&self) -> u64;
    /// The step the run ends at.
    fn total_steps(&self) -> u64;
    /// Log, validation and checkpoint cadence.
    fn intervals(&self) -> Intervals;
    /// The resolved config, written to `train_config.yaml`.
    fn config_yaml(&self) -> Result<String, Self::Error>;
    /// Work before the first step of a run (e.g. initialising codebooks); once per [`run`].
    fn prepare(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// One optimizer step on the model's next batch.
    fn train_step(&mut self) -> Result<Self::Step, Self::Error>;
    /// The step's named numbers for the metrics log.
    fn metrics(&self, step: &Self::Step) -> Vec<(&'static str, Metric)>;
    /// Fields read from the model's state at each log line (e.g. codebook usage).
    fn log_fields(&self) -> Result<Vec<(&'static str, serde_json::Value)>, Self::Error> {
        Ok(Vec::new())
    }
    /// Validation; `None` when there is nothing to validate on.
    fn validate(&mut self) -> Result<Option<Validation<Self::Val>>, Self::Error> {
        Ok(None)
    }
    /// Pictures into `run_dir` after each validation (a failure is logged, never fatal).
    fn plot(&self, _run_dir: &Path) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Everything a checkpoint holds.
    fn save_state(&self) -> Result<CheckpointParts, Self::Error>;
    /// Restores what [`RunModel::save_state`] saved, so the next step is the one the saved
    /// run would have taken.
    fn load_state(&mut self, ckpt: &Checkpoint) -> Result<(), Self::Error>;
    /// Writes the inference export into `dir`.
    fn export(&self, dir: &Path) -> Result<(), Self::Error>;
}

/// Where [`run`] works and how it is stopped.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The run directory (see the module docs).
    pub out_dir: PathBuf,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary<V> {
    /// Steps completed.
    pub steps: u64,
    pub stopped_early: bool,
    pub last_checkpoint: Option<PathBuf>,
    pub export_dir: PathBuf,
    /// The last validation's value (the default when none ran).
    pub final_val: V,
    /// Steps of this run per second.
    pub steps_per_s: f64,
}

/// Saves `model`'s state through `mgr` (atomic, `latest` updated); returns its directory.
pub fn save_checkpoint<M: RunModel + ?Sized>(
    model: &M,
    mgr: &CheckpointManager,
) -> Result<PathBuf, M::Error> {
    let (tensors, opt, state) = model.save_state()?;
    Ok(mgr.save(&tensors, &opt, &state)?)
}

/// Restores `model` from the newest checkpoint of the run directory `run_dir`, if any;
/// returns that checkpoint's directory.
pub fn resume_latest<M: RunModel + ?Sized>(
    model: &mut M,
    run_dir: &Path,
    device: &Device,
) -> Result<Option<PathBuf>, M::Error> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    match CheckpointManager::new(dir, 0)?.load_latest(device)? {
        Some(ck) => {
            model.load_state(&ck)?;
            Ok(Some(ck.path))
        }
        None => Ok(None),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends JSON lines to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log; lines of steps after `keep_up_to` (from a run that crashed after its
    /// last checkpoint) are dropped so the resumed run does not log them twice.
    pub fn open(path: PathBuf, keep_up_to: u64) -> Result<Self, Error> {
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
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
            std::fs::write(&path, kept).map_err(|e| io_err(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        Ok(Self { path, file })
    }

    /// Appends one line.
    pub fn write(&mut self, v: &serde_json::Value) -> Result<(), Error> {
        writeln!(self.file, "{v}").map_err(|e| io_err(&self.path, e))?;
        self.file.flush().map_err(|e| io_err(&self.path, e))
    }
}

/// Peak resident memory of this process so far in MiB (`VmHWM` of `/proc/self/status`), or
/// `None` where that is not available (not Linux).
pub fn peak_host_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident memory of this process now in MiB (`VmRSS`), or `None` off Linux.
pub fn current_host_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Adds the memory fields to a metrics line.
fn add_memory(line: &mut serde_json::Value) {
    if let Some(mb) = peak_host_mb() {
        line["peak_host_mb"] = mb.into();
    }
}

/// A metric folded over the steps of a log interval.
enum Acc {
    Mean { sum: f64, n: usize },
    MeanVec { sum: Vec<f64>, n: usize },
    Count(u64),
    Last(f64),
}

/// Running folds of the step metrics between log lines, in first-seen order.
#[derive(Default)]
struct Window {
    steps: usize,
    acc: Vec<(&'static str, Acc)>,
}

impl Window {
    fn add(&mut self, metrics: Vec<(&'static str, Metric)>) {
        self.steps += 1;
        for (name, m) in metrics {
            let i = match self.acc.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    let fresh = match &m {
                        Metric::Mean(_) => Acc::Mean { sum: 0.0, n: 0 },
                        Metric::MeanVec(_) => Acc::MeanVec {
                            sum: Vec::new(),
                            n: 0,
                        },
                        Metric::Count(_) => Acc::Count(0),
                        Metric::Last(_) => Acc::Last(0.0),
                    };
                    self.acc.push((name, fresh));
                    self.acc.len() - 1
                }
            };
            match (&mut self.acc[i].1, m) {
                (Acc::Mean { sum, n }, Metric::Mean(v)) => {
                    *sum += v;
                    *n += 1;
                }
                (Acc::MeanVec { sum, n }, Metric::MeanVec(v)) => {
                    if sum.len() < v.len() {
                        sum.resize(v.len(), 0.0);
                    }
                    for (a, x) in sum.iter_mut().zip(&v) {
                        *a += x;
                    }
                    *n += 1;
                }
                (Acc::Count(c), Metric::Count(v)) => *c += v,
                (Acc::Last(l), Metric::Last(v)) => *l = v,
                (_, m) => tracing::warn!("metric {name} changed kind ({m:?}); ignored"),
            }
        }
    }

    /// The folded values as line fields.
    fn fields(&self, line: &mut serde_json::Value) {
        for (name, acc) in &self.acc {
            line[*name] = match acc {
                Acc::Mean { sum, n } => (sum / *n as f64).into(),
                Acc::MeanVec { sum, n } => {
                    sum.iter().map(|s| s / *n as f64).collect::<Vec<_>>().into()
                }
                Acc::Count(c) => (*c).into(),
                Acc::Last(v) => (*v).into(),
            };
        }
    }
}

/// The run state [`run`] threads through validation.
struct Validator<'a> {
    out: &'a Path,
    log: MetricsLog,
}

impl Validator<'_> {
    /// Validates, logs the line and draws the pictures; `None` when the model has nothing to
    /// validate on.
    fn validate<M: RunModel + ?Sized>(
        &mut self,
        model: &mut M,
    ) -> Result<Option<M::Val>, M::Error> {
        let Some(v) = model.validate()? else {
            return Ok(None);
        };
        let mut line = serde_json::Value::Object(v.fields);
        line["step"] = model.step().into();
        add_memory(&mut line);
        self.log.write(&line)?;
        // Pictures are a convenience: a failure to draw is logged, never fatal.
        if let Err(e) = model.plot(self.out) {
            tracing::warn!("step {}: plots not written: {e}", model.step());
        }
        Ok(Some(v.value))
    }
}

/// Trains `model` until [`RunModel::total_steps`] (or a stop request), logging, validating,
/// checkpointing and exporting into `opts.out_dir` (see the module docs); `on_step` sees
/// every step (progress bars). A stop request ends with a checkpoint; the last step always
/// gets a checkpoint, an export and a validation.
pub fn run<M>(
    model: &mut M,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&M::Step),
) -> Result<RunSummary<M::Val>, M::Error>
where
    M: RunModel + ?Sized,
{
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let cfg_path = out.join(CONFIG_FILE);
    std::fs::write(&cfg_path, model.config_yaml()?).map_err(|e| io_err(&cfg_path, e))?;
    let iv = model.intervals();
    let mgr = CheckpointManager::new(out.join(CHECKPOINTS_DIR), iv.keep_last)?;
    let log = MetricsLog::open(out.join(METRICS_FILE), model.step())?;
    let mut val = Validator { out, log };
    let export_dir = out.join(EXPORT_DIR);
    let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));

    model.prepare()?;

    let total = model.total_steps();
    let mut window = Window::default();
    let mut t_window = Instant::now();
    let t_run = Instant::now();
    let start_step = model.step();
    let mut last_ckpt = None;
    let mut last_ckpt_step = None;
    let mut last_val = M::Val::default();
    let mut last_val_step = None;
    let mut stopped = false;

    while model.step() < total {
        if stop_requested() {
            stopped = true;
            break;
        }
        let m = model.train_step()?;
        window.add(model.metrics(&m));
        on_step(&m);
        let s = model.step();
        if iv.log_every > 0 && (s.is_multiple_of(iv.log_every) || s == total) {
            let dt = t_window.elapsed().as_secs_f64().max(1e-9);
            let mut line = serde_json::json!({ "step": s });
            window.fields(&mut line);
            for (name, v) in model.log_fields()? {
                line[name] = v;
            }
            line["steps_per_s"] = (window.steps as f64 / dt).into();
            add_memory(&mut line);
            val.log.write(&line)?;
            window = Window::default();
            t_window = Instant::now();
        }
        if iv.val_every > 0 && s.is_multiple_of(iv.val_every) {
            if let Some(v) = val.validate(model)? {
                last_val = v;
                last_val_step = Some(s);
            }
        }
        if iv.ckpt_every > 0 && s.is_multiple_of(iv.ckpt_every) {
            last_ckpt = Some(save_checkpoint(model, &mgr)?);
            last_ckpt_step = Some(s);
            model.export(&export_dir)?;
        }
    }
    let end = model.step();
    if last_ckpt_step != Some(end) {
        last_ckpt = Some(save_checkpoint(model, &mgr)?);
    }
    model.export(&export_dir)?;
    if last_val_step != Some(end) {
        if let Some(v) = val.validate(model)? {
            last_val = v;
        }
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
