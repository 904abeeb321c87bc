//! `vaak train s2s`: trains the speech-to-speech model, one curriculum stage per run.
//!
//! Thin: build the config (defaults < `--config` YAML < flags), turn the data into codec
//! codes through the on-disk cache (`vaak_s2s::train` builders), then `vaak_nn`'s training run
//! with a progress bar and a Ctrl-C handler that stops after the current step with a
//! checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vaak_nn::train::run::{self, RunOptions};
use vaak_nn::train::CheckpointManager;
use vaak_s2s::train::{
    build_clip_examples, AudioTokenizer, BuildReport, CodeCache, ExportInfo, S2sExample,
    S2sTrainConfig, S2sTrainer, Stage,
};

use crate::train::{collect_audio_ranked, install_ctrl_c, RankArgs};

#[derive(Args)]
pub struct S2sTrainArgs {
    /// Training data. Stage lm: audio files (a directory searched recursively for
    /// .wav/.flac/.mp3/.ogg, a CSV or JSONL manifest with an audio_path column, or a shard
    /// directory of `vaak data shard`). Stages
    /// s2s and cond: the teacher cascade's output (`<root>/parallel/<direction>/<id>/`
    /// samples, or one `parallel/<direction>` directory).
    #[arg(long, required_unless_present = "print_config")]
    data: Option<PathBuf>,
    /// Root of a manifest's audio_path entries (default: the manifest's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Stage lm: a shard directory (`vaak data shard`) is read by shard, `i % world_size ==
    /// rank`; other inputs are split clip by clip the same way.
    #[command(flatten)]
    ranks: RankArgs,
    /// Run directory (created; must hold no checkpoints unless --resume).
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Training config YAML (every key optional; see --print-config for all of them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Curriculum stage: lm (audio continuation on unpaired clips), s2s (source -> target
    /// pairs), cond (pairs with speaker, emotion and prosody conditioning).
    #[arg(long, value_parser = ["lm", "s2s", "cond"])]
    stage: Option<String>,
    /// Start from a model export (the previous stage's `<run>/export`); its codec and sizes
    /// win over the config's preset.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Model preset of a fresh run: tiny, small, base.
    #[arg(long, value_parser = ["tiny", "small", "base"])]
    preset: Option<String>,
    /// Total optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Examples per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initial weights, data order and every random choice of a step.
    #[arg(long)]
    seed: Option<u64>,
    /// Codec codebooks the model reads and writes (the codec's first N).
    #[arg(long)]
    codebooks: Option<usize>,
    /// Where encoded codes are cached (default: <out>/code_cache); shared by runs on the same
    /// data.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Also train on pairs the cascade marked bad.
    #[arg(long)]
    include_bad: bool,
    /// cpu, cuda[:N] (needs a build with --features cuda), metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Continue from the newest checkpoint in <out>/checkpoints (its config unless --config
    /// is given; --steps may extend the run).
    #[arg(long)]
    resume: bool,
    /// Print the resolved training config as YAML and exit.
    #[arg(long)]
    print_config: bool,
    /// No progress bars (log lines only).
    #[arg(long)]
    no_progress: bool,
}

fn apply_flags(cfg: &mut S2sTrainConfig, a: &S2sTrainArgs) -> Result<()> {
    if let Some(s) = &a.stage {
        cfg.stage = s.parse::<Stage>()?;
    }
    if let Some(p) = &a.preset {
        cfg.preset = p.clone();
    }
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(b) = a.batch {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.optim.lr = lr;
        cfg.optim.min_lr = cfg.optim.min_lr.min(lr);
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(c) = a.codebooks {
        cfg.data.codebooks = Some(c);
    }
    cfg.validate()?;
    Ok(())
}

fn read_config(path: &Path) -> Result<S2sTrainConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading training config {}", path.display()))?;
    S2sTrainConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))
}

fn bar(n: u64, hidden: bool, what: &str) -> Result<ProgressBar> {
    if hidden {
        return Ok(ProgressBar::hidden());
    }
    let b = ProgressBar::new(n);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    Ok(b)
}

fn report(what: &str, rep: &BuildReport) {
    tracing::info!(
        "{what}: {} used, {} skipped, {} marked bad left out; {} encoded, {} from the cache",
        rep.used,
        rep.skipped.len(),
        rep.bad,
        rep.encoded,
        rep.cache_hits
    );
    for (id, why) in rep.skipped.iter().take(10) {
        tracing::warn!("skipped {id}: {why}");
    }
    if rep.skipped.len() > 10 {
        tracing::warn!("... and {} more skipped", rep.skipped.len() - 10);
    }
}

/// The examples of `cfg.stage` from `--data`.
fn load_examples(
    a: &S2sTrainArgs,
    data: &Path,
    cfg: &S2sTrainConfig,
    tok: &AudioTokenizer,
    cache_dir: &Path,
    text: bool,
) -> Result<Vec<S2sExample>> {
    let mut cache = CodeCache::open(cache_dir, tok)
        .with_context(|| format!("opening the code cache {}", cache_dir.display()))?;
    let (examples, _) = if cfg.stage.paired() {
        let (pairs, unreadable) = vaak_s2s::train::parallel_pairs(data)?;
        let b = bar(pairs.len() as u64, a.no_progress, "encoding pairs")?;
        let mut r = vaak_s2s::train::build_pair_examples(
            &pairs,
            tok,
            &mut cache,
            a.include_bad,
            text,
            &mut || b.inc(1),
        )?;
        b.finish_and_clear();
        r.1.skipped.extend(unreadable);
        report(&format!("{} pair(s)", pairs.len()), &r.1);
        r
    } else {
        let (paths, shard) = collect_audio_ranked(data, a.data_root.as_deref(), a.ranks)?;
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % shard.world_size == shard.rank)
            .map(|(_, p)| p)
            .collect();
        let b = bar(paths.len() as u64, a.no_progress, "encoding clips")?;
        let r = build_clip_examples(&paths, tok, &mut cache, &mut || b.inc(1))?;
        b.finish_and_clear();
        report(&format!("{} audio file(s)", paths.len()), &r.1);
        r
    };
    if examples.is_empty() {
        bail!(
            "{}: no usable examples for stage {} (see the skipped samples above)",
            data.display(),
            cfg.stage
        );
    }
    Ok(examples)
}

pub fn train_s2s(a: S2sTrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => read_config(p)?,
        None => S2sTrainConfig::default(),
    };
    apply_flags(&mut cfg, &a)?;
    if a.print_config {
        print!("{}", cfg.to_yaml()?);
        return Ok(());
    }
    let (Some(data), Some(out)) = (a.data.clone(), a.out.clone()) else {
        bail!("--data and --out are required");
    };
    let device = vaak_nn::parse_device(&a.device)?;
    let ckpt_dir = out.join(run::CHECKPOINTS_DIR);
    let existing = if ckpt_dir.is_dir() {
        CheckpointManager::new(&ckpt_dir, 0)?.load_latest(&device)?
    } else {
        None
    };
    if existing.is_some() && !a.resume {
        bail!(
            "{} already holds checkpoints; pass --resume to continue that run or choose \
             another --out",
            ckpt_dir.display()
        );
    }
    if existing.is_some() && a.init.is_some() {
        bail!("--init starts a new run; it cannot be combined with --resume of an existing one");
    }
    // The resumed run's own config unless --config is given; flags apply on top.
    if let (Some(ck), None) = (&existing, &a.config) {
        let stored = ck
            .state
            .metadata
            .get("config")
            .cloned()
            .context("the checkpoint has no training config")?;
        cfg = serde_json::from_value(stored).context("the checkpoint's training config")?;
        apply_flags(&mut cfg, &a)?;
    }
    // The codec (and codebook count) of the initial model, or of a resumed run.
    if let Some(init) = &a.init {
        let info = ExportInfo::read(init).with_context(|| {
            format!(
                "--init {}: not a vaak S2S model export (config.json, model.safetensors, \
                 codec.json)",
                init.display()
            )
        })?;
        cfg.codec = info.codec;
        cfg.data.codebooks = Some(info.num_codebooks);
    }
    if let Some(ck) = &existing {
        if let Some(n) = ck
            .state
            .metadata
            .get("model_config")
            .and_then(|m| m["codec"]["num_codebooks"].as_u64())
        {
            cfg.data.codebooks = Some(n as usize);
        }
    }
    let tok = AudioTokenizer::load(&cfg.codec, cfg.data.codebooks, &device)
        .with_context(|| format!("loading codec {}", cfg.codec))?;
    tracing::info!(
        "codec {}: {} codebooks of {} at {} Hz",
        tok.name(),
        tok.num_codebooks(),
        tok.spec().cardinality,
        tok.spec().frame_rate
    );
    // The text stream of the model this run trains: the initial model's, the resumed run's,
    // or the config's.
    let text_vocab = if let Some(init) = &a.init {
        let c = std::fs::read_to_string(init.join("config.json"))
            .with_context(|| format!("reading {}", init.join("config.json").display()))?;
        serde_json::from_str::<vaak_s2s::S2sConfig>(&c)
            .with_context(|| format!("parsing {}", init.join("config.json").display()))?
            .text_vocab_size
    } else if let Some(ck) = &existing {
        ck.state
            .metadata
            .get("model_config")
            .and_then(|m| m["text_vocab_size"].as_u64())
            .map(|v| v as usize)
    } else {
        cfg.model_config(tok.spec())?.text_vocab_size
    };
    let chars = vaak_s2s::text::CharTokenizer::VOCAB;
    if let Some(v) = text_vocab.filter(|&v| v != chars) {
        bail!(
            "the model's text stream has {v} ids, but `vaak train s2s` builds text only as              character ids ({chars}: set `text: chars` and leave text_vocab_size null)"
        );
    }
    if text_vocab.is_some() {
        tracing::info!("text stream: tgt.txt as {chars} character ids over the voiced frames");
    }
    let cache_dir = a.cache.clone().unwrap_or_else(|| out.join("code_cache"));
    let examples = load_examples(&a, &data, &cfg, &tok, &cache_dir, text_vocab.is_some())?;

    let mut trainer = match existing {
        Some(ck) => {
            let t = S2sTrainer::resume(&ck, Some(cfg.clone()), examples, &device)
                .with_context(|| format!("resuming from {}", ck.path.display()))?;
            tracing::info!("resuming {} at step {}", ck.path.display(), t.step());
            t
        }
        None => S2sTrainer::new(
            cfg.clone(),
            tok.spec(),
            examples,
            a.init.as_deref(),
            &device,
        )
        .context("setting up the run")?,
    };
    trainer.set_codec_name(tok.name());
    tracing::info!(
        "stage {}: {} training / {} held-out example(s){}",
        cfg.stage,
        trainer.train_examples().len(),
        trainer.val_examples().len(),
        match trainer.dropped() {
            0 => String::new(),
            n => format!(", {n} dropped (too long)"),
        }
    );

    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());
    let pb = bar(cfg.steps, a.no_progress, "training")?;
    pb.set_position(trainer.step());
    let opts = RunOptions {
        out_dir: out.clone(),
        stop: Some(stop),
    };
    let summary = run::run(&mut trainer, &opts, &mut |m| {
        pb.set_position(m.step);
        let acc0 = m.accuracy.first().copied().unwrap_or(0.0);
        pb.set_message(format!(
            "loss {:.3} acc0 {:.3} gn {:.2}",
            m.loss, acc0, m.grad_norm
        ));
    })?;
    pb.finish_and_clear();
    if summary.stopped_early {
        println!("stopped at step {} (checkpoint written)", summary.steps);
    } else {
        println!(
            "trained {} steps of stage {} ({:.2} steps/s)",
            summary.steps, cfg.stage, summary.steps_per_s
        );
    }
    if let Some(c) = &summary.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!("export:     {}", summary.export_dir.display());
    let v = &summary.final_val;
    if v.examples > 0 {
        println!(
            "validation: loss {:.4}, per-codebook accuracy {}",
            v.loss,
            v.accuracy
                .iter()
                .map(|a| format!("{a:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let next = match cfg.stage {
        Stage::Lm => Some("s2s"),
        Stage::S2s => Some("cond"),
        Stage::Cond => None,
    };
    if let Some(n) = next {
        println!(
            "next stage: vaak train s2s --stage {n} --init {} --data PARALLEL_DIR --out RUN2",
            summary.export_dir.display()
        );
    }
    println!(
        "try: vaak s2s translate in.wav out.wav --model {}",
        summary.export_dir.display()
    );
    Ok(())
}
