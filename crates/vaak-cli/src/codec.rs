//! `vaak codec ...`: encode audio to codec tokens, decode tokens to audio, round-trip, and
//! evaluate a codec over a directory or manifest of clips.
//!
//! Tokens are `.npy` int64 arrays `[num_codebooks, frames]` (numpy's `<i8`; u32 and u8 files
//! are read too). Audio at another sample rate or channel count than the codec's is downmixed
//! and resampled with a logged note, or refused with `--strict`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use vaak_audio::io::{decode_file, probe_info, write_wav, WavFormat};
use vaak_codec::bundled::BUNDLED_VAAK_16K;
use vaak_codec::eval::{bitrate_bps, ClipEval, Evaluator, Stats};
use vaak_codec::{Codec, Preset};
use vaak_nn::weights::LoadOptions;

#[derive(Subcommand)]
pub enum CodecCommand {
    /// Encode an audio file (any supported format; resampled to the codec's rate, mono) to
    /// tokens `[num_codebooks, frames]` in a .npy file.
    Encode {
        #[command(flatten)]
        io: EncodeArgs,
        #[command(flatten)]
        input_opts: InputArgs,
    },
    /// Decode a .npy token file `[num_codebooks, frames]` to a WAV file.
    Decode {
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Write 32-bit float samples instead of 16-bit PCM.
        #[arg(long)]
        float: bool,
    },
    /// Encode then decode an audio file; writes the reconstruction and prints its SNR and
    /// SI-SDR against the (resampled) input.
    Roundtrip {
        #[command(flatten)]
        io: EncodeArgs,
        /// Also save the tokens here.
        #[arg(long)]
        tokens: Option<PathBuf>,
        #[command(flatten)]
        input_opts: InputArgs,
    },
    /// Evaluate a codec on many clips: whole-clip encode + decode of each, SNR, SI-SDR,
    /// multi-resolution mel distance, bitrate and encode/decode real-time factors; prints
    /// mean/median (and each clip with --per-clip) and writes JSON with --json.
    Eval(EvalArgs),
}

/// What `encode` and `roundtrip` share: the audio in, the file out, the codec and its rate.
#[derive(Args)]
pub struct EncodeArgs {
    input: PathBuf,
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    rate: RateArgs,
}

#[derive(Args)]
pub struct InputArgs {
    /// Refuse input audio whose sample rate or channel count differs from the codec's,
    /// instead of resampling / downmixing it.
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// A directory (searched recursively for audio files) or a manifest CSV as `vaak cascade`
    /// reads it (`id`, `lang`, `audio_path`, `duration_s`; paths relative to --data-root).
    input: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    rate: RateArgs,
    #[command(flatten)]
    input_opts: InputArgs,
    /// Root that manifest `audio_path`s are relative to (default: the manifest's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Evaluate at most this many clips (in sorted / manifest order).
    #[arg(long)]
    limit: Option<usize>,
    /// Print one row per clip as well as the summary.
    #[arg(long)]
    per_clip: bool,
    /// Write the per-clip results and the summary here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct ModelArgs {
    /// Which codec.
    #[arg(long, default_value = "vaak-16k", value_parser = preset_parser())]
    preset: Preset,
    /// Checkpoint: a local directory with config.json + weights, or hf://org/repo[@rev].
    /// Optional for vaak-16k: without it the codec bundled in the binary (models/vaak-16k)
    /// is used; required for encodec_24khz and mimi.
    #[arg(long, visible_alias = "model")]
    weights: Option<String>,
}

impl ModelArgs {
    /// The checkpoint named in reports.
    fn label(&self) -> String {
        self.weights
            .clone()
            .unwrap_or_else(|| format!("{BUNDLED_VAAK_16K} (bundled)"))
    }
}

#[derive(Args)]
pub struct RateArgs {
    /// Target bandwidth in kbps (EnCodec: 1.5, 3, 6, 12, 24).
    #[arg(long, conflicts_with = "num_codebooks")]
    bandwidth: Option<f64>,
    /// Number of codebooks (default: the checkpoint's default).
    #[arg(long, visible_alias = "codebooks")]
    num_codebooks: Option<usize>,
}

/// `--preset`: [`Preset`]'s names, listed in `--help`, read through its `FromStr`.
fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    let about = |p: Preset| match p {
        Preset::Encodec24khz => "facebook/encodec_24khz (transformers layout)",
        Preset::Mimi => "kyutai/mimi (transformers layout)",
        Preset::Vaak16k => "vaak's own 16 kHz codec",
    };
    PossibleValuesParser::new(Preset::ALL.map(|p| PossibleValue::new(p.name()).help(about(p))))
        .try_map(|name| name.parse::<Preset>())
}

fn load(model: &ModelArgs, rate: Option<&RateArgs>) -> Result<Codec> {
    let preset = model.preset;
    let mut codec = match (&model.weights, preset) {
        (Some(w), _) => Codec::load(w, preset, &LoadOptions::default())
            .with_context(|| format!("loading codec from {w}"))?,
        (None, Preset::Vaak16k) => {
            Codec::bundled_vaak_16k(&Device::Cpu).context("loading the bundled vaak-16k codec")?
        }
        (None, p) => bail!(
            "--weights is required for --preset {} (a local directory or hf://org/repo); \
             only vaak-16k has a bundled checkpoint",
            p.name()
        ),
    };
    if let Some(r) = rate {
        if let Some(bw) = r.bandwidth {
            codec.set_bandwidth(bw)?;
        }
        if let Some(n) = r.num_codebooks {
            codec.set_num_codebooks(n)?;
        }
    }
    Ok(codec)
}

/// Decodes `path` to mono at the codec's rate. A file at another rate or with another channel
/// count is converted with a logged note, or refused when `strict`; an empty one is refused.
fn read_audio(codec: &Codec, path: &Path, strict: bool) -> Result<Vec<f32>> {
    let info = probe_info(path).with_context(|| format!("reading {}", path.display()))?;
    let (want_sr, want_ch) = (codec.sample_rate() as u32, codec.config().seanet.channels);
    if info.sample_rate != want_sr || info.channels as usize != want_ch {
        let what = format!(
            "{}: {} Hz, {} channel(s); the codec takes {want_sr} Hz, {want_ch} channel(s)",
            path.display(),
            info.sample_rate,
            info.channels
        );
        if strict {
            bail!("{what} (--strict: not converting)");
        }
        tracing::info!("{what}: downmixing and resampling");
    }
    let audio =
        decode_file(path, Some(want_sr)).with_context(|| format!("reading {}", path.display()))?;
    if audio.samples.is_empty() {
        bail!("{}: no audio samples (zero-length audio)", path.display());
    }
    Ok(audio.samples)
}

impl EncodeArgs {
    /// Loads the codec, reads the input at its rate and encodes it: the codec, the samples and
    /// the tokens `[num_codebooks, frames]`.
    fn encode(&self, input_opts: &InputArgs) -> Result<(Codec, Vec<f32>, Tensor)> {
        let codec = load(&self.model, Some(&self.rate))?;
        let samples = read_audio(&codec, &self.input, input_opts.strict)?;
        let tokens = encode(&codec, &samples).with_context(|| self.input.display().to_string())?;
        Ok((codec, samples, tokens))
    }
}

fn encode(codec: &Codec, samples: &[f32]) -> Result<Tensor> {
    let x = Tensor::from_slice(samples, (1, 1, samples.len()), &Device::Cpu)?;
    Ok(codec.encode(&x)?.squeeze(0)?)
}

fn decode(codec: &Codec, tokens: &Tensor) -> Result<Vec<f32>> {
    let y = codec.decode(&tokens.unsqueeze(0)?)?;
    Ok(y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

fn write_tokens(path: &Path, tokens: &Tensor) -> Result<()> {
    tokens
        .to_dtype(DType::I64)?
        .write_npy(path)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_tokens(path: &Path) -> Result<Tensor> {
    let t = Tensor::read_npy(path).with_context(|| {
        format!(
            "reading {}: tokens must be an integer .npy array [num_codebooks, frames]",
            path.display()
        )
    })?;
    if !matches!(t.dtype(), DType::I64 | DType::U32 | DType::U8) {
        bail!(
            "{}: tokens must be an integer array (int64, uint32 or uint8), got {:?}",
            path.display(),
            t.dtype()
        );
    }
    if t.rank() != 2 {
        bail!(
            "{}: tokens must be [num_codebooks, frames], got shape {:?}",
            path.display(),
            t.dims()
        );
    }
    Ok(t)
}

fn write_audio(codec: &Codec, path: &Path, samples: &[f32], float: bool) -> Result<()> {
    let fmt = if float {
        WavFormat::Float32
    } else {
        WavFormat::Pcm16
    };
    write_wav(path, samples, codec.sample_rate() as u32, fmt)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(cmd: CodecCommand) -> Result<()> {
    match cmd {
        CodecCommand::Encode { io, input_opts } => {
            let (codec, _, tokens) = io.encode(&input_opts)?;
            write_tokens(&io.output, &tokens)?;
            let (nq, frames) = tokens.dims2()?;
            eprintln!(
                "wrote {}: {nq} codebooks x {frames} frames ({} Hz frames)",
                io.output.display(),
                codec.frame_rate()
            );
        }
        CodecCommand::Decode {
            input,
            output,
            model,
            float,
        } => {
            let codec = load(&model, None)?;
            let tokens = read_tokens(&input)?;
            let samples = decode(&codec, &tokens).with_context(|| input.display().to_string())?;
            write_audio(&codec, &output, &samples, float)?;
            eprintln!(
                "wrote {} ({} Hz, {:.2} s)",
                output.display(),
                codec.sample_rate(),
                samples.len() as f64 / codec.sample_rate() as f64
            );
        }
        CodecCommand::Roundtrip {
            io,
            tokens: tokens_out,
            input_opts,
        } => {
            let (codec, samples, tokens) = io.encode(&input_opts)?;
            if let Some(p) = &tokens_out {
                write_tokens(p, &tokens)?;
            }
            let recon = decode(&codec, &tokens)?;
            let n = samples.len().min(recon.len());
            let snr = vaak_audio::metrics::snr_db(&samples[..n], &recon[..n])?;
            let si_sdr = vaak_audio::metrics::si_sdr_db(&samples[..n], &recon[..n])?;
            write_audio(&codec, &io.output, &recon[..n], false)?;
            println!(
                "{}: {} codebooks x {} frames, SNR {snr:.2} dB, SI-SDR {si_sdr:.2} dB",
                io.input.display(),
                tokens.dim(0)?,
                tokens.dim(1)?
            );
        }
        CodecCommand::Eval(args) => eval(args)?,
    }
    Ok(())
}

/// Audio file extensions `codec eval` picks up in a directory.
const AUDIO_EXTS: [&str; 7] = ["wav", "flac", "mp3", "ogg", "opus", "m4a", "aac"];

/// One clip to evaluate: a name for the report and its file.
struct ClipSource {
    name: String,
    path: PathBuf,
}

/// The clips named by a directory or a manifest, plus notes on manifest rows left out.
fn clip_sources(args: &EvalArgs) -> Result<(Vec<ClipSource>, Vec<String>)> {
    let found = vaak_data::collect_audio(&args.input, args.data_root.as_deref(), &AUDIO_EXTS)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let notes = found
        .skipped
        .iter()
        .map(|r| match &r.id {
            Some(id) => format!(
                "{} line {} ({id}): skipped: {}",
                args.input.display(),
                r.line,
                r.reason
            ),
            None => format!(
                "{} line {}: skipped ({})",
                args.input.display(),
                r.line,
                r.reason
            ),
        })
        .collect();
    let mut clips: Vec<ClipSource> = found
        .clips
        .into_iter()
        .map(|c| ClipSource {
            name: c.name,
            path: c.path,
        })
        .collect();
    if let Some(n) = args.limit {
        clips.truncate(n);
    }
    if clips.is_empty() {
        bail!("{}: no audio clips to evaluate", args.input.display());
    }
    Ok((clips, notes))
}

/// One evaluated clip, or why it could not be.
#[derive(serde::Serialize)]
struct ClipRow {
    name: String,
    path: String,
    #[serde(flatten)]
    result: Option<ClipEval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct EvalReport {
    input: String,
    preset: &'static str,
    weights: String,
    sample_rate: usize,
    frame_rate: f64,
    num_codebooks: usize,
    codebook_size: usize,
    bitrate_bps: f64,
    clips_ok: usize,
    clips_failed: usize,
    audio_seconds: f64,
    summary: std::collections::BTreeMap<&'static str, Stats>,
    notes: Vec<String>,
    clips: Vec<ClipRow>,
}

/// Picks one score out of a clip's results.
type Metric = fn(&ClipEval) -> f64;

fn eval(args: EvalArgs) -> Result<()> {
    let codec = load(&args.model, Some(&args.rate))?;
    let evaluator = Evaluator::new(&codec)?;
    let (sources, mut notes) = clip_sources(&args)?;
    let bar = indicatif::ProgressBar::new(sources.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("codec eval {bar:30} {pos}/{len} {msg} [{eta}]")
            .expect("a valid template"),
    );
    let mut rows = Vec::with_capacity(sources.len());
    for src in &sources {
        bar.set_message(src.name.clone());
        let result = read_audio(&codec, &src.path, args.input_opts.strict).and_then(|samples| {
            evaluator
                .clip(&codec, &samples)
                .with_context(|| src.path.display().to_string())
        });
        let (result, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => {
                bar.suspend(|| tracing::warn!("{}: {e:#}", src.name));
                (None, Some(format!("{e:#}")))
            }
        };
        rows.push(ClipRow {
            name: src.name.clone(),
            path: src.path.display().to_string(),
            result,
            error,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let ok: Vec<&ClipEval> = rows.iter().filter_map(|r| r.result.as_ref()).collect();
    let metrics: [(&'static str, Metric); 5] = [
        ("snr_db", |c| c.snr_db),
        ("si_sdr_db", |c| c.si_sdr_db),
        ("mel_distance", |c| c.mel_distance),
        ("encode_rtf", |c| c.encode_rtf),
        ("decode_rtf", |c| c.decode_rtf),
    ];
    let mut summary = std::collections::BTreeMap::new();
    for (name, f) in metrics {
        if let Some(s) = Stats::of(&ok.iter().map(|c| f(c)).collect::<Vec<_>>()) {
            summary.insert(name, s);
        }
    }
    let failed = rows.len() - ok.len();
    if failed > 0 {
        notes.push(format!("{failed} clip(s) failed; see their `error`"));
    }
    let report = EvalReport {
        input: args.input.display().to_string(),
        preset: args.model.preset.name(),
        weights: args.model.label(),
        sample_rate: codec.sample_rate(),
        frame_rate: codec.frame_rate(),
        num_codebooks: codec.num_codebooks(),
        codebook_size: codec.codebook_size(),
        bitrate_bps: bitrate_bps(&codec),
        clips_ok: ok.len(),
        clips_failed: failed,
        audio_seconds: ok.iter().map(|c| c.seconds).sum(),
        summary,
        notes,
        clips: rows,
    };
    print!("{}", eval_table(&report, args.per_clip));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if report.clips_ok == 0 {
        bail!("every clip failed ({} of them)", report.clips_failed);
    }
    Ok(())
}

fn eval_table(r: &EvalReport, per_clip: bool) -> String {
    let mut out = format!(
        "codec {} ({}): {} Hz, {} codebooks x {} entries at {:.2} Hz = {:.0} bps; {} clip(s), \
         {:.1} s of audio, {} failed\n",
        r.preset,
        r.weights,
        r.sample_rate,
        r.num_codebooks,
        r.codebook_size,
        r.frame_rate,
        r.bitrate_bps,
        r.clips_ok,
        r.audio_seconds,
        r.clips_failed
    );
    let header = format!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "clip", "SNR dB", "SI-SDR dB", "mel dist", "enc RTF", "dec RTF"
    );
    out.push_str(&header);
    out.push_str(&"-".repeat(header.len() - 1));
    out.push('\n');
    if per_clip {
        for c in &r.clips {
            let name: String = c.name.chars().take(32).collect();
            match &c.result {
                Some(e) => out.push_str(&format!(
                    "{name:<32} {:>9.2} {:>9.2} {:>9.4} {:>9.4} {:>9.4}\n",
                    e.snr_db, e.si_sdr_db, e.mel_distance, e.encode_rtf, e.decode_rtf
                )),
                None => out.push_str(&format!(
                    "{name:<32} error: {}\n",
                    c.error.as_deref().unwrap_or("?")
                )),
            }
        }
    }
    let get = |k: &str| r.summary.get(k);
    for (label, pick) in [
        ("mean", (|s: &Stats| s.mean) as fn(&Stats) -> f64),
        ("median", |s: &Stats| s.median),
    ] {
        let cell = |k: &str, prec: usize| {
            get(k).map_or("-".to_string(), |s| format!("{:.*}", prec, pick(s)))
        };
        out.push_str(&format!(
            "{label:<32} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            cell("snr_db", 2),
            cell("si_sdr_db", 2),
            cell("mel_distance", 4),
            cell("encode_rtf", 4),
            cell("decode_rtf", 4)
        ));
    }
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
