//! `vaak bench cascade`: the whole cascade over a sample manifest, timed per stage.
//!
//! By default the manifest is espeak-ng Russian speech (made on the spot) plus a few broken rows,
//! and the teachers are the tiny random checkpoints of `tools/fixtures/data` in their published
//! layouts (Whisper, ECAPA, EnCodec), espeak-ng for TTS and the real OpenAI-compatible client
//! talking to a tagging loopback server. The figures are about the pipeline: how much of the wall
//! time is inside model calls, and what is orchestration. With `--config` it runs the user's own
//! config and manifest instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use vaak_audio::io::{write_wav, WavFormat};
use vaak_cascade::builtin::BuiltinTeachers;
use vaak_cascade::pipeline::stage;
use vaak_cascade::{run_invocation, Invocation, Outcome, Overrides};
use vaak_teachers::mt::loopback::LoopbackChatServer;
use vaak_teachers::tts::{EspeakConfig, EspeakTts};
use vaak_teachers::{Lang, Tts, TtsRequest};

use crate::report::{write_json, Machine};

#[derive(Args)]
pub struct CascadeBenchArgs {
    /// Number of speech clips in the generated manifest.
    #[arg(long, default_value_t = 24)]
    clips: usize,
    /// Fixture directory with the tiny teachers (whisper/tiny80, ecapa/model, codec/encodec).
    #[arg(long, default_value = "tools/fixtures/data")]
    fixtures: PathBuf,
    /// Run this cascade config (and its manifest) instead of the generated one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device for the teachers.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-cascade.json")]
    json: PathBuf,
}

#[derive(Serialize)]
struct CascadeReport {
    benchmark: &'static str,
    machine: Machine,
    device: String,
    generated_manifest: bool,
    samples_written: usize,
    samples_errored: usize,
    audio_s: f64,
    wall_s: f64,
    samples_per_s: f64,
    audio_hours_per_hour: f64,
    /// Seconds per stage: model stages on the pipeline thread, load and write on their own.
    stage_s: BTreeMap<String, f64>,
    /// Share of wall time inside teacher calls (ASR, MT, speaker, TTS, codec).
    model_share: f64,
    /// The rest of the wall time: reading, batching, writing, waiting.
    orchestration_share: f64,
    peak_rss_mib: Option<f64>,
}

const MODEL_STAGES: [&str; 5] = [
    stage::ASR,
    stage::TRANSLATE,
    stage::SPEAKER,
    stage::TTS,
    stage::CODEC,
];

pub fn run(args: CascadeBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let server;
    let (config, generated) = match &args.config {
        Some(c) => (c.clone(), false),
        None => {
            server = LoopbackChatServer::start()?;
            let fixtures = args.fixtures.canonicalize().with_context(|| {
                format!(
                    "fixtures at {} (run from the repository root, or pass --fixtures)",
                    args.fixtures.display()
                )
            })?;
            eprintln!(
                "bench cascade: synthesising {} clips with espeak-ng...",
                args.clips
            );
            (
                sample_run(tmp.path(), &fixtures, args.clips, server.base_url())?,
                true,
            )
        }
    };
    let inv = Invocation {
        config: Some(config),
        overrides: Overrides {
            device: Some(args.device.clone()),
            no_progress: true,
            ..Overrides::default()
        },
        ..Invocation::default()
    };
    eprintln!("bench cascade: running...");
    let outcome = run_invocation(&inv, &BuiltinTeachers, |k| std::env::var(k).ok())?;
    let Outcome::Ran(s) = outcome else {
        bail!("the cascade planned but did not run");
    };
    let model_s: f64 = MODEL_STAGES.iter().filter_map(|k| s.stage_s.get(*k)).sum();
    let wall = s.wall_s.max(1e-9);
    let report = CascadeReport {
        benchmark: "cascade",
        machine: Machine::here(),
        device: args.device.clone(),
        generated_manifest: generated,
        samples_written: s.ok + s.bad,
        samples_errored: s.errored,
        audio_s: s.hours_processed * 3600.0,
        wall_s: s.wall_s,
        samples_per_s: s.samples_per_s,
        audio_hours_per_hour: s.audio_hours_per_hour,
        stage_s: s.stage_s.clone(),
        model_share: model_s / wall,
        orchestration_share: 1.0 - model_s / wall,
        peak_rss_mib: vaak_nn::train::run::peak_host_mb(),
    };
    print!("{}", table(&report));
    write_json(&args.json, &report)
}

fn table(r: &CascadeReport) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<28} {v}\n"));
    line("device", r.device.clone());
    line(
        "samples written / errored",
        format!("{} / {}", r.samples_written, r.samples_errored),
    );
    line("audio processed", format!("{:.1} s", r.audio_s));
    line("wall time", format!("{:.2} s", r.wall_s));
    line("samples/s", format!("{:.2}", r.samples_per_s));
    line(
        "audio hours per hour",
        format!("{:.1}", r.audio_hours_per_hour),
    );
    for (k, v) in &r.stage_s {
        line(
            &format!("  stage {k}"),
            format!("{v:.3} s ({:.0}% of wall)", 100.0 * v / r.wall_s.max(1e-9)),
        );
    }
    line(
        "inside model calls",
        format!("{:.0}%", 100.0 * r.model_share),
    );
    line(
        "orchestration",
        format!("{:.0}%", 100.0 * r.orchestration_share),
    );
    if let Some(m) = r.peak_rss_mib {
        line("peak memory (RSS)", format!("{m:.0} MiB"));
    }
    out
}

/// Writes espeak-ng clips, a manifest with two broken rows, and a config using the fixture
/// teachers; returns the config path.
fn sample_run(root: &Path, fixtures: &Path, clips: usize, server: &str) -> Result<PathBuf> {
    let tts = EspeakTts::new(EspeakConfig {
        rate_wpm: 260,
        output_rate: 16_000,
        ..EspeakConfig::default()
    })?;
    // Short phrases: the tiny Whisper fixture has a 2 s window.
    let phrases = [
        "привет",
        "добрый день",
        "один два три",
        "спасибо большое",
        "до свидания",
    ];
    let texts: Vec<&str> = (0..clips).map(|i| phrases[i % phrases.len()]).collect();
    let reqs: Vec<TtsRequest> = texts
        .iter()
        .map(|t| TtsRequest {
            text: t,
            lang: Lang::Ru,
            reference: None,
        })
        .collect();
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    let mut csv = String::from("id,lang,dataset,split,audio_path,duration_s,text,tier,tier_rank\n");
    for (i, speech) in tts.synthesize(&reqs)?.into_iter().enumerate() {
        let speech = speech?;
        let name = format!("clip_{i:04}.wav");
        write_wav(data.join(&name), &speech.samples, 16_000, WavFormat::Pcm16)?;
        let dur = speech.samples.len() as f64 / 16_000.0;
        csv.push_str(&format!(
            "bench-{i},ru,bench,test,{name},{dur:.3},{},Gold,1\n",
            texts[i]
        ));
    }
    std::fs::write(data.join("empty.wav"), b"")?;
    csv.push_str("broken-empty,ru,bench,test,empty.wav,1.0,x,Gold,1\n");
    csv.push_str("broken-missing,ru,bench,test,nowhere.wav,1.0,x,Gold,1\n");
    std::fs::write(root.join("manifest.csv"), csv)?;
    let q = |p: PathBuf| format!("'{}'", p.display());
    let cfg = format!(
        "data_root: {data}\noutput_root: {out}\nmanifests:\n  ru: {manifest}\n\
         pipeline:\n  min_duration: 0.1\n  direction: ruen\n\
         compute:\n  device: cpu\n  progress_bar: false\n\
         models:\n\
         \x20 asr: {{kind: whisper, weights: {whisper}}}\n\
         \x20 translator: {{kind: openai, weights: null, options: {{base_url: '{server}', model: loopback, api_key: none}}}}\n\
         \x20 speaker: {{kind: ecapa, weights: {ecapa}}}\n\
         \x20 tts: {{kind: espeak, weights: null}}\n\
         \x20 codec: {{kind: encodec, weights: {encodec}, options: {{bandwidth: 9.0}}}}\n",
        data = q(data.clone()),
        out = q(root.join("out")),
        manifest = q(root.join("manifest.csv")),
        whisper = q(fixtures.join("whisper/tiny80")),
        ecapa = q(fixtures.join("ecapa/model")),
        encodec = q(fixtures.join("codec/encodec")),
    );
    let path = root.join("config.yaml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}
