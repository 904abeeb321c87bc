//! vaak-cascade: the teacher cascade that turns speech manifests into a parallel
//! speech-to-speech dataset.
//!
//! Flow: [`config`] (YAML + flags) -> [`manifest`] (CSV) -> [`select`] (seeded shard, filters,
//! duplicate ids) -> [`pipeline`] (loader threads, batched teacher stages, writer thread) ->
//! [`output`] (per-sample directory, `DONE` last) with [`safe_id`] names and [`npy`] arrays.
//! [`run_invocation`] is what `vaak cascade` calls. See `docs/cascade.md`.

pub mod builtin;
pub mod config;
pub mod error;
pub mod manifest;
pub mod npy;
pub mod output;
pub mod paths;
pub mod pipeline;
pub mod safe_id;
pub mod select;
pub mod teachers;

use std::path::PathBuf;

pub use config::{Config, Direction, Overrides, Shard};
pub use error::{CascadeError, Result};
pub use pipeline::{plan, run, Plan, Summary};
pub use teachers::{TeacherFactory, Teachers, TokenCodec};
pub use vaak_teachers::Lang;

/// Everything `vaak cascade` was asked, before it is resolved against the config and the
/// environment.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// Config file; `None` runs on the embedded defaults.
    pub config: Option<PathBuf>,
    /// Source language of the manifest; defaults to the direction's source.
    pub lang: Option<Lang>,
    pub shard_idx: Option<usize>,
    pub num_shards: Option<usize>,
    pub overrides: Overrides,
    /// Plan only: read, shard and filter the manifest, report counts, load no model.
    pub dry_run: bool,
}

/// Outcome of [`run_invocation`].
#[derive(Clone, Debug)]
pub enum Outcome {
    DryRun(Box<Plan>),
    Ran(Box<Summary>),
}

/// The library entry point of `vaak cascade`: config, overrides, shard (flags, then
/// `SLURM_*`/`JOB_COMPLETION_INDEX` from `env`), teachers from `factory`, then the run.
pub fn run_invocation(
    inv: &Invocation,
    factory: &dyn TeacherFactory,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Outcome> {
    let mut cfg = match &inv.config {
        Some(p) => Config::load(p)?,
        None => Config::from_yaml_str(config::DEFAULT_CONFIG_YAML, "embedded defaults")?,
    };
    cfg.apply(&inv.overrides)?;
    let dir = cfg.pipeline.direction;
    let lang = inv.lang.unwrap_or(dir.src);
    if lang != dir.src {
        return Err(CascadeError::InvalidArgument(format!(
            "--lang {lang} does not match the source language of direction {dir}"
        )));
    }
    let shard = Shard::resolve(inv.shard_idx, inv.num_shards, env)?;
    let plan = pipeline::plan(&cfg, lang, shard)?;
    if inv.dry_run {
        return Ok(Outcome::DryRun(Box::new(plan)));
    }
    let teachers = Teachers::build(&cfg, factory)?;
    Ok(Outcome::Ran(Box::new(pipeline::run(
        &cfg, plan, &teachers,
    )?)))
}
