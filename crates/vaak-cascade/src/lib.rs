//! vaak-cascade: the teacher cascade that turns speech manifests into a parallel
//! speech-to-speech dataset.
//!
//! Flow: [`config`] (YAML + flags) -> `vaak_data::manifest` (CSV or JSONL) -> [`select`]
//! (seeded shard, filters, duplicate ids) -> [`pipeline`] (loader threads, batched teacher
//! stages, writer thread) -> `vaak_data::parallel` (the per-sample directory layout, `DONE`
//! last). The formats live in `vaak-data` so readers of the dataset need not depend on the
//! teachers; this crate is the orchestration. [`run_invocation`] is what `vaak cascade` calls.
//! See `docs/cascade.md`.
//!
//! [`synth`] is `vaak data synth`, a seeded synthetic speech corpus spoken by the teachers'
//! espeak-ng voice; it lives here because it needs `vaak-teachers`.

pub mod builtin;
pub mod config;
pub mod error;
pub mod pipeline;
pub mod select;
pub mod synth;
pub mod teachers;

use std::path::PathBuf;

pub use config::{Config, Direction, Overrides, Shard};
pub use error::{CascadeError, Result};
pub use pipeline::{plan, run, Plan, Summary};
pub use teachers::{TeacherFactory, Teachers, TokenCodec};
pub use vaak_data::Lang;

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

/// Checks, before any manifest row is read or any model loaded (and so in a dry run too), that
/// the manifest of `lang` is a file and `data_root` a directory; the error names the path and
/// where it came from (the flag or the config key).
pub fn check_inputs(cfg: &Config, lang: Lang, o: &Overrides) -> Result<()> {
    fn problem(p: &std::path::Path, want_dir: bool) -> Option<String> {
        match std::fs::metadata(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".into()),
            Err(e) => Some(format!("cannot be read ({e})")),
            Ok(m) if want_dir && !m.is_dir() => Some("is not a directory".into()),
            Ok(m) if !want_dir && m.is_dir() => Some("is a directory, not a file".into()),
            Ok(_) => None,
        }
    }
    if let Some(path) = cfg.manifests.get(lang) {
        if let Some(problem) = problem(path, false) {
            return Err(CascadeError::Manifest {
                lang: lang.code().to_string(),
                path: path.clone(),
                origin: if o.manifest.as_ref().is_some_and(|(l, _)| *l == lang) {
                    "--manifest".into()
                } else {
                    format!("config key manifests.{}", lang.code())
                },
                problem,
            });
        }
    }
    if let Some(problem) = problem(&cfg.data_root, true) {
        return Err(CascadeError::DataRoot {
            path: cfg.data_root.clone(),
            origin: if o.data_root.is_some() {
                "--data-root".into()
            } else {
                "config key data_root".into()
            },
            problem,
        });
    }
    Ok(())
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
    check_inputs(&cfg, lang, &inv.overrides)?;
    let plan = pipeline::plan(&cfg, lang, shard)?;
    if inv.dry_run {
        return Ok(Outcome::DryRun(Box::new(plan)));
    }
    let teachers = Teachers::build(&cfg, factory)?;
    Ok(Outcome::Ran(Box::new(pipeline::run(
        &cfg, plan, &teachers,
    )?)))
}
