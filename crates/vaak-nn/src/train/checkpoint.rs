//! Atomic, resumable training checkpoints.
//!
//! Layout of a checkpoint directory:
//! ```text
//! <dir>/step_00001000/{model.safetensors, optimizer.safetensors, state.json}
//! <dir>/latest                      "step_00001000"
//! ```
//! A checkpoint is written into `<dir>/.tmp-step_<N>-<pid>-<n>/` (state.json last), every file
//! and the directory are fsynced, and only then is it renamed to `step_<N>`; `latest` is
//! replaced last, by rename. A crash at any point leaves either the previous checkpoint or the
//! new one as the latest complete one, never a half-written one: loaders ignore `.tmp-*`
//! directories and any `step_*` directory without all three files and a parseable
//! `state.json` whose step matches its name. One writer per directory is assumed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::rng::RngState;
use super::schedule::LrSchedule;
use crate::error::{Error, Result};

/// Model parameters inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state ([`super::AdamW::state_tensors`]) inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// [`TrainState`] as JSON, written last inside a checkpoint directory.
pub const STATE_FILE: &str = "state.json";
/// The pointer file naming the newest checkpoint directory.
pub const LATEST_FILE: &str = "latest";
const TMP_PREFIX: &str = ".tmp-";

/// Everything besides tensors needed to resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub schedule: Option<LrSchedule>,
    pub rng: Option<RngState>,
    /// Free-form user data (config, data-loader position, metrics...).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// The tensors of named variables, for saving.
pub fn named_tensors(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect()
}

/// Sets each variable from `tensors[name]`; all names are checked (presence, shape, dtype)
/// before any variable is changed.
pub fn assign_vars(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.clone(),
            files: "checkpoint model".into(),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::ShapeMismatch {
                name: name.clone(),
                file: "checkpoint model".into(),
                expected: var.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
    }
    for (name, var) in vars {
        let t = &tensors[name];
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Flushes a directory's entries (new names, renames) to disk.
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(path).map_err(io(path))?;
        d.sync_all().map_err(io(path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn safetensors_bytes(tensors: &HashMap<String, Tensor>, what: &Path) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| Error::Msg(format!("serializing {}: {e}", what.display())))
}

fn dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Checks the files of a checkpoint directory without loading tensors; returns its state.
fn check_complete(path: &Path) -> Result<TrainState> {
    let incomplete = |reason: String| Error::CheckpointIncomplete {
        path: path.to_path_buf(),
        reason,
    };
    for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !path.join(f).is_file() {
            return Err(incomplete(format!("{f} is missing")));
        }
    }
    let text =
        std::fs::read_to_string(path.join(STATE_FILE)).map_err(io(&path.join(STATE_FILE)))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| incomplete(format!("{STATE_FILE}: {e}")))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(step) = parse_dir_name(name) {
        if step != state.step {
            return Err(incomplete(format!(
                "{STATE_FILE} says step {} but the directory is {name}",
                state.step
            )));
        }
    }
    Ok(state)
}

/// Loads one checkpoint directory onto `device`.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    let state = check_complete(path)?;
    let load = |f: &str| {
        let p = path.join(f);
        candle_core::safetensors::load(&p, device).map_err(|e| Error::CheckpointIncomplete {
            path: path.to_path_buf(),
            reason: format!("{f}: {e}"),
        })
    };
    Ok(Checkpoint {
        path: path.to_path_buf(),
        model: load(MODEL_FILE)?,
        optimizer: load(OPTIMIZER_FILE)?,
        state,
    })
}

/// Complete checkpoints in `dir`, oldest first.
fn complete_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = parse_dir_name(&name) else {
            continue;
        };
        let p = entry.path();
        if !p.is_dir() {
            continue;
        }
        match check_complete(&p) {
            Ok(_) => out.push((step, p)),
            Err(e) => tracing::warn!("ignoring checkpoint: {e}"),
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint in `dir`: the one `latest` names if it is complete, else
/// the complete `step_*` directory with the highest step. `None` when there is none.
pub fn latest_path(dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir.join(LATEST_FILE);
    if let Ok(text) = std::fs::read_to_string(&pointer) {
        let name = text.trim();
        if parse_dir_name(name).is_some() {
            let p = dir.join(name);
            match check_complete(&p) {
                Ok(_) => return Ok(Some(p)),
                Err(e) => tracing::warn!(
                    "{} points at an unusable checkpoint: {e}",
                    pointer.display()
                ),
            }
        } else {
            tracing::warn!(
                "{} holds {name:?}, not a checkpoint name",
                pointer.display()
            );
        }
    }
    Ok(complete_checkpoints(dir)?.pop().map(|(_, p)| p))
}

/// Loads the newest complete checkpoint in `dir` (see [`latest_path`]).
pub fn load_latest(dir: &Path, device: &Device) -> Result<Option<Checkpoint>> {
    match latest_path(dir)? {
        Some(p) => Ok(Some(load_checkpoint(&p, device)?)),
        None => Ok(None),
    }
}

/// Writes checkpoints into one directory and prunes old ones.
#[derive(Clone, Debug)]
pub struct CheckpointManager {
    dir: PathBuf,
    keep_last_n: usize,
}

impl CheckpointManager {
    /// Manages `dir` (created if needed), keeping the newest `keep_last_n` checkpoints
    /// (at least one; `0` means keep all).
    pub fn new(dir: impl Into<PathBuf>, keep_last_n: usize) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self { dir, keep_last_n })
    }

    /// The managed directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Atomically writes checkpoint `state.step` and points `latest` at it; returns its path.
    /// Saving a step that already exists replaces it.
    pub fn save(
        &self,
        model: &HashMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
        state: &TrainState,
    ) -> Result<PathBuf> {
        let name = dir_name(state.step);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{name}-{}-{n}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let write = || -> Result<()> {
            let p = tmp.join(MODEL_FILE);
            write_synced(&p, &safetensors_bytes(model, &p)?)?;
            let p = tmp.join(OPTIMIZER_FILE);
            write_synced(&p, &safetensors_bytes(optimizer, &p)?)?;
            let json = serde_json::to_vec_pretty(state)
                .map_err(|e| Error::Msg(format!("serializing train state: {e}")))?;
            write_synced(&tmp.join(STATE_FILE), &json)?;
            sync_dir(&tmp)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }

        let dst = self.dir.join(&name);
        if dst.exists() {
            // rename() cannot replace a non-empty directory: move the old one aside first.
            let old = self
                .dir
                .join(format!("{TMP_PREFIX}old-{name}-{}-{n}", std::process::id()));
            std::fs::rename(&dst, &old).map_err(io(&dst))?;
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
            sync_dir(&self.dir)?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        }
        sync_dir(&self.dir)?;

        let ptmp = self.dir.join(format!(
            "{TMP_PREFIX}{LATEST_FILE}-{}-{n}",
            std::process::id()
        ));
        write_synced(&ptmp, format!("{name}\n").as_bytes())?;
        let latest = self.dir.join(LATEST_FILE);
        std::fs::rename(&ptmp, &latest).map_err(io(&latest))?;
        sync_dir(&self.dir)?;

        self.prune(&dst)?;
        Ok(dst)
    }

    /// Removes complete checkpoints beyond the newest `keep_last_n` (never `keep`), and
    /// leftovers of interrupted saves.
    fn prune(&self, keep: &Path) -> Result<()> {
        let rd = std::fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        for entry in rd {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                let p = entry.path();
                let res = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                res.map_err(io(&p))?;
            }
        }
        if self.keep_last_n == 0 {
            return Ok(());
        }
        let all = complete_checkpoints(&self.dir)?;
        let excess = all.len().saturating_sub(self.keep_last_n);
        for (_, p) in all.into_iter().take(excess) {
            if p != keep {
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }

    /// Path of the newest complete checkpoint.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        latest_path(&self.dir)
    }

    /// Loads the newest complete checkpoint.
    pub fn load_latest(&self, device: &Device) -> Result<Option<Checkpoint>> {
        load_latest(&self.dir, device)
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        complete_checkpoints(&self.dir)
    }
}
