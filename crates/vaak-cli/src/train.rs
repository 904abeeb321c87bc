//! `vaak train codec`: trains vaak's own streaming codec (`vaak-16k` by default).
//!
//! Thin: resolve the audio files, build the config (embedded defaults < `--config` YAML <
//! flags), then `vaak_codec::train::run_training` with a progress bar and a Ctrl-C handler
//! that stops after the current step with a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vaak_codec::train::{
    run_training, CodecTrainConfig, CodecTrainer, RunOptions, TrainData, TrainDtype,
};
use vaak_nn::train::{CheckpointManager, Shard};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train vaak's streaming 16 kHz codec (causal SEANet encoder/decoder, 8 residual
    /// codebooks of 1024 learnt by EMA) from speech audio.
    ///
    /// The run directory gets `train_config.yaml` (the resolved config), `metrics.jsonl` (loss
    /// terms, grad norm, lr, codebook perplexity/usage, steps/s; validation mel distance, SNR
    /// and SI-SDR on held-out clips), `checkpoints/step_*` (atomic, with a `latest` pointer;
    /// `--resume` continues exactly) and `export/` (config.json + model.safetensors, updated at
    /// every checkpoint) and `plots/` (PNG loss curves and an original-vs-decoded validation
    /// spectrogram, redrawn at every validation), usable at once as
    /// `vaak codec roundtrip --preset vaak-16k --weights <out>/export in.wav out.wav`.
    /// Ctrl-C stops after the current step and writes a checkpoint (a second Ctrl-C exits at
    /// once). Print the defaults with `--print-config`.
    Codec(Box<CodecTrainArgs>),
    /// Train the speech-to-speech model, one curriculum stage per run: `lm` (continue
    /// unpaired speech: the first part of a clip in, the rest out), `s2s` (the cascade's
    /// source -> target pairs) and `cond` (pairs with speaker, emotion and prosody
    /// conditioning), each starting from the previous stage's export with `--init`.
    ///
    /// Audio is encoded once with the codec (the bundled vaak-16k by default) into a code
    /// cache (`<out>/code_cache`, or --cache). The run directory gets `train_config.yaml`,
    /// `metrics.jsonl` (loss, per-codebook cross-entropy and token accuracy, grad norm, lr;
    /// validation loss and accuracy on held-out examples), `checkpoints/step_*` (atomic;
    /// `--resume` continues exactly) and `export/` (config.json, model.safetensors,
    /// codec.json), usable at once as `vaak s2s translate --model <out>/export in.wav
    /// out.wav`. Ctrl-C stops after the current step with a checkpoint. Print the defaults
    /// with `--print-config`.
    S2s(Box<crate::train_s2s::S2sTrainArgs>),
    /// Redraw a codec run's pictures: `plots/curves.png` and `plots/val_*.png` from its
    /// `metrics.jsonl`, and, with `--clip`, an original-vs-decoded spectrogram of that audio
    /// through the run's `export/` checkpoint.
    Plot(PlotArgs),
}

/// `--dtype`: [`TrainDtype`]'s names, listed in `--help`, read through its `FromStr`.
fn dtype_parser() -> impl TypedValueParser<Value = TrainDtype> {
    let about = |d: TrainDtype| match d {
        TrainDtype::F32 => "f32 everywhere (the only choice on the CPU)",
        TrainDtype::Bf16 => {
            "bf16 forward/backward with f32 master weights and optimizer state (CUDA only)"
        }
    };
    PossibleValuesParser::new(TrainDtype::ALL.map(|d| PossibleValue::new(d.name()).help(about(d))))
        .try_map(|name| name.parse::<TrainDtype>())
}

#[derive(Args)]
pub struct CodecTrainArgs {
    /// Training audio: a directory (searched recursively for .wav, .flac, .mp3, .ogg) or a
    /// manifest CSV (columns id, lang, audio_path, duration_s; audio_path relative to
    /// --data-root), or a shard directory of `vaak data shard` (this rank's shards). Files are
    /// decoded, resampled to the codec rate and kept in memory.
    #[arg(long, required_unless_present = "print_config")]
    data: Option<PathBuf>,
    /// Root of a manifest's audio_path entries (default: the manifest's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    #[command(flatten)]
    ranks: RankArgs,
    /// Run directory (created; must hold no checkpoints unless --resume).
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Training config YAML (every field optional; see --print-config for all of them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Total optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Crops per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Crop length in seconds (rounded to whole codec frames).
    #[arg(long)]
    segment_s: Option<f64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, crops, augmentation and quantizer dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda[:N] (needs a build with --features cuda), metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute precision; bf16 needs CUDA (CPU training stays f32).
    #[arg(long, value_parser = dtype_parser())]
    dtype: Option<TrainDtype>,
    /// Continue from the newest checkpoint in <out>/checkpoints (its config, unless --config
    /// is given; --steps may extend the run).
    #[arg(long)]
    resume: bool,
    /// Start a new run from a codec export (config.json + model.safetensors, e.g.
    /// models/vaak-16k or another run's export/): its weights and codebooks, with a fresh
    /// optimizer and schedule. Ignored when --resume finds a checkpoint.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Codebook counts at which validation reports quality (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    val_codebooks: Vec<usize>,
    /// Print the resolved training config as YAML and exit.
    #[arg(long)]
    print_config: bool,
    /// No progress bar (log lines only).
    #[arg(long)]
    no_progress: bool,
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Codec(args) => train_codec(*args),
        TrainCommand::S2s(args) => crate::train_s2s::train_s2s(*args),
        TrainCommand::Plot(args) => plot(args),
    }
}

#[derive(Args)]
pub struct PlotArgs {
    /// The run directory of `vaak train codec --out`.
    run: PathBuf,
    /// An audio file to encode and decode with the run's export for the spectrogram picture.
    #[arg(long)]
    clip: Option<PathBuf>,
}

fn plot(args: PlotArgs) -> Result<()> {
    let files = vaak_codec::train::plots::plot_curves(&args.run)
        .with_context(|| format!("plotting {}", args.run.display()))?;
    for f in &files {
        println!("{}", f.display());
    }
    if let Some(clip) = &args.clip {
        let export = args.run.join("export");
        let codec = vaak_codec::Codec::load(
            &export.display().to_string(),
            vaak_codec::Preset::Vaak16k,
            &vaak_nn::weights::LoadOptions::default(),
        )
        .with_context(|| format!("loading {}", export.display()))?;
        let audio = vaak_audio::io::decode_file(clip, Some(codec.sample_rate() as u32))
            .with_context(|| format!("reading {}", clip.display()))?;
        let stem = clip.file_stem().and_then(|s| s.to_str()).unwrap_or("clip");
        let path = args.run.join("plots").join(format!("recon_{stem}.png"));
        let title = format!("{stem}: original (top) vs decoded (bottom)");
        vaak_codec::train::plots::plot_reconstruction(&codec, &audio.samples, &path, &title)?;
        println!("{}", path.display());
    }
    Ok(())
}

fn apply_flags(cfg: &mut CodecTrainConfig, a: &CodecTrainArgs) {
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(b) = a.batch {
        cfg.batch_size = b;
    }
    if let Some(s) = a.segment_s {
        cfg.segment_s = s;
    }
    if let Some(lr) = a.lr {
        cfg.optim.lr = lr;
        cfg.optim.min_lr = cfg.optim.min_lr.min(lr);
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(d) = a.dtype {
        cfg.dtype = d;
    }
}

fn read_config(path: &Path) -> Result<CodecTrainConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading training config {}", path.display()))?;
    Ok(CodecTrainConfig::from_yaml(
        &text,
        &path.display().to_string(),
    )?)
}

/// A fresh trainer, initialised from the export `init` when given.
fn new_trainer(
    cfg: CodecTrainConfig,
    init: Option<&Path>,
    device: &Device,
) -> Result<CodecTrainer> {
    check_dtype(&cfg, device)?;
    let mut t = CodecTrainer::new(cfg, device)?;
    if let Some(dir) = init {
        t.init_from_export(dir)
            .with_context(|| format!("--init {}", dir.display()))?;
        tracing::info!("weights and codebooks from {}", dir.display());
    }
    Ok(t)
}

fn train_codec(a: CodecTrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => read_config(p)?,
        None => CodecTrainConfig::default(),
    };
    apply_flags(&mut cfg, &a);
    if a.print_config {
        print!("{}", cfg.to_yaml()?);
        return Ok(());
    }
    let (Some(data_arg), Some(out)) = (a.data.clone(), a.out.clone()) else {
        bail!("--data and --out are required");
    };
    let ckpt_dir = out.join("checkpoints");
    let device = vaak_nn::parse_device(&a.device)?;
    let existing = if ckpt_dir.is_dir() {
        CheckpointManager::new(&ckpt_dir, 0)?.load_latest(&device)?
    } else {
        None
    };
    let mut trainer = match (a.resume, existing) {
        (true, Some(ck)) => {
            if let Some(dir) = &a.init {
                tracing::info!("--init {} ignored: resuming a checkpoint", dir.display());
            }
            let mut c = match &a.config {
                Some(_) => cfg,
                None => CodecTrainer::checkpoint_config(&ck)?,
            };
            apply_flags(&mut c, &a);
            check_dtype(&c, &device)?;
            let t = CodecTrainer::resume(&ck, Some(c), &device)
                .with_context(|| format!("resuming from {}", ck.path.display()))?;
            tracing::info!("resuming {} at step {}", ck.path.display(), t.step());
            t
        }
        (false, Some(ck)) => bail!(
            "{} already holds checkpoints (newest {}); pass --resume to continue that run or \
             choose another --out",
            ckpt_dir.display(),
            ck.path.display()
        ),
        (true, None) => {
            tracing::warn!(
                "--resume: no checkpoint in {}; starting fresh",
                ckpt_dir.display()
            );
            new_trainer(cfg, a.init.as_deref(), &device)?
        }
        (false, None) => new_trainer(cfg, a.init.as_deref(), &device)?,
    };
    let cfg = trainer.config().clone();

    let (paths, shard) = collect_audio_ranked(&data_arg, a.data_root.as_deref(), a.ranks)?;
    tracing::info!("{} audio file(s) from {}", paths.len(), data_arg.display());
    let sr = cfg.model.sample_rate as u32;
    let data = TrainData::load_shard(&paths, sr, cfg.segment_samples(), cfg.data.val_clips, shard)?;
    tracing::info!(
        "{} training clip(s), {:.1} min; {} validation clip(s){}",
        data.train_clips().len(),
        data.train_seconds() / 60.0,
        data.val_clips().len(),
        if data.val_held_out() {
            ""
        } else {
            " (not held out: too few clips)"
        }
    );

    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone());
    let bar = if a.no_progress {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(cfg.steps);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )?
            .progress_chars("=> "),
        );
        b.set_position(trainer.step());
        b
    };
    let opts = RunOptions {
        out_dir: out.clone(),
        stop: Some(stop),
        val_codebooks: a.val_codebooks.clone(),
    };
    let summary = run_training(&mut trainer, &data, &opts, &mut |m| {
        bar.set_position(m.step);
        bar.set_message(format!(
            "loss {:.3} mel {:.3} sc {:.3} gn {:.2}",
            m.loss, m.mel, m.stft_sc, m.grad_norm
        ));
    })?;
    bar.finish_and_clear();
    if summary.stopped_early {
        println!("stopped at step {} (checkpoint written)", summary.steps);
    } else {
        println!(
            "trained {} steps ({:.2} steps/s)",
            summary.steps, summary.steps_per_s
        );
    }
    if let Some(c) = &summary.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    println!("export:     {}", summary.export_dir.display());
    if !summary.final_val.is_empty() {
        println!(
            "{:>4} {:>7} {:>9} {:>9} {:>9}",
            "n_q", "kbps", "mel", "SNR dB", "SI-SDR"
        );
        for v in &summary.final_val {
            println!(
                "{:>4} {:>7.2} {:>9.4} {:>9.2} {:>9.2}",
                v.n_q, v.kbps, v.mel_distance, v.snr_db, v.si_sdr_db
            );
        }
    }
    println!(
        "try: vaak codec roundtrip --preset vaak-16k --weights {} in.wav out.wav",
        summary.export_dir.display()
    );
    Ok(())
}

fn check_dtype(cfg: &CodecTrainConfig, device: &Device) -> Result<()> {
    if cfg.dtype == TrainDtype::Bf16 && !device.is_cuda() {
        bail!(
            "dtype bf16 is for CUDA; CPU training stays f32 (candle's CPU bf16 kernels are \
             slower than f32). Use --dtype f32 or --device cuda:0"
        );
    }
    Ok(())
}

/// Stops the run after the current step on the first Ctrl-C; exits on the second.
pub(crate) fn install_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::warn!("no Ctrl-C handler (runtime failed); checkpoints are periodic");
            return;
        };
        rt.block_on(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            eprintln!(
                "\nCtrl-C: stopping after this step and writing a checkpoint (again to abort)"
            );
            stop.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

const AUDIO_EXTS: [&str; 4] = ["wav", "flac", "mp3", "ogg"];

/// This process's place in a data-parallel run: `--rank`/`--world-size`, else the `RANK` and
/// `WORLD_SIZE` environment variables (as torchrun sets them), else 0 of 1.
#[derive(Args, Clone, Copy, Debug)]
pub struct RankArgs {
    /// This process's rank in a data-parallel run (env RANK).
    #[arg(long, env = "RANK", default_value_t = 0)]
    pub rank: usize,
    /// Processes in the data-parallel run (env WORLD_SIZE).
    #[arg(long, env = "WORLD_SIZE", default_value_t = 1)]
    pub world_size: usize,
}

/// The training audio of `data` for this rank, and the [`Shard`] still to apply to it.
///
/// A shard directory (`vaak data shard`, detected by its `shards.json`) is split by shard:
/// rank `r` takes shards `i % world_size == r`, whose audio members are unpacked once into
/// `<data>/unpacked/rank<r>-of-<w>/` (the trainers read files); the returned shard is then the
/// single one. Any other input (directory, corpus or cascade manifest) is returned whole with
/// the rank's [`Shard`], which the trainer applies.
pub(crate) fn collect_audio_ranked(
    data: &Path,
    data_root: Option<&Path>,
    ranks: RankArgs,
) -> Result<(Vec<PathBuf>, Shard)> {
    let shard = Shard::new(ranks.rank, ranks.world_size)
        .map_err(|e| anyhow::anyhow!("--rank/--world-size: {e}"))?;
    if !vaak_data::shard::is_shard_dir(data) {
        return Ok((collect_audio(data, data_root)?, shard));
    }
    let dest = data
        .join("unpacked")
        .join(format!("rank{}-of-{}", ranks.rank, ranks.world_size));
    let paths = vaak_data::shard::unpack_rank(data, ranks.rank, ranks.world_size, &dest)
        .with_context(|| format!("reading the shards of {}", data.display()))?;
    if paths.is_empty() {
        bail!(
            "{}: no shard for rank {} of {} (fewer shards than processes)",
            data.display(),
            ranks.rank,
            ranks.world_size
        );
    }
    tracing::info!(
        "rank {} of {}: {} clip(s) from the shards of {}",
        ranks.rank,
        ranks.world_size,
        paths.len(),
        data.display()
    );
    Ok((paths, Shard::single()))
}

/// The audio files of a directory (recursive, sorted) or of a manifest (CSV or JSONL).
pub(crate) fn collect_audio(data: &Path, data_root: Option<&Path>) -> Result<Vec<PathBuf>> {
    if !data.exists() {
        bail!("--data {}: no such file or directory", data.display());
    }
    let found = vaak_data::collect_audio(data, data_root, &AUDIO_EXTS)
        .with_context(|| format!("reading {}", data.display()))?;
    if !found.from_manifest && found.clips.is_empty() {
        bail!(
            "{}: no .wav/.flac/.mp3/.ogg files (searched recursively)",
            data.display()
        );
    }
    for r in &found.skipped {
        tracing::warn!("{} line {}: {}; skipped", data.display(), r.line, r.reason);
    }
    if found.clips.is_empty() {
        bail!("{}: no usable rows", data.display());
    }
    Ok(found.clips.into_iter().map(|c| c.path).collect())
}
