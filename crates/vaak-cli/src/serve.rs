//! `vaak serve`: the streaming voice server and its browser client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vaak_server::ServeConfig;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A serve.toml (see `--print-default-config`); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1]. Any other address needs --api-key and
    /// --allow-origin.
    #[arg(long)]
    host: Option<String>,
    /// Port [default: 8998].
    #[arg(long)]
    port: Option<u16>,
    /// Codec: `vaak-16k` (bundled) or a codec export directory.
    #[arg(long)]
    codec: Option<String>,
    /// S2S model: `bundled`, a model export directory, or `none` (echo mode only).
    #[arg(long)]
    s2s: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Concurrent sessions.
    #[arg(long)]
    max_sessions: Option<usize>,
    /// API key clients must give (also VAAK_API_KEY).
    #[arg(long, env = "VAAK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An Origin allowed to open /ws (repeatable).
    #[arg(long = "allow-origin")]
    allow_origin: Vec<String>,
    /// Print the default serve.toml and exit.
    #[arg(long)]
    print_default_config: bool,
}

/// The configuration the flags and the file give.
pub fn config(args: &ServeArgs) -> Result<ServeConfig> {
    let mut cfg = match &args.config {
        Some(p) => ServeConfig::from_file(p).with_context(|| format!("reading {}", p.display()))?,
        None => ServeConfig::default(),
    };
    if let Some(h) = &args.host {
        cfg.host = h.clone();
    }
    if let Some(p) = args.port {
        cfg.port = p;
    }
    if let Some(c) = &args.codec {
        cfg.codec = c.clone();
    }
    if let Some(s) = &args.s2s {
        cfg.s2s = s.clone();
    }
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    if let Some(n) = args.max_sessions {
        cfg.max_sessions = n;
    }
    if let Some(k) = &args.api_key {
        cfg.security.api_key = Some(k.clone());
    }
    if !args.allow_origin.is_empty() {
        cfg.security.allowed_origins = args.allow_origin.clone();
    }
    Ok(cfg)
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.print_default_config {
        print!("{}", ServeConfig::default().to_toml());
        return Ok(());
    }
    let cfg = config(&args)?;
    cfg.validate().context("vaak serve")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "vaak serve: http://{}:{}/ (codec {}, s2s {}, device {})",
        cfg.host, cfg.port, cfg.codec, cfg.s2s, cfg.device
    );
    rt.block_on(vaak_server::serve(cfg)).context("vaak serve")
}
