//! `vaak s2s translate|reply`: audio in, audio out through a trained S2S model export
//! (codec encode -> model -> codec decode). Thin: parse, load, call `vaak_s2s::SpeechModel`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use vaak_audio::io::{write_wav, WavFormat};
use vaak_s2s::{Emotion, GenerationConfig, Language, SlotCondition, SpeechModel};

#[derive(Subcommand)]
pub enum S2sCommand {
    /// Speak IN.wav's content in another language: the model's reply conditioned on the
    /// target language, a voice (speaker embedding), an emotion. Needs a model trained on
    /// translation pairs (`vaak train s2s --stage s2s|cond`).
    Translate(TranslateArgs),
    /// The model's spoken reply to IN.wav with neutral conditioning (a model trained with
    /// `--stage lm` continues the speech; one trained on dialogue pairs answers).
    Reply(ReplyArgs),
}

#[derive(Args)]
pub struct ModelArgs {
    /// Model directory: a `vaak train s2s` export (`<run>/export`: config.json,
    /// model.safetensors, codec.json). Default: the bundled `models/vaak-s2s-tiny`, embedded
    /// in the binary (a tiny CPU-trained demo, not a usable translator; see its model card).
    #[arg(long, env = "VAAK_S2S_MODEL")]
    model: Option<PathBuf>,
    /// cpu, cuda[:N] (needs a build with --features cuda), metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sampling temperature (0: greedy, the most likely codes).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the K most likely codes (0: all).
    #[arg(long, default_value_t = 250)]
    top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest reply in seconds (also capped by the model's max_target_frames).
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
}

#[derive(Args)]
pub struct TranslateArgs {
    /// Input speech (any supported audio file; resampled to the codec's rate).
    input: PathBuf,
    /// Output WAV (mono, the codec's sample rate).
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// A voice shipped with the model (`<model>/voices/NAME.npy`).
    #[arg(long, conflicts_with = "speaker")]
    voice: Option<String>,
    /// A speaker embedding .npy (e.g. a cascade sample's spk.npy).
    #[arg(long)]
    speaker: Option<PathBuf>,
    /// Emotion of the reply: neutral, happy, sad, angry, fearful, disgusted, surprised, calm,
    /// excited.
    #[arg(long, default_value = "neutral", value_parser = parse_emotion)]
    emotion: Emotion,
    /// Target language: en, ru, hi, te.
    #[arg(long, default_value = "en", value_parser = parse_language)]
    lang: Language,
}

#[derive(Args)]
pub struct ReplyArgs {
    /// Input speech (any supported audio file; resampled to the codec's rate).
    input: PathBuf,
    /// Output WAV (mono, the codec's sample rate).
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

fn parse_emotion(s: &str) -> std::result::Result<Emotion, String> {
    s.parse().map_err(|e: vaak_s2s::S2sError| e.to_string())
}

fn parse_language(s: &str) -> std::result::Result<Language, String> {
    s.parse().map_err(|e: vaak_s2s::S2sError| e.to_string())
}

pub fn run(cmd: S2sCommand) -> Result<()> {
    match cmd {
        S2sCommand::Translate(a) => {
            let model = load(&a.model)?;
            let speaker = match (&a.voice, &a.speaker) {
                (Some(v), _) => Some(model.voice(v)?),
                (None, Some(p)) => Some(
                    vaak_s2s::train::read_speaker(p)
                        .with_context(|| format!("reading --speaker {}", p.display()))?,
                ),
                (None, None) => None,
            };
            let cond = SlotCondition {
                speaker,
                emotion: a.emotion,
                language: a.lang,
                prosody: [0.0; 3],
            };
            respond(&model, &a.model, &a.input, &a.output, cond)
        }
        S2sCommand::Reply(a) => {
            let model = load(&a.model)?;
            respond(
                &model,
                &a.model,
                &a.input,
                &a.output,
                SlotCondition::default(),
            )
        }
    }
}

fn load(a: &ModelArgs) -> Result<SpeechModel> {
    let device = vaak_nn::parse_device(&a.device)?;
    let Some(dir) = &a.model else {
        return vaak_s2s::bundled::load(&device).with_context(|| {
            format!(
                "loading the bundled S2S model {}",
                vaak_s2s::bundled::BUNDLED_S2S
            )
        });
    };
    if !dir.join("config.json").is_file() {
        bail!(
            "--model {}: not an S2S model export (no config.json); pass the `export` directory \
             of a `vaak train s2s` run",
            dir.display()
        );
    }
    SpeechModel::load(dir, &device).with_context(|| format!("loading --model {}", dir.display()))
}

fn respond(
    model: &SpeechModel,
    a: &ModelArgs,
    input: &Path,
    output: &Path,
    cond: SlotCondition,
) -> Result<()> {
    if a.max_seconds.is_nan() || a.max_seconds <= 0.0 {
        bail!("--max-seconds must be positive");
    }
    let samples = model
        .tokenizer()
        .read_audio(input)
        .with_context(|| format!("reading {}", input.display()))?;
    let fr = model.model().config().codec.frame_rate;
    let gen = GenerationConfig {
        temperature: a.temperature,
        top_k: (a.top_k > 0).then_some(a.top_k),
        seed: a.seed,
        max_frames: ((a.max_seconds * fr).ceil() as usize).max(1),
        ..GenerationConfig::default()
    };
    let reply = model
        .respond(&samples, cond, gen)
        .with_context(|| format!("generating the reply to {}", input.display()))?;
    let sr = model.sample_rate();
    write_wav(output, &reply.audio, sr, WavFormat::Pcm16)
        .with_context(|| format!("writing {}", output.display()))?;
    if reply.reply_frames == 0 {
        eprintln!(
            "warning: the model ended its turn at once; {} holds no audio",
            output.display()
        );
    }
    println!(
        "{}: {} frames in -> {} frames out ({:.2} s at {sr} Hz{}) -> {}",
        input.display(),
        reply.source_frames,
        reply.reply_frames,
        reply.audio.len() as f64 / sr as f64,
        if reply.truncated {
            ", stopped at the length limit"
        } else {
            ""
        },
        output.display()
    );
    if let Some(t) = &reply.text {
        println!("text stream: {t:?}");
    }
    Ok(())
}
