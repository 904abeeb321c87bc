//! `vaak serve`: the streaming voice server and its browser client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vaak_server::{PipelineMode, ServeConfig};

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
    /// Answer with a pipeline of published models instead of the S2S model:
    /// `translate` (ASR → MT → TTS in the speaker's voice) or `converse` (ASR → an LLM →
    /// TTS). See docs/serve.md, "Pipeline mode".
    #[arg(long, value_name = "translate|converse")]
    pipeline: Option<PipelineMode>,
    /// Whisper checkpoint (pipeline.asr.weights): a directory or hf://openai/whisper-large-v3.
    #[arg(long, value_name = "LOCATION")]
    asr: Option<String>,
    /// Translation model (pipeline.translator.weights), e.g. hf://facebook/m2m100_1.2B.
    #[arg(long, value_name = "LOCATION")]
    translator: Option<String>,
    /// Translator kind (pipeline.translator.kind): m2m100, nllb, marian or openai.
    #[arg(long, value_name = "KIND")]
    translator_kind: Option<String>,
    /// OpenAI-compatible API root of the LLM (pipeline.llm.base_url), e.g.
    /// http://127.0.0.1:11434/v1 (Ollama).
    #[arg(long, value_name = "URL")]
    llm_url: Option<String>,
    /// LLM model name (pipeline.llm.model).
    #[arg(long, value_name = "NAME")]
    llm_model: Option<String>,
    /// OpenVoice converter (pipeline.tts.converter): a directory,
    /// hf://myshell-ai/OpenVoiceV2/converter, or `none` (plain espeak-ng voice).
    #[arg(long, value_name = "LOCATION")]
    tts_converter: Option<String>,
    /// The language users speak (pipeline.source_lang): en, ru, hi, te.
    #[arg(long, value_name = "LANG")]
    source_lang: Option<String>,
    /// The reply language (pipeline.target_lang).
    #[arg(long, value_name = "LANG")]
    target_lang: Option<String>,
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
    let p = &mut cfg.pipeline;
    if let Some(m) = args.pipeline {
        p.mode = m;
    }
    if let Some(w) = &args.asr {
        p.asr.weights = Some(w.clone());
    }
    if let Some(w) = &args.translator {
        p.translator.weights = Some(w.clone());
    }
    if let Some(k) = &args.translator_kind {
        p.translator.kind = k.clone();
    }
    if let Some(u) = &args.llm_url {
        p.llm.base_url = Some(u.clone());
    }
    if let Some(m) = &args.llm_model {
        p.llm.model = Some(m.clone());
    }
    if let Some(c) = &args.tts_converter {
        p.tts.converter = Some(c.clone());
    }
    if let Some(l) = &args.source_lang {
        p.source_lang = l.clone();
    }
    if let Some(l) = &args.target_lang {
        p.target_lang = Some(l.clone());
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
    if cfg.pipeline.enabled() {
        eprintln!(
            "vaak serve: http://{}:{}/ (pipeline {}, device {})",
            cfg.host,
            cfg.port,
            cfg.pipeline.mode.name(),
            cfg.device
        );
    } else {
        eprintln!(
            "vaak serve: http://{}:{}/ (codec {}, s2s {}, device {})",
            cfg.host, cfg.port, cfg.codec, cfg.s2s, cfg.device
        );
    }
    rt.block_on(vaak_server::serve(cfg)).context("vaak serve")
}
