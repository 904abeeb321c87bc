//! `vaak bench serve`: concurrent loopback sessions against a real `vaak serve`, each speaking
//! espeak-ng utterances in real time, with pauses and barge-ins, the way a user would.
//!
//! Every session runs a "microphone" task that sends a 20 ms PCM16 frame every 20 ms (speech
//! when an utterance is queued, digital silence otherwise), so the server's VAD sees the pause
//! after each utterance and endpoints the turn. The session waits for the reply; one turn in
//! `--barge-every` is a barge-in (the next utterance starts 200 ms into the reply), the others
//! listen until the reply ends or `--listen-s` has passed, then press "interrupt" (CONTROL
//! `interrupt`). Every reply frame of a flushed turn that still arrives is a stale frame.
//!
//! Reported: p50/p95/p99 of end of user speech → first reply audio at the client (the protocol's
//! `speech_end_t_us` against the client's clock), the configured endpoint silence and the
//! latency without it, the server's real-time factor (`vaak_real_time_factor` from `/metrics`),
//! interrupts, dropped frames (sequence gaps), stale frames after barge-in, reply underruns at an
//! 80 ms jitter buffer, and the most sessions held in real time (a ramp over session counts:
//! every session answered, p95 within 250 ms + endpoint silence, underruns under 1% of reply
//! frames). `--minutes M` is a soak: RSS (from /proc) and p95 in the first and the last minute.
//!
//! `--pipeline translate|converse` benches pipeline mode instead: Whisper → M2M-100 (or a
//! loopback LLM that streams its reply at `--llm-token-ms` per token) → espeak-ng + OpenVoice.
//! Models the config does not name come from the tiny published-layout fixtures
//! (`--fixtures`); the table adds p50/p95 of each stage from the end of the turn (`asr`,
//! `first_token`, `first_tts_audio`, `first_audio_sent`, as the server reports them in META).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vaak_nn::train::run::current_host_mb;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use vaak_server::client::{self, speech, Client, ClientConfig, Event, Mic};
use vaak_server::config::{PipelineMode, ServeConfig};
use vaak_server::protocol::{Control, Mode};

use crate::report::{self, Machine};

/// Goal: p95 within this much of the endpoint silence.
const P95_GOAL_MS: f64 = 250.0;
/// The client jitter buffer the underrun count assumes.
const JITTER_MS: f64 = 80.0;

/// Flags of `vaak bench serve`.
#[derive(Args)]
pub struct ServeBenchArgs {
    /// Concurrent sessions of the latency run (and of the soak).
    #[arg(long, default_value_t = 2)]
    sessions: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 40.0)]
    seconds: f64,
    /// Session counts of the "held in real time" ramp, comma-separated; empty: no ramp.
    #[arg(long, default_value = "1,2,4,8")]
    ramp: String,
    /// Seconds per ramp step.
    #[arg(long, default_value_t = 25.0)]
    ramp_seconds: f64,
    /// Soak: run `--sessions` sessions this many minutes (0: no soak).
    #[arg(long, default_value_t = 0.0)]
    minutes: f64,
    /// Every Nth turn is a barge-in (0: none).
    #[arg(long, default_value_t = 3)]
    barge_every: usize,
    /// Seconds a session listens to a reply before it presses "interrupt" (a random model's
    /// replies run to the server's max_reply_s).
    #[arg(long, default_value_t = 3.0)]
    listen_s: f64,
    /// echo | translate | converse.
    #[arg(long, default_value = "translate")]
    mode: String,
    /// Server config (serve.toml); the bench binds 127.0.0.1:0 and raises max_sessions to
    /// the largest session count it runs.
    #[arg(long)]
    config: Option<PathBuf>,
    /// S2S model (overrides the config): `bundled`, an export directory, `none` (echo only), or
    /// `random:<preset>` (tiny, small, base: random weights on the bundled codec).
    #[arg(long)]
    s2s: Option<String>,
    #[arg(long, default_value = "bench-serve.json")]
    json: PathBuf,
    /// Bench pipeline mode (translate | converse) instead of the S2S model; `--mode` follows.
    #[arg(long, value_name = "translate|converse")]
    pipeline: Option<PipelineMode>,
    /// Where the tiny published-layout fixtures are (Whisper, M2M-100, OpenVoice), for the
    /// pipeline models the config does not name.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data"))]
    fixtures: PathBuf,
    /// Milliseconds per token of the loopback LLM (converse, when the config names no LLM).
    #[arg(long, default_value_t = 20)]
    llm_token_ms: u64,
}

/// Pipeline stages reported per turn (ms from the end of the turn).
const PIPELINE_STAGES: [&str; 4] = ["asr", "first_token", "first_tts_audio", "first_audio_sent"];

/// The loopback LLM's reply: three sentences, so the first is spoken while the rest streams.
const LLM_REPLY: &str = "Sure, I can help with that. The first sentence is spoken while the \
                         rest is still streaming. That is the whole point of this test.";

/// What one session measured.
#[derive(Clone, Debug, Default, Serialize)]
struct SessionResult {
    turns_spoken: usize,
    replies: usize,
    latencies_ms: Vec<f64>,
    endpoint_ms: Vec<f64>,
    /// When each latency was measured (seconds since the run began), for the soak's windows.
    at_s: Vec<f64>,
    barge_ins: usize,
    flushes: u64,
    stale_frames: u64,
    seq_gaps: u64,
    reply_frames: u64,
    underruns: u64,
    no_reply: usize,
    errors: Vec<String>,
    /// Pipeline mode: each stage's latency per reply (ms from the end of the turn).
    stages_ms: BTreeMap<String, Vec<f64>>,
}

/// p50 and p95 of one stage.
#[derive(Clone, Debug, Serialize)]
struct StageStats {
    stage: String,
    replies: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
}

/// A whole run of N sessions.
#[derive(Clone, Debug, Serialize)]
struct RunResult {
    sessions: usize,
    seconds: f64,
    turns: usize,
    replies: usize,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    endpoint_ms: Option<f64>,
    p95_minus_endpoint_ms: Option<f64>,
    server_rtf: Option<f64>,
    interrupts: f64,
    barge_ins: usize,
    stale_frames: u64,
    dropped_frames: u64,
    reply_frames: u64,
    underruns: u64,
    no_reply: usize,
    errors: Vec<String>,
    held_real_time: bool,
    /// Pipeline mode: per-stage latency.
    stages: Vec<StageStats>,
}

#[derive(Serialize)]
struct SoakResult {
    minutes: f64,
    sessions: usize,
    rss_start_mb: f64,
    rss_end_mb: f64,
    rss_growth_pct: f64,
    p95_start_ms: Option<f64>,
    p95_end_ms: Option<f64>,
    p95_drift_pct: Option<f64>,
    /// (seconds into the soak, RSS MB), every 15 s.
    rss_timeline: Vec<(f64, f64)>,
    run: RunResult,
}

#[derive(Serialize)]
struct ServeReport {
    benchmark: &'static str,
    machine: Machine,
    mode: String,
    s2s: String,
    pipeline: Option<String>,
    endpoint_silence_ms: u64,
    latency: RunResult,
    ramp: Vec<RunResult>,
    max_sessions_real_time: Option<usize>,
    soak: Option<SoakResult>,
    notes: Vec<String>,
}

pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// One session: speak, wait for the reply (or barge in), pause, until `until`.
async fn session(
    addr: SocketAddr,
    mode: Mode,
    utterances: Arc<Vec<Arc<Vec<f32>>>>,
    idx: usize,
    barge_every: usize,
    listen: Duration,
    until: Instant,
) -> Result<SessionResult> {
    let cfg = ClientConfig::new(addr, client::hello(mode));
    let mut c = Client::connect(&cfg)
        .await
        .context("connecting a session")?;
    let mut mic = Mic::spawn(c.sender());
    let mut r = SessionResult::default();
    let mut turn_no = idx; // sessions start at different utterances
    let hang = Duration::from_secs(30);
    let frame_ms = 1000.0 * c.welcome.frame_samples as f64 / f64::from(c.welcome.sample_rate);
    while Instant::now() < until {
        let u = utterances[turn_no % utterances.len()].clone();
        turn_no += 1;
        r.turns_spoken += 1;
        mic.say(u);
        let barge = barge_every > 0 && r.turns_spoken % barge_every == 0;
        // Wait for the reply's first audio; then, on a barge-in turn, speak over it.
        let mut first: Option<(u32, u64)> = None;
        let mut last_frame_deadline = 0.0f64;
        let deadline = tokio::time::Instant::now() + hang;
        let mut barged_turn = None;
        let mut stop_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = stop_at.filter(|at| tokio::time::Instant::now() >= *at) {
                let _ = at;
                c.sender().interrupt().await?;
                stop_at = None;
            }
            let wake = stop_at.unwrap_or(deadline).min(deadline);
            let ev = match tokio::time::timeout_at(wake, c.next_event()).await {
                Err(_) if stop_at.is_some() => continue,
                Err(_) => {
                    if first.is_none() {
                        r.no_reply += 1;
                    }
                    break;
                }
                Ok(None) => bail!("session closed: {:?}", c.stats().closed),
                Ok(Some(ev)) => ev,
            };
            match ev {
                Event::Audio {
                    turn,
                    received_us,
                    fresh: true,
                    ..
                } => {
                    r.reply_frames += 1;
                    match first {
                        None => {
                            first = Some((turn, received_us));
                            last_frame_deadline = 0.0;
                            if !barge {
                                stop_at = Some(tokio::time::Instant::now() + listen);
                            }
                            if barge && barged_turn.is_none() {
                                // Speak over the reply 200 ms into it.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                mic.say(utterances[turn_no % utterances.len()].clone());
                                turn_no += 1;
                                r.turns_spoken += 1;
                                r.barge_ins += 1;
                                barged_turn = Some(turn);
                            }
                        }
                        Some((t, t_first)) if t == turn => {
                            // Frame k of the reply must be there before the jitter buffer
                            // (started JITTER_MS after the first frame) has played k frames.
                            last_frame_deadline += frame_ms;
                            let due = t_first as f64 / 1000.0 + JITTER_MS + last_frame_deadline;
                            if received_us as f64 / 1000.0 > due {
                                r.underruns += 1;
                            }
                        }
                        Some(_) => {}
                    }
                }
                Event::Control(Control::TurnEnded { turn, .. })
                    if first.is_some_and(|(t, _)| t == turn) =>
                {
                    break
                }
                Event::Control(Control::Flush { turn }) if barged_turn == Some(turn) => {
                    // The barge-in's own utterance is now a turn; its reply is awaited next.
                    break;
                }
                Event::Control(Control::Flush { turn })
                    if first.is_some_and(|(t, _)| t == turn) =>
                {
                    // Our interrupt took effect.
                    break;
                }
                Event::Error(e) => r.errors.push(format!("{:?}: {}", e.code, e.message)),
                Event::Closed(how) => bail!("session closed: {how}"),
                _ => {}
            }
        }
        // Drain the microphone's speech-end notes.
        while mic.try_spoken().is_some() {}
        // Natural pause between turns.
        let pause = 300 + (turn_no * 137 % 700) as u64;
        let until_pause = tokio::time::Instant::now() + Duration::from_millis(pause);
        while let Ok(Some(ev)) = tokio::time::timeout_at(until_pause, c.next_event()).await {
            if let Event::Audio { fresh: true, .. } = ev {
                r.reply_frames += 1;
            }
        }
    }
    // Let the last reply finish, then collect the counters.
    c.drain_for(Duration::from_millis(500)).await;
    drop(mic);
    let s = c.stats();
    for rec in s.turns.values() {
        if let Some(l) = rec.latency_ms() {
            r.latencies_ms.push(l);
            r.endpoint_ms.push(rec.endpoint_ms.unwrap_or(f64::NAN));
            for (k, v) in &rec.stages_ms {
                if PIPELINE_STAGES.contains(&k.as_str()) {
                    r.stages_ms.entry(k.clone()).or_default().push(*v);
                }
            }
            let at = rec.first_audio_us.unwrap_or(0) as f64 / 1e6;
            r.at_s.push(at);
        }
    }
    r.replies = r.latencies_ms.len();
    r.flushes = s.flushes;
    r.stale_frames = s.stale_frames;
    r.seq_gaps = s.seq_gaps;
    let _ = c.sender().close().await;
    Ok(r)
}

struct Bench {
    addr: SocketAddr,
    mode: Mode,
    utterances: Arc<Vec<Arc<Vec<f32>>>>,
    barge_every: usize,
    listen: Duration,
    endpoint_ms: u64,
}

impl Bench {
    async fn metrics(&self) -> String {
        client::http_get(self.addr, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Runs `n` sessions for `seconds`; the sessions start 150 ms apart.
    async fn run(&self, n: usize, seconds: f64) -> Result<(RunResult, Vec<SessionResult>)> {
        let before = self.metrics().await;
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for i in 0..n {
            let (addr, mode, utt, be, listen) = (
                self.addr,
                self.mode,
                self.utterances.clone(),
                self.barge_every,
                self.listen,
            );
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
                session(addr, mode, utt, i, be, listen, until).await
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.context("session task")??);
        }
        let after = self.metrics().await;
        let delta = |name: &str| {
            client::metric(&after, name).unwrap_or(0.0)
                - client::metric(&before, name).unwrap_or(0.0)
        };
        let mut lat: Vec<f64> = results
            .iter()
            .flat_map(|r| r.latencies_ms.clone())
            .collect();
        lat.sort_by(f64::total_cmp);
        let mut ep: Vec<f64> = results
            .iter()
            .flat_map(|r| r.endpoint_ms.clone())
            .filter(|x| x.is_finite())
            .collect();
        ep.sort_by(f64::total_cmp);
        let p95 = percentile(&lat, 0.95);
        let endpoint = percentile(&ep, 0.5);
        let sum = |f: fn(&SessionResult) -> u64| results.iter().map(f).sum::<u64>();
        let reply_frames = sum(|r| r.reply_frames);
        let underruns = sum(|r| r.underruns);
        let no_reply = results.iter().map(|r| r.no_reply).sum();
        let goal = P95_GOAL_MS + endpoint.unwrap_or(self.endpoint_ms as f64);
        let stages = PIPELINE_STAGES
            .iter()
            .filter_map(|k| {
                let mut v: Vec<f64> = results
                    .iter()
                    .flat_map(|r| r.stages_ms.get(*k).cloned().unwrap_or_default())
                    .collect();
                v.sort_by(f64::total_cmp);
                (!v.is_empty()).then(|| StageStats {
                    stage: k.to_string(),
                    replies: v.len(),
                    p50_ms: percentile(&v, 0.5),
                    p95_ms: percentile(&v, 0.95),
                })
            })
            .collect();
        let run = RunResult {
            sessions: n,
            seconds,
            turns: results.iter().map(|r| r.turns_spoken).sum(),
            replies: results.iter().map(|r| r.replies).sum(),
            p50_ms: percentile(&lat, 0.5),
            p95_ms: p95,
            p99_ms: percentile(&lat, 0.99),
            endpoint_ms: endpoint,
            p95_minus_endpoint_ms: p95.zip(endpoint).map(|(p, e)| p - e),
            server_rtf: client::metric(&after, "vaak_real_time_factor"),
            interrupts: delta("vaak_interrupts_total"),
            barge_ins: results.iter().map(|r| r.barge_ins).sum(),
            stale_frames: sum(|r| r.stale_frames),
            dropped_frames: sum(|r| r.seq_gaps) + delta("vaak_dropped_frames_total") as u64,
            reply_frames,
            underruns,
            no_reply,
            errors: results.iter().flat_map(|r| r.errors.clone()).collect(),
            held_real_time: results.iter().all(|r| r.replies > 0)
                && p95.is_some_and(|p| p <= goal)
                && (underruns as f64) <= 0.01 * reply_frames as f64,
            stages,
        };
        Ok((run, results))
    }
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

fn table(runs: &[&RunResult]) -> String {
    let mut rows = vec![vec![
        "sessions".to_string(),
        "turns".into(),
        "replies".into(),
        "p50 ms".into(),
        "p95 ms".into(),
        "p99 ms".into(),
        "endpoint ms".into(),
        "p95-endpoint".into(),
        "server RTF".into(),
        "interrupts".into(),
        "stale".into(),
        "dropped".into(),
        "underruns".into(),
        "real time".into(),
    ]];
    for r in runs {
        rows.push(vec![
            r.sessions.to_string(),
            r.turns.to_string(),
            r.replies.to_string(),
            fmt(r.p50_ms),
            fmt(r.p95_ms),
            fmt(r.p99_ms),
            fmt(r.endpoint_ms),
            fmt(r.p95_minus_endpoint_ms),
            r.server_rtf.map_or("-".into(), |v| format!("{v:.2}")),
            format!("{:.0}", r.interrupts),
            r.stale_frames.to_string(),
            r.dropped_frames.to_string(),
            format!("{}/{}", r.underruns, r.reply_frames),
            if r.held_real_time { "yes" } else { "no" }.into(),
        ]);
    }
    report::columns(&rows)
}

/// Per-stage p50/p95 (pipeline mode), from the end of the user's turn.
fn stage_table(r: &RunResult) -> String {
    let mut rows = vec![vec![
        "stage (from end of turn)".to_string(),
        "replies".into(),
        "p50 ms".into(),
        "p95 ms".into(),
    ]];
    for s in &r.stages {
        rows.push(vec![
            s.stage.clone(),
            s.replies.to_string(),
            fmt(s.p50_ms),
            fmt(s.p95_ms),
        ]);
    }
    report::columns(&rows)
}

/// Fills the pipeline models the config leaves out from the tiny fixtures; starts the loopback
/// LLM for `converse` when the config names none.
fn pipeline_config(
    cfg: &mut ServeConfig,
    mode: PipelineMode,
    args: &ServeBenchArgs,
) -> Result<Option<vaak_teachers::mt::loopback::LoopbackChatServer>> {
    let fx = |rel: &str| args.fixtures.join(rel).display().to_string();
    let p = &mut cfg.pipeline;
    p.mode = mode;
    let tiny = p.asr.weights.is_none();
    if tiny {
        if !args.fixtures.join("whisper/tiny80").is_dir() {
            bail!(
                "no pipeline.asr.weights in the config and no fixtures under {}",
                args.fixtures.display()
            );
        }
        p.asr.weights = Some(fx("whisper/tiny80"));
        // The random tiny Whisper babbles: a few tokens keep its text inside the tiny
        // M2M-100's 64 positions.
        p.asr
            .options
            .insert("max_new_tokens".into(), toml::Value::Integer(3));
    }
    if p.tts.converter.is_none() {
        p.tts.converter = Some(fx("openvoice/converter"));
    }
    let mut llm = None;
    match mode {
        PipelineMode::Translate => {
            if p.target_lang.is_none() {
                p.target_lang = Some("ru".into());
            }
            if p.translator.weights.is_none() && p.translator.kind != "openai" {
                p.translator.kind = "m2m100".into();
                p.translator.weights = Some(fx("mt_m2m100/e2e_m2m"));
                p.translator
                    .options
                    .insert("max_length".into(), toml::Value::Integer(12));
                p.translator
                    .options
                    .insert("allow_truncated".into(), toml::Value::Boolean(true));
            }
        }
        PipelineMode::Converse => {
            if p.llm.base_url.is_none() {
                let s = vaak_teachers::mt::loopback::LoopbackChatServer::start_with(
                    vaak_teachers::mt::loopback::LoopbackOptions {
                        reply: LLM_REPLY.into(),
                        token_interval: Duration::from_millis(args.llm_token_ms),
                        fail_status: None,
                    },
                )
                .context("starting the loopback LLM")?;
                p.llm.base_url = Some(s.base_url().to_string());
                p.llm.model = Some("loopback".into());
                llm = Some(s);
            }
        }
        PipelineMode::Off => {}
    }
    Ok(llm)
}

pub fn run(args: ServeBenchArgs) -> Result<()> {
    let mode_name = match args.pipeline {
        Some(PipelineMode::Translate) => "translate",
        Some(PipelineMode::Converse) => "converse",
        _ => args.mode.as_str(),
    };
    let mode: Mode = serde_json::from_value(serde_json::json!(mode_name))
        .with_context(|| format!("--mode {mode_name}: echo, translate or converse"))?;
    let ramp: Vec<usize> = args
        .ramp
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("--ramp entry {s:?}"))
        })
        .collect::<Result<_>>()?;
    let mut cfg = match &args.config {
        Some(p) => ServeConfig::from_file(p)?,
        None => ServeConfig::default(),
    };
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    let tmp = tempfile::tempdir().context("temp dir")?;
    if let Some(s) = &args.s2s {
        cfg.s2s = match s.strip_prefix("random:") {
            Some(preset) => {
                let dir = tmp.path().join(format!("random-{preset}"));
                client::write_random_s2s(&dir, preset, 2, 0)
                    .with_context(|| format!("writing a random {preset} S2S model"))?;
                dir.display().to_string()
            }
            None => s.clone(),
        };
    }
    let s2s_name = args.s2s.clone().unwrap_or_else(|| cfg.s2s.clone());
    let _llm = match args.pipeline.filter(|m| *m != PipelineMode::Off) {
        Some(m) => pipeline_config(&mut cfg, m, &args)?,
        None => None,
    };
    let pipeline_name = cfg.pipeline.enabled().then(|| {
        let p = &cfg.pipeline;
        let reply = match p.mode {
            PipelineMode::Converse => format!(
                "llm {} ({} ms/token loopback unless configured)",
                p.llm.base_url.clone().unwrap_or_default(),
                args.llm_token_ms
            ),
            _ => format!(
                "translator {}",
                p.translator.weights.clone().unwrap_or_default()
            ),
        };
        format!(
            "{}: asr {}, {reply}, tts espeak-ng + {}",
            p.mode.name(),
            p.asr.weights.clone().unwrap_or_default(),
            p.tts.converter.clone().unwrap_or_default()
        )
    });
    let most = ramp
        .iter()
        .copied()
        .chain([args.sessions])
        .max()
        .unwrap_or(1);
    cfg.max_sessions = cfg.max_sessions.max(most);
    let endpoint_ms = cfg.vad.min_endpointing_delay_ms;
    eprintln!("speaking the bench's utterances with espeak-ng...");
    let utterances: Vec<Arc<Vec<f32>>> = speech::SENTENCES
        .iter()
        .map(|t| {
            let u = speech::espeak(t, "en-us", 165)?;
            let (a, b) = speech::active_span(&u).unwrap_or((0, u.len()));
            Ok(Arc::new(u[a..b].to_vec()))
        })
        .collect::<Result<_, client::ClientError>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let rss_boot = current_host_mb();
        let server = vaak_server::start(cfg.clone())
            .await
            .context("starting the server")?;
        let bench = Bench {
            addr: server.addr(),
            mode,
            utterances: Arc::new(utterances),
            barge_every: args.barge_every,
            listen: Duration::from_secs_f64(args.listen_s),
            endpoint_ms,
        };
        let mut notes = vec![format!(
            "server in-process on {}; RSS before start {:.0} MB",
            bench.addr,
            rss_boot.unwrap_or(f64::NAN)
        )];
        eprintln!(
            "latency run: {} sessions, {:.0} s, mode {}",
            args.sessions, args.seconds, mode_name
        );
        let (latency, _) = bench.run(args.sessions, args.seconds).await?;
        let mut ramp_runs = Vec::new();
        for &n in &ramp {
            eprintln!("ramp: {n} sessions, {:.0} s", args.ramp_seconds);
            let (r, _) = bench.run(n, args.ramp_seconds).await?;
            let held = r.held_real_time;
            ramp_runs.push(r);
            if !held {
                notes.push(format!("ramp stopped at {n} sessions (not held in real time)"));
                break;
            }
        }
        let max_rt = ramp_runs
            .iter()
            .filter(|r| r.held_real_time)
            .map(|r| r.sessions)
            .max();
        let soak = if args.minutes > 0.0 {
            eprintln!("soak: {} sessions, {} min", args.sessions, args.minutes);
            let rss_start = current_host_mb().unwrap_or(f64::NAN);
            let t_start = client::now_us() as f64 / 1e6;
            let sampler = tokio::spawn(async move {
                let t = Instant::now();
                let mut v = Vec::new();
                loop {
                    v.push((t.elapsed().as_secs_f64().round(), current_host_mb().unwrap_or(f64::NAN)));
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    if t.elapsed().as_secs_f64() > args.minutes * 60.0 + 5.0 {
                        return v;
                    }
                }
            });
            let (run, sessions) = bench.run(args.sessions, args.minutes * 60.0).await?;
            let rss_end = current_host_mb().unwrap_or(f64::NAN);
            let rss_timeline = sampler.await.context("RSS sampler")?;
            let window = 60.0f64.min(args.minutes * 60.0 / 3.0);
            let t_end = t_start + args.minutes * 60.0;
            let in_window = |lo: f64, hi: f64| {
                let mut v: Vec<f64> = sessions
                    .iter()
                    .flat_map(|s| s.at_s.iter().zip(&s.latencies_ms))
                    .filter(|(a, _)| **a >= lo && **a < hi)
                    .map(|(_, l)| *l)
                    .collect();
                v.sort_by(f64::total_cmp);
                percentile(&v, 0.95)
            };
            let p95_start = in_window(t_start, t_start + window);
            let p95_end = in_window(t_end - window, t_end + 60.0);
            Some(SoakResult {
                minutes: args.minutes,
                sessions: args.sessions,
                rss_start_mb: rss_start,
                rss_end_mb: rss_end,
                rss_growth_pct: 100.0 * (rss_end - rss_start) / rss_start,
                p95_start_ms: p95_start,
                p95_end_ms: p95_end,
                p95_drift_pct: p95_start.zip(p95_end).map(|(a, b)| 100.0 * (b - a) / a),
                rss_timeline,
                run,
            })
        } else {
            None
        };
        drop(server);

        match &pipeline_name {
            Some(p) => println!(
                "vaak bench serve: pipeline {p}, endpoint silence {endpoint_ms} ms (min endpointing delay)"
            ),
            None => println!(
                "vaak bench serve: mode {}, s2s {}, endpoint silence {} ms (min endpointing delay)",
                mode_name, s2s_name, endpoint_ms
            ),
        }
        println!("\nlatency run (end of user speech -> first reply audio at the client):");
        print!("{}", table(&[&latency]));
        if !latency.stages.is_empty() {
            println!("\nper stage (server side, from the end of the turn):");
            print!("{}", stage_table(&latency));
        }
        if !ramp_runs.is_empty() {
            println!("\nramp (held in real time: every session answered, p95 <= {P95_GOAL_MS:.0} ms + endpoint, underruns < 1%):");
            print!("{}", table(&ramp_runs.iter().collect::<Vec<_>>()));
            println!(
                "most sessions held in real time: {}",
                max_rt.map_or("none".into(), |n| n.to_string())
            );
        }
        if let Some(s) = &soak {
            println!("\nsoak ({} min, {} sessions):", s.minutes, s.sessions);
            print!("{}", table(&[&s.run]));
            println!(
                "RSS {:.1} -> {:.1} MB ({:+.1}%), p95 {} -> {} ms ({})",
                s.rss_start_mb,
                s.rss_end_mb,
                s.rss_growth_pct,
                fmt(s.p95_start_ms),
                fmt(s.p95_end_ms),
                s.p95_drift_pct.map_or("-".into(), |d| format!("{d:+.1}%"))
            );
            let tl: Vec<String> = s
                .rss_timeline
                .iter()
                .map(|(t, mb)| format!("{t:.0}s {mb:.0}"))
                .collect();
            println!("RSS MB over the soak: {}", tl.join(", "));
        }
        for n in &notes {
            println!("note: {n}");
        }
        let rep = ServeReport {
            benchmark: "serve",
            machine: Machine::here(),
            mode: mode_name.to_string(),
            s2s: s2s_name.clone(),
            pipeline: pipeline_name.clone(),
            endpoint_silence_ms: endpoint_ms,
            latency,
            ramp: ramp_runs,
            max_sessions_real_time: max_rt,
            soak,
            notes,
        };
        report::write_json(&args.json, &rep)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(51.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn rss_is_read_from_proc() {
        let mb = current_host_mb().expect("/proc/self/status has VmRSS on Linux");
        assert!(mb > 0.0);
    }
}
