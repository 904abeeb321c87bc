//! `vaak codec ...`: encode audio to codec tokens, decode tokens to audio, round-trip.
//!
//! Tokens are `.npy` int64 arrays `[num_codebooks, frames]` (numpy's `<i8`; u32 and u8 files
//! are read too).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_codec::{Codec, Preset};
use vaak_nn::weights::LoadOptions;

#[derive(Subcommand)]
pub enum CodecCommand {
    /// Encode an audio file (any supported format; resampled to the codec's rate, mono) to
    /// tokens `[num_codebooks, frames]` in a .npy file.
    Encode {
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        rate: RateArgs,
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
        input: PathBuf,
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        rate: RateArgs,
        /// Also save the tokens here.
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct ModelArgs {
    /// Which codec.
    #[arg(long, value_enum)]
    preset: PresetArg,
    /// Checkpoint: a local directory with config.json + weights, or hf://org/repo[@rev].
    #[arg(long)]
    weights: String,
}

#[derive(Args)]
pub struct RateArgs {
    /// Target bandwidth in kbps (EnCodec: 1.5, 3, 6, 12, 24).
    #[arg(long, conflicts_with = "num_codebooks")]
    bandwidth: Option<f64>,
    /// Number of codebooks (default: the checkpoint's default).
    #[arg(long)]
    num_codebooks: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PresetArg {
    /// facebook/encodec_24khz (transformers layout).
    #[value(name = "encodec_24khz")]
    Encodec24khz,
    /// kyutai/mimi (transformers layout).
    Mimi,
    /// vaak's own 16 kHz codec.
    #[value(name = "vaak-16k")]
    Vaak16k,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Self {
        match p {
            PresetArg::Encodec24khz => Preset::Encodec24khz,
            PresetArg::Mimi => Preset::Mimi,
            PresetArg::Vaak16k => Preset::Vaak16k,
        }
    }
}

fn load(model: &ModelArgs, rate: Option<&RateArgs>) -> Result<Codec> {
    let mut codec = Codec::load(&model.weights, model.preset.into(), &LoadOptions::default())
        .with_context(|| format!("loading codec from {}", model.weights))?;
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

fn read_audio(codec: &Codec, path: &Path) -> Result<Vec<f32>> {
    let audio = decode_file(path, Some(codec.sample_rate() as u32))
        .with_context(|| format!("reading {}", path.display()))?;
    if audio.samples.is_empty() {
        bail!("{}: no audio samples", path.display());
    }
    Ok(audio.samples)
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
    let t = Tensor::read_npy(path).with_context(|| format!("reading {}", path.display()))?;
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
        CodecCommand::Encode {
            input,
            output,
            model,
            rate,
        } => {
            let codec = load(&model, Some(&rate))?;
            let samples = read_audio(&codec, &input)?;
            let tokens = encode(&codec, &samples)?;
            write_tokens(&output, &tokens)?;
            let (nq, frames) = tokens.dims2()?;
            eprintln!(
                "wrote {}: {nq} codebooks x {frames} frames ({} Hz frames)",
                output.display(),
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
            input,
            output,
            model,
            rate,
            tokens: tokens_out,
        } => {
            let codec = load(&model, Some(&rate))?;
            let samples = read_audio(&codec, &input)?;
            let tokens = encode(&codec, &samples)?;
            if let Some(p) = &tokens_out {
                write_tokens(p, &tokens)?;
            }
            let recon = decode(&codec, &tokens)?;
            let n = samples.len().min(recon.len());
            let snr = vaak_audio::metrics::snr_db(&samples[..n], &recon[..n])?;
            let si_sdr = vaak_audio::metrics::si_sdr_db(&samples[..n], &recon[..n])?;
            write_audio(&codec, &output, &recon[..n], false)?;
            println!(
                "{}: {} codebooks x {} frames, SNR {snr:.2} dB, SI-SDR {si_sdr:.2} dB",
                input.display(),
                tokens.dim(0)?,
                tokens.dim(1)?
            );
        }
    }
    Ok(())
}
