//! `vaak audio ...`: the audio core as command-line tools.

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use vaak_audio::io::{decode_file, probe_info, write_wav, WavFormat};

#[derive(Subcommand)]
pub enum AudioCommand {
    /// Read sample rate, channels and duration from each file's header, without decoding.
    Probe {
        /// Audio files (WAV, FLAC, MP3, Ogg/Vorbis).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decode any supported file to mono WAV, resampling with a high-quality sinc resampler.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Target sample rate in Hz (default: keep the source rate).
        #[arg(long)]
        rate: Option<u32>,
        /// Sample format of the written WAV.
        #[arg(long, value_enum, default_value_t = Format::Pcm16)]
        format: Format,
    },
    /// Compute a feature matrix and save it as .npy (float32, [frames, bins] or [bins, frames]
    /// as noted per kind).
    Features {
        input: PathBuf,
        output: PathBuf,
        /// Which features. The input is decoded and resampled to 16 kHz first.
        #[arg(long, value_enum)]
        kind: FeatureKind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// 16-bit PCM (clipped to [-1, 1]).
    Pcm16,
    /// 32-bit IEEE float.
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FeatureKind {
    /// Whisper log-mel, 80 bins, [80, frames], 30 s padded as Whisper expects.
    Whisper80,
    /// Whisper log-mel, 128 bins (large-v3), [128, frames], 30 s padded.
    Whisper128,
    /// Kaldi fbank, 80 bins, [frames, 80] (torchaudio.compliance.kaldi.fbank defaults otherwise).
    KaldiFbank80,
    /// speechbrain Fbank as the ECAPA recipe uses it (80 bins, sentence mean normalised),
    /// [frames, 80].
    EcapaFbank80,
}

pub fn run(cmd: AudioCommand) -> Result<()> {
    match cmd {
        AudioCommand::Probe { files, json } => probe(&files, json),
        AudioCommand::Convert {
            input,
            output,
            rate,
            format,
        } => {
            let audio = decode_file(&input, rate)?;
            let fmt = match format {
                Format::Pcm16 => WavFormat::Pcm16,
                Format::F32 => WavFormat::Float32,
            };
            write_wav(&output, &audio.samples, audio.sample_rate, fmt)?;
            eprintln!(
                "wrote {} ({} Hz, {:.2} s)",
                output.display(),
                audio.sample_rate,
                audio.samples.len() as f64 / audio.sample_rate as f64
            );
            Ok(())
        }
        AudioCommand::Features {
            input,
            output,
            kind,
        } => features(&input, &output, kind),
    }
}

fn probe(files: &[PathBuf], json: bool) -> Result<()> {
    let mut failed = 0;
    if !json {
        println!(
            "{:<8} {:>9} {:>4} {:>10}  file",
            "codec", "rate", "ch", "seconds"
        );
    }
    for f in files {
        match probe_info(f) {
            Ok(info) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": f.display().to_string(),
                            "codec": info.codec,
                            "sample_rate": info.sample_rate,
                            "channels": info.channels,
                            "frames": info.n_frames,
                            "duration_s": info.duration_s,
                        })
                    );
                } else {
                    let dur = info
                        .duration_s
                        .map(|d| format!("{d:.3}"))
                        .unwrap_or_else(|| "?".into());
                    println!(
                        "{:<8} {:>9} {:>4} {:>10}  {}",
                        info.codec,
                        info.sample_rate,
                        info.channels,
                        dur,
                        f.display()
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files could not be probed", files.len());
    }
    Ok(())
}

fn features(input: &PathBuf, output: &PathBuf, kind: FeatureKind) -> Result<()> {
    let audio = decode_file(input, Some(16_000))?;
    let x = &audio.samples;
    let (data, rows, cols) = match kind {
        FeatureKind::Whisper80 | FeatureKind::Whisper128 => {
            let n = if matches!(kind, FeatureKind::Whisper80) {
                80
            } else {
                128
            };
            let m = vaak_audio::features::WhisperMel::new(n)?.compute(x, true)?;
            (m.data, m.n_mels, m.n_frames)
        }
        FeatureKind::KaldiFbank80 => {
            let opts = vaak_audio::features::KaldiFbankOptions {
                num_mel_bins: 80,
                ..Default::default()
            };
            let f = vaak_audio::features::KaldiFbank::new(opts)?.compute(x)?;
            (f.data, f.n_frames, f.n_features)
        }
        FeatureKind::EcapaFbank80 => {
            let f = vaak_audio::features::SpeechbrainFbank::new(Default::default())?
                .compute_normalized(x)?;
            (f.data, f.n_frames, f.n_features)
        }
    };
    let t = candle_core::Tensor::from_vec(data, (rows, cols), &candle_core::Device::Cpu)?;
    t.write_npy(output)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("wrote {} [{rows}, {cols}]", output.display());
    Ok(())
}
