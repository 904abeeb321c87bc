//! `vaak data prepare|augment|split|shard`: corpus manifests to training-ready audio.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vaak_data::augment::{augment, parse_list, AugmentSettings, Effect};
use vaak_data::prepare::{prepare, PrepareConfig};
use vaak_data::shard::shard;
use vaak_data::split::{parse_ratios, split};

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Corpus manifest (JSONL or CSV).
    manifest: PathBuf,
    /// Output directory: `audio/*.flac` and `manifest.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Where relative audio paths are resolved (default: the manifest's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Output sample rate in Hz.
    #[arg(long, default_value_t = 16_000)]
    rate: u32,
    /// Normalise each clip to this integrated loudness (LUFS, EBU R128).
    #[arg(long, allow_hyphen_values = true)]
    loudness: Option<f64>,
    /// Trim leading and trailing silence.
    #[arg(long)]
    trim_silence: bool,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
pub struct AugmentArgs {
    /// Corpus manifest (JSONL or CSV).
    manifest: PathBuf,
    /// Output directory: `audio/*.flac` and `manifest.jsonl` (the new rows).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Speed factors, comma-separated; one new row per factor (e.g. 0.9,1.1).
    #[arg(long)]
    speed: Option<String>,
    /// Pitch shifts in semitones, comma-separated; one new row per value (e.g. -2,2).
    #[arg(long, allow_hyphen_values = true)]
    pitch: Option<String>,
    /// Additive-noise SNRs in dB, comma-separated; one new row per value.
    #[arg(long, allow_hyphen_values = true)]
    noise_snr: Option<String>,
    /// Gains in dB, comma-separated; one new row per value.
    #[arg(long, allow_hyphen_values = true)]
    gain_db: Option<String>,
    /// Seed of the noise draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A directory of noise clips for --noise-snr (default: white noise).
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Also write the source rows (resampled to --rate, FLAC) into the output, so its manifest
    /// alone is the source plus the augmented copies.
    #[arg(long)]
    with_source: bool,
    /// Sample rate of the outputs.
    #[arg(long, default_value_t = 16_000)]
    rate: u32,
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
pub struct SplitArgs {
    /// Corpus manifest (JSONL or CSV).
    manifest: PathBuf,
    /// train, val and test ratios (by hours).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    ratios: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: train.jsonl, val.jsonl, test.jsonl (audio paths unchanged: read them
    /// with --data-root pointing at the input's data root unless this is that directory).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ShardArgs {
    /// Corpus manifest (JSONL or CSV).
    manifest: PathBuf,
    /// Output directory: cuts.NNNNNN.jsonl, audio.NNNNNN.tar, shards.json.
    #[arg(long)]
    out: PathBuf,
    /// Rows per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    #[arg(long)]
    data_root: Option<PathBuf>,
}

/// A bar over `rows` with an hours-of-audio-per-minute figure; returns it and the
/// per-row callback.
fn audio_bar(rows: u64, hidden: bool) -> (ProgressBar, impl Fn(f64) + Sync) {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rows)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {msg}, eta {eta}")
            .expect("a valid template"),
    );
    let micros = AtomicU64::new(0);
    let t0 = Instant::now();
    let b = bar.clone();
    let on_row = move |secs: f64| {
        let total = micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed) as f64 / 1e6 + secs;
        let min = t0.elapsed().as_secs_f64() / 60.0;
        b.set_message(format!(
            "{:.2} h of audio, {:.2} h/min",
            total / 3600.0,
            total / 3600.0 / min.max(1e-9)
        ));
        b.inc(1);
    };
    (bar, on_row)
}

fn rows_in(manifest: &std::path::Path) -> Result<u64> {
    Ok(vaak_data::corpus::read_corpus(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?
        .rows
        .len() as u64)
}

pub fn prepare_cmd(a: PrepareArgs) -> Result<()> {
    let cfg = PrepareConfig {
        out: a.out.clone(),
        data_root: a.data_root,
        rate: a.rate,
        loudness_lufs: a.loudness,
        trim_silence: a.trim_silence,
        jobs: a.jobs.unwrap_or_else(default_jobs),
    };
    let (bar, on_row) = audio_bar(rows_in(&a.manifest)?, a.no_progress);
    let t0 = Instant::now();
    let s = prepare(&a.manifest, &cfg, &on_row)
        .with_context(|| format!("vaak data prepare {}", a.manifest.display()))?;
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    let mut v = serde_json::to_value(&s)?;
    v["wall_s"] = serde_json::json!(wall);
    println!("{}", serde_json::to_string_pretty(&v)?);
    if !s.failed.is_empty() {
        bail!(
            "{} of {} row(s) failed (listed above; left out of {})",
            s.failed.len(),
            s.rows,
            s.manifest.display()
        );
    }
    Ok(())
}

/// A comma-separated effect flag, the effect its values make, and the flag's name.
type EffectFlag<'a> = (&'a Option<String>, fn(f64) -> Effect, &'static str);

pub fn augment_cmd(a: AugmentArgs) -> Result<()> {
    let mut effects = Vec::new();
    let lists: [EffectFlag; 4] = [
        (&a.speed, Effect::Speed, "--speed"),
        (&a.pitch, Effect::Pitch, "--pitch"),
        (&a.noise_snr, Effect::NoiseSnr, "--noise-snr"),
        (&a.gain_db, Effect::Gain, "--gain-db"),
    ];
    for (arg, make, flag) in lists {
        if let Some(s) = arg {
            let vals = parse_list(s).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            effects.extend(vals.into_iter().map(make));
        }
    }
    if effects.is_empty() {
        bail!("give at least one of --speed, --pitch, --noise-snr, --gain-db");
    }
    let cfg = AugmentSettings {
        out: a.out.clone(),
        data_root: a.data_root,
        rate: a.rate,
        effects: effects.clone(),
        seed: a.seed,
        noise_dir: a.noise,
        with_source: a.with_source,
        jobs: a.jobs.unwrap_or_else(default_jobs),
    };
    let (bar, on_row) = audio_bar(rows_in(&a.manifest)? * effects.len() as u64, a.no_progress);
    let s = augment(&a.manifest, &cfg, &on_row)
        .with_context(|| format!("vaak data augment {}", a.manifest.display()))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&s)?);
    if !s.failed.is_empty() {
        bail!("{} augmented row(s) failed", s.failed.len());
    }
    Ok(())
}

pub fn split_cmd(a: SplitArgs) -> Result<()> {
    let ratios = parse_ratios(&a.ratios).map_err(anyhow::Error::msg)?;
    let stats = split(&a.manifest, &a.out, ratios, a.seed)
        .with_context(|| format!("vaak data split {}", a.manifest.display()))?;
    for s in &stats {
        eprintln!(
            "{:5}: {:6} rows, {:8.3} h, {:5} speakers -> {}",
            s.name,
            s.rows,
            s.hours,
            s.speakers,
            s.path.display()
        );
    }
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

pub fn shard_cmd(a: ShardArgs) -> Result<()> {
    let index = shard(&a.manifest, &a.out, a.data_root.as_deref(), a.shard_size)
        .with_context(|| format!("vaak data shard {}", a.manifest.display()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "shards": index.shards.len(),
            "rows": index.rows,
            "hours": index.hours,
            "index": a.out.join(vaak_data::shard::SHARD_INDEX),
        }))?
    );
    Ok(())
}
