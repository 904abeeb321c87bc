//! `vaak data ...`: dataset tools.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vaak_cascade::synth::{parse_langs, parse_wordlist_arg, SynthConfig, Target};

#[derive(Subcommand)]
pub enum DataCommand {
    /// A seeded synthetic speech corpus (en, ru, hi, te) from espeak-ng voices and variants
    /// reading sentences of Debian word-list words, numbers and dates: `<out>/wav/<id>.wav`,
    /// `manifest.jsonl` and a `manifest.csv` that `vaak cascade` reads. Resumable: run it again
    /// with the same settings and existing WAVs are kept.
    Synth(SynthArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Languages, comma-separated; they take turns utterance by utterance.
    #[arg(long, default_value = "en,ru,hi,te")]
    langs: String,
    /// Stop once this many hours of audio are written (all languages together).
    #[arg(
        long,
        conflicts_with = "utterances",
        required_unless_present = "utterances"
    )]
    hours: Option<f64>,
    /// Stop after this many utterances.
    #[arg(long)]
    utterances: Option<usize>,
    /// Seed; the same seed and settings give the same corpus.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// espeak-ng processes at once (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// Output sample rate in Hz.
    #[arg(long, default_value_t = 16_000)]
    sample_rate: u32,
    /// Word list for a language instead of the Debian one: LANG=PATH (one word per line, or a
    /// hunspell .dic). Repeatable.
    #[arg(long = "wordlist", value_name = "LANG=PATH")]
    wordlists: Vec<String>,
    /// The espeak-ng program.
    #[arg(long, default_value = "espeak-ng")]
    espeak: PathBuf,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(a) => synth(a),
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    let target = match (a.hours, a.utterances) {
        (Some(h), _) => Target::Hours(h),
        (None, Some(n)) => Target::Utterances(n),
        (None, None) => anyhow::bail!("give --hours or --utterances"),
    };
    let mut cfg = SynthConfig::new(&a.out, target);
    cfg.langs = parse_langs(&a.langs)?;
    cfg.seed = a.seed;
    if let Some(j) = a.jobs {
        cfg.jobs = j;
    }
    cfg.sample_rate = a.sample_rate;
    cfg.program = a.espeak;
    cfg.progress = !a.no_progress;
    let mut lists = HashMap::new();
    for w in &a.wordlists {
        let (l, p) = parse_wordlist_arg(w)?;
        if lists.insert(l, p).is_some() {
            anyhow::bail!("--wordlist given twice for '{l}'");
        }
    }
    cfg.wordlists = lists;
    let t0 = std::time::Instant::now();
    let summary = vaak_cascade::synth::synthesize(&cfg)
        .with_context(|| format!("vaak data synth into {}", a.out.display()))?;
    let mut v = serde_json::to_value(&summary)?;
    v["wall_s"] = serde_json::json!(t0.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
