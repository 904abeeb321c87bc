//! `vaak bench data`: the corpus pipeline's stages, vaak against lhotse, on one synthetic
//! corpus in the LibriSpeech layout (`train-clean-100/<speaker>/<chapter>/*.flac` and
//! `*.trans.txt`, seeded speech-like audio at 44.1 kHz so that resampling is real work).
//!
//! Stages, each timed once over every file, at the same `--jobs`:
//!
//! - `manifest`: the LibriSpeech recipe (vaak: `vaak data manifest librispeech`, durations from
//!   the headers; lhotse: `prepare_librispeech`);
//! - `verify`: decode every file (vaak: `vaak data verify`, which also checks durations, rates,
//!   texts and ids; lhotse: `Recording.load_audio()`);
//! - `prepare`: resample to 16 kHz and write 16-bit FLAC (vaak: [`vaak_data::prepare`];
//!   lhotse: `Recording.resample(16000).load_audio()` and soundfile in a process pool).
//!
//! The figure is hours of audio per minute of wall time; the ratio is vaak over lhotse.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use vaak_data::corpus::{read_corpus, write_corpus, CorpusRow};
use vaak_data::prepare::{encode_flac, prepare, PrepareConfig};
use vaak_data::recipes::{build_manifest, Options as RecipeOptions, Recipe};
use vaak_data::verify::{verify, VerifyOptions};

use crate::audio::speechlike;
use crate::peer::{self, PeerArgs};
use crate::report::{columns, write_json, Machine};

const PEER_SCRIPT: &str = include_str!("../peers/data_lhotse.py");

#[derive(Args)]
pub struct DataBenchArgs {
    /// Files in the synthetic corpus.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Mean clip length in seconds (clips vary from 0.5x to 1.5x).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Sample rate of the corpus files.
    #[arg(long, default_value_t = 44_100)]
    rate: u32,
    /// Worker threads (vaak) and processes (lhotse).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Work directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "bench_data.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
}

/// One stage's figures.
#[derive(Debug, Serialize)]
pub struct StageResult {
    pub stage: String,
    /// Seconds of wall time, `None` when not measured.
    pub vaak_s: Option<f64>,
    pub lhotse_s: Option<f64>,
    /// Hours of audio per minute.
    pub vaak_h_per_min: Option<f64>,
    pub lhotse_h_per_min: Option<f64>,
    /// vaak over lhotse.
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct DataReport {
    pub benchmark: String,
    pub machine: Machine,
    pub files: usize,
    pub hours: f64,
    pub rate: u32,
    pub jobs: usize,
    pub stages: Vec<StageResult>,
    pub notes: Vec<String>,
}

/// Writes the corpus under `root/train-clean-100/`; returns the corpus rows (relative to
/// `root`) for vaak's prepare, in place of the recipe's manifest.
fn synth_librispeech(
    root: &Path,
    files: usize,
    seconds: f64,
    rate: u32,
    jobs: usize,
) -> Result<Vec<CorpusRow>> {
    let per_chapter = 25;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()?;
    let rows: Vec<Result<CorpusRow>> = pool.install(|| {
        (0..files)
            .into_par_iter()
            .map(|i| {
                let (spk, chap, utt) = (
                    100 + i / (per_chapter * 2),
                    1000 + i / per_chapter,
                    i % per_chapter,
                );
                let dir = root.join(format!("train-clean-100/{spk}/{chap}"));
                std::fs::create_dir_all(&dir)?;
                let secs = seconds * (0.5 + (i * 37 % 101) as f64 / 100.0);
                let x = speechlike(secs, rate, i as u64);
                let id = format!("{spk}-{chap}-{utt:04}");
                let rel = format!("train-clean-100/{spk}/{chap}/{id}.flac");
                std::fs::write(root.join(&rel), encode_flac(&x, rate)?)?;
                Ok(CorpusRow {
                    id,
                    lang: "en".into(),
                    dataset: "librispeech".into(),
                    split: "train-clean-100".into(),
                    audio_path: rel,
                    duration_s: x.len() as f64 / f64::from(rate),
                    text: format!("UTTERANCE NUMBER {i}"),
                    speaker: Some(spk.to_string()),
                    sample_rate: Some(rate),
                    channels: Some(1),
                    source_id: None,
                    augment: None,
                })
            })
            .collect()
    });
    let rows = rows.into_iter().collect::<Result<Vec<_>>>()?;
    let mut trans: std::collections::BTreeMap<String, String> = Default::default();
    for r in &rows {
        let dir = Path::new(&r.audio_path).parent().expect("a nested path");
        let key = dir.display().to_string();
        trans
            .entry(key)
            .or_default()
            .push_str(&format!("{} {}\n", r.id, r.text));
    }
    for (dir, text) in trans {
        let d = Path::new(&dir);
        let spk = d.parent().and_then(|p| p.file_name()).expect("speaker dir");
        let chap = d.file_name().expect("chapter dir");
        let name = format!(
            "{}-{}.trans.txt",
            spk.to_string_lossy(),
            chap.to_string_lossy()
        );
        std::fs::write(root.join(d).join(name), text)?;
    }
    Ok(rows)
}

pub fn run(args: DataBenchArgs) -> Result<()> {
    let tmp;
    let work = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let corpus = work.join("LibriSpeech");
    eprintln!(
        "bench data: writing {} files at {} Hz...",
        args.files, args.rate
    );
    let rows = synth_librispeech(&corpus, args.files, args.seconds, args.rate, args.jobs)?;
    let hours: f64 = rows.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0;
    let manifest = work.join("vaak_manifest.jsonl");
    let mut notes = Vec::new();

    eprintln!("bench data: vaak manifest (librispeech recipe)...");
    let t = Instant::now();
    let opts = RecipeOptions {
        jobs: args.jobs.max(1),
        ..RecipeOptions::default()
    };
    let built = build_manifest(Recipe::LibriSpeech, &corpus, &opts).context("vaak manifest")?;
    write_corpus(&manifest, &built.rows)?;
    let vaak_manifest = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        built.rows.len() == rows.len() && built.skipped.is_empty(),
        "vaak manifest found {} rows ({} skipped) of {}",
        built.rows.len(),
        built.skipped.len(),
        rows.len()
    );

    eprintln!("bench data: vaak verify (decode every file)...");
    let t = Instant::now();
    let read = read_corpus(&manifest)?;
    let vopts = VerifyOptions {
        jobs: args.jobs.max(1),
        ..VerifyOptions::default()
    };
    let checked = verify(&read, &corpus, &vopts);
    let vaak_verify = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        !checked.has_errors(),
        "vaak verify found {} errors in the synthetic corpus",
        checked.errors
    );

    eprintln!("bench data: vaak prepare...");
    let mut cfg = PrepareConfig::new(work.join("vaak_prepared"));
    cfg.data_root = Some(corpus.clone());
    cfg.jobs = args.jobs;
    let t = Instant::now();
    let s = prepare(&manifest, &cfg, &|_| {}).context("vaak prepare")?;
    let vaak_prepare = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        s.failed.is_empty(),
        "vaak prepare failed rows: {:?}",
        s.failed
    );

    let mut peer_stages = serde_json::Value::Null;
    if let Some(python) = args.peer.interpreter("lhotse", &mut notes) {
        eprintln!("bench data: lhotse ({})...", python.display());
        let peer_args = vec![
            "--corpus".to_string(),
            corpus.display().to_string(),
            "--out".into(),
            work.join("lhotse_prepared").display().to_string(),
            "--jobs".into(),
            args.jobs.to_string(),
        ];
        match peer::run_script(&python, "data_lhotse.py", PEER_SCRIPT, &peer_args) {
            Err(e) => notes.push(format!("lhotse peer failed: {e:#}")),
            Ok(v) => {
                notes.extend(peer::versions_note(&v));
                if v["recordings"].as_u64() != Some(args.files as u64) {
                    notes.push(format!("lhotse found {} recordings", v["recordings"]));
                }
                peer_stages = v["stages"].clone();
            }
        }
    }
    let per_min = |s: Option<f64>| s.map(|s| hours / (s / 60.0));
    let stage = |name: &str, vaak_s: Option<f64>| {
        let lhotse_s = peer_stages[name].as_f64();
        StageResult {
            stage: name.to_string(),
            vaak_s,
            lhotse_s,
            vaak_h_per_min: per_min(vaak_s),
            lhotse_h_per_min: per_min(lhotse_s),
            ratio: vaak_s.zip(lhotse_s).map(|(v, l)| l / v),
        }
    };
    let report = DataReport {
        benchmark: "data".into(),
        machine: Machine::here(),
        files: args.files,
        hours,
        rate: args.rate,
        jobs: args.jobs,
        stages: vec![
            stage("manifest", Some(vaak_manifest)),
            stage("verify", Some(vaak_verify)),
            stage("prepare", Some(vaak_prepare)),
        ],
        notes,
    };
    let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |v| format!("{v:.d$}"));
    let mut table = vec![vec![
        "stage".to_string(),
        "vaak s".into(),
        "lhotse s".into(),
        "vaak h/min".into(),
        "lhotse h/min".into(),
        "vaak/lhotse".into(),
    ]];
    for s in &report.stages {
        table.push(vec![
            s.stage.clone(),
            f(s.vaak_s, 2),
            f(s.lhotse_s, 2),
            f(s.vaak_h_per_min, 3),
            f(s.lhotse_h_per_min, 3),
            s.ratio.map_or("n/a".into(), |r| format!("{r:.2}x")),
        ]);
    }
    println!(
        "bench data: {} files, {:.3} h at {} Hz, --jobs {}\n{}",
        args.files,
        hours,
        args.rate,
        args.jobs,
        columns(&table)
    );
    for n in &report.notes {
        println!("note: {n}");
    }
    write_json(&args.json, &report)
}
