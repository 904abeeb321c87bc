//! `vaak data ...`: dataset tools.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vaak_cascade::synth::pairs::{parse_direction, synthesize_pairs, PairConfig, PairMode};
use vaak_cascade::synth::{parse_langs, parse_wordlist_arg, SynthConfig, Target};

#[derive(Subcommand)]
pub enum DataCommand {
    /// A seeded synthetic speech corpus (en, ru, hi, te) from espeak-ng voices and variants
    /// reading sentences of Debian word-list words, numbers and dates: `<out>/wav/<id>.wav`,
    /// `manifest.jsonl` and a `manifest.csv` that `vaak cascade` reads. Resumable: run it again
    /// with the same settings and existing WAVs are kept.
    ///
    /// With `--parallel --direction ruen` it writes speech pairs instead (numbers, dates, times
    /// and everyday phrases said in both languages), and with `--dialogue` spoken question/answer
    /// pairs per language (directions enen, ruru, ...), both in the cascade's parallel layout
    /// `<out>/data/parallel/<direction>/<id>/` that `vaak train s2s --stage s2s --data <out>/data`
    /// reads. `spk.npy` there is a voice id (a seeded 192-d unit vector per target voice), not an
    /// ECAPA embedding.
    Synth(SynthArgs),
    /// A corpus manifest (JSONL, or CSV with --csv) from a downloaded corpus in its published
    /// layout: `vaak data manifest librispeech ~/LibriSpeech --out ls.jsonl`. Run with --help
    /// for every recipe and the layout it expects.
    Manifest(crate::data_manifest::ManifestArgs),
    /// Counts, hours per language / split / speaker, rates and channels, and the defects of a
    /// corpus manifest (audio that fails to decode, duration mismatches, empty texts, duplicate
    /// ids), decoding every file; a table, --json for the full report, --strict to fail.
    Verify(crate::data_manifest::VerifyArgs),
    /// Decode, mono, resample (16 kHz), optionally loudness-normalise and trim a corpus
    /// manifest's audio into FLAC files and a new manifest; parallel and resumable.
    Prepare(crate::data_prepare::PrepareArgs),
    /// Seeded augmented copies of a corpus (speed, pitch, noise, gain), linked to their sources.
    Augment(crate::data_prepare::AugmentArgs),
    /// Speaker-disjoint train/val/test manifests, ratios by hours.
    Split(crate::data_prepare::SplitArgs),
    /// Tar shards (cuts.NNNNNN.jsonl + audio.NNNNNN.tar + shards.json) for sequential reading.
    Shard(crate::data_prepare::ShardArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Languages, comma-separated; they take turns utterance by utterance (also with
    /// --dialogue).
    #[arg(long, default_value = "en,ru,hi,te")]
    langs: String,
    /// Translation pairs in the parallel layout: source and target say the same number, date,
    /// clock time or phrase in the two languages of --direction. Needs --utterances.
    #[arg(
        long,
        requires = "direction",
        requires = "utterances",
        conflicts_with_all = ["dialogue", "hours", "wordlists"]
    )]
    parallel: bool,
    /// With --parallel: SRCTGT language codes, e.g. ruen, enru, hien, enhi, teen, ente.
    #[arg(long, requires = "parallel")]
    direction: Option<String>,
    /// Question -> answer pairs in each of --langs (simple sums, "what day is tomorrow", fixed
    /// exchanges) in the parallel layout under directions enen, ruru, ... Needs --utterances.
    #[arg(long, requires = "utterances", conflicts_with_all = ["hours", "wordlists"])]
    dialogue: bool,
    /// Stop once this many hours of audio are written (all languages together).
    #[arg(
        long,
        conflicts_with = "utterances",
        required_unless_present = "utterances"
    )]
    hours: Option<f64>,
    /// Stop after this many utterances (pairs with --parallel / --dialogue).
    #[arg(long)]
    utterances: Option<usize>,
    /// Seed; the same seed and settings give the same corpus.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// espeak-ng processes at once (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// Output sample rate in Hz (the plain corpus; pairs use the layout's 16 kHz src.wav and
    /// 24 kHz tgt.wav).
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
        DataCommand::Manifest(a) => crate::data_manifest::manifest(a),
        DataCommand::Verify(a) => crate::data_manifest::verify_cmd(a),
        DataCommand::Prepare(a) => crate::data_prepare::prepare_cmd(a),
        DataCommand::Augment(a) => crate::data_prepare::augment_cmd(a),
        DataCommand::Split(a) => crate::data_prepare::split_cmd(a),
        DataCommand::Shard(a) => crate::data_prepare::shard_cmd(a),
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    if a.parallel || a.dialogue {
        return synth_pairs(a);
    }
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

fn synth_pairs(a: SynthArgs) -> Result<()> {
    let mode = if a.parallel {
        let d = a
            .direction
            .as_deref()
            .context("--parallel needs --direction")?;
        let (src, tgt) = parse_direction(d)?;
        PairMode::Parallel { src, tgt }
    } else {
        PairMode::Dialogue {
            langs: parse_langs(&a.langs)?,
        }
    };
    let cfg = PairConfig {
        out: a.out.clone(),
        mode,
        utterances: a
            .utterances
            .context("--parallel/--dialogue need --utterances")?,
        seed: a.seed,
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        program: a.espeak,
        progress: !a.no_progress,
    };
    let t0 = std::time::Instant::now();
    let summary = synthesize_pairs(&cfg)
        .with_context(|| format!("vaak data synth (pairs) into {}", a.out.display()))?;
    let mut v = serde_json::to_value(&summary)?;
    v["wall_s"] = serde_json::json!(t0.elapsed().as_secs_f64());
    v["train_data"] = serde_json::json!(a.out.join("data"));
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
