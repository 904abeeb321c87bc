//! `vaak check`: the system check. Starts the server on 127.0.0.1 (a free port) with the given
//! models and drives it like a user: codec (echo), model (translate), voices, context (two turns
//! in converse), barge-in and end-to-end latency; prints a pass/fail table and exits non-zero
//! when a check fails.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use vaak_server::check::{run_check, CheckOptions};
use vaak_server::ServeConfig;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A serve.toml; the flags below override it (host and port are always 127.0.0.1:free).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Codec: `vaak-16k` (bundled) or a codec export directory.
    #[arg(long)]
    codec: Option<String>,
    /// S2S model: `bundled`, a model export directory, or `random:<preset>` (tiny, small, base:
    /// random weights on the bundled codec, to check the serving path without a trained model).
    #[arg(long)]
    s2s: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Goal for the median end of speech -> first reply audio, endpoint silence excluded (ms).
    #[arg(long, default_value_t = 400.0)]
    target_ms: f64,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => ServeConfig::from_file(p).with_context(|| format!("reading {}", p.display()))?,
        None => ServeConfig::default(),
    };
    if let Some(c) = &args.codec {
        cfg.codec = c.clone();
    }
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    let tmp = tempfile::tempdir().context("temp dir")?;
    if let Some(s) = &args.s2s {
        cfg.s2s = match s.strip_prefix("random:") {
            Some(preset) => {
                let dir = tmp.path().join(format!("random-{preset}"));
                vaak_server::client::write_random_s2s(&dir, preset, 2, 0)
                    .with_context(|| format!("writing a random {preset} S2S model"))?;
                dir.display().to_string()
            }
            None => s.clone(),
        };
    }
    let opts = CheckOptions {
        target_ms: args.target_ms,
        ..CheckOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "vaak check: codec {}, s2s {}, device {}",
        cfg.codec,
        args.s2s.as_deref().unwrap_or(&cfg.s2s),
        cfg.device
    );
    let rep = rt.block_on(run_check(cfg, &opts));
    print!("{}", rep.table());
    if !rep.passed() {
        bail!("the system check failed");
    }
    Ok(())
}
