//! `vaak cascade`: run the teacher cascade over a manifest shard.
//!
//! Thin: flags become a [`vaak_cascade::Invocation`]; the library resolves config, shard
//! (flags, then `SLURM_ARRAY_TASK_ID`/`SLURM_ARRAY_TASK_COUNT`, then `JOB_COMPLETION_INDEX` +
//! `VAAK_NUM_SHARDS`), builds the teachers through `vaak_cascade::builtin::BuiltinTeachers` and runs.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use vaak_cascade::builtin::BuiltinTeachers;
use vaak_cascade::config::DEFAULT_CONFIG_YAML;
use vaak_cascade::{run_invocation, Direction, Invocation, Lang, Outcome, Overrides};

#[derive(Args, Debug)]
pub struct CascadeArgs {
    /// YAML config (see docs/cascade.md); without it the embedded defaults are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Source language of the manifest to read (default: the direction's source).
    #[arg(long)]
    pub lang: Option<String>,
    /// Translation direction, e.g. `ruen` (overrides pipeline.direction).
    #[arg(long)]
    pub direction: Option<String>,
    /// This process's shard (default: SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0).
    #[arg(long)]
    pub shard_idx: Option<usize>,
    /// Number of shards (default: SLURM_ARRAY_TASK_COUNT or VAAK_NUM_SHARDS, else 1).
    #[arg(long)]
    pub num_shards: Option<usize>,
    /// Device for the teachers, e.g. `cpu`, `cuda:0` (overrides compute.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Overrides data_root.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Overrides output_root.
    #[arg(long)]
    pub output_root: Option<PathBuf>,
    /// Overrides the manifest of --lang (or of the direction's source language).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Overrides pipeline.tier; `any` disables the tier filter.
    #[arg(long)]
    pub tier: Option<String>,
    /// Overrides compute.num_workers (audio loader threads).
    #[arg(long)]
    pub num_workers: Option<usize>,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub no_progress: bool,
    /// Read, shard and filter the manifest and print the plan; load no model.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the default config (every key, commented) and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Exit 0 even when some samples failed (they are in errors_<shard>.log either way).
    #[arg(long)]
    pub allow_errors: bool,
}

pub fn run(args: CascadeArgs) -> Result<()> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_YAML}");
        return Ok(());
    }
    let lang: Option<Lang> = args
        .lang
        .as_deref()
        .map(|l| l.parse().map_err(|e| anyhow::anyhow!("--lang: {e}")))
        .transpose()?;
    let direction: Option<Direction> = args
        .direction
        .as_deref()
        .map(|d| d.parse().map_err(|e| anyhow::anyhow!("--direction: {e}")))
        .transpose()?;
    let manifest = match (&args.manifest, lang.or(direction.map(|d| d.src))) {
        (Some(p), Some(l)) => Some((l, p.clone())),
        (Some(_), None) => {
            bail!("--manifest needs --lang or --direction to say whose manifest it is")
        }
        (None, _) => None,
    };
    let inv = Invocation {
        config: args.config.clone(),
        lang,
        shard_idx: args.shard_idx,
        num_shards: args.num_shards,
        overrides: Overrides {
            data_root: args.data_root,
            output_root: args.output_root,
            direction,
            device: args.device,
            num_workers: args.num_workers,
            tier: args.tier,
            manifest,
            no_progress: args.no_progress,
        },
        dry_run: args.dry_run,
    };
    // No context line on top: the library's message is the first line the user reads and says
    // what to fix (which file, which key); its causes follow.
    let outcome = run_invocation(&inv, &BuiltinTeachers, |k| std::env::var(k).ok())?;
    match outcome {
        Outcome::DryRun(plan) => {
            let report = serde_json::json!({
                "manifest": plan.manifest,
                "lang": plan.lang.code(),
                "shard_idx": plan.shard.idx,
                "num_shards": plan.shard.count,
                "manifest_rows": plan.manifest_rows,
                "manifest_malformed": plan.manifest_malformed,
                "shard_malformed": plan.shard_malformed,
                "shard_rows": plan.shard_rows,
                "filtered_by": plan.filtered,
                "to_process": plan.items.len(),
                "duration_h": plan.items.iter().map(|i| i.row.duration_s).sum::<f64>() / 3600.0,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Outcome::Ran(s) => {
            println!("{}", serde_json::to_string_pretty(&*s)?);
            if s.errored > 0 && !args.allow_errors {
                bail!(
                    "{} sample(s) failed (ok {}, bad {}, skipped {}, filtered {}); see {}",
                    s.errored,
                    s.ok,
                    s.bad,
                    s.skipped,
                    s.filtered,
                    s.errors_log
                );
            }
        }
    }
    Ok(())
}
