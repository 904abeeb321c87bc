//! `vaak bench audio`: decode+resample and feature throughput, vaak against its Python peers.

use crate::peer::{self, PeerArgs};
use crate::report::{time_median, CaseResult, Machine, Measurement, Report, Timing};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vaak_audio::io::{decode_file, write_wav, WavFormat};

const PEER_SCRIPT: &str = include_str!("../peers/audio_peer.py");

#[derive(Args)]
pub struct AudioBenchArgs {
    /// Audio files to measure on. Without any, a seeded synthetic corpus is generated
    /// (--synth-files WAVs of --synth-seconds each, at 44.1 kHz PCM16 and 48 kHz float).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Number of synthetic files when no --input is given.
    #[arg(long, default_value_t = 4)]
    synth_files: usize,
    /// Length of each synthetic file in seconds.
    #[arg(long, default_value_t = 10.0)]
    synth_seconds: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-audio.json")]
    json: PathBuf,
    /// Minimum measuring time per case, in seconds (after one warm-up pass).
    #[arg(long, default_value_t = 0.8)]
    min_time: f64,
    /// Thread count for the PyTorch peer (vaak's audio path is single-threaded).
    #[arg(long, default_value_t = 1)]
    peer_threads: usize,
    #[command(flatten)]
    peer: PeerArgs,
}

pub fn run(args: AudioBenchArgs) -> Result<()> {
    let synth_dir = tempfile::tempdir().context("creating a temp dir")?;
    let files = if args.inputs.is_empty() {
        synth_corpus(synth_dir.path(), args.synth_files, args.synth_seconds)?
    } else {
        args.inputs.clone()
    };
    let timing = Timing {
        min_time: Duration::from_secs_f64(args.min_time),
        ..Timing::default()
    };

    let clips: Vec<Vec<f32>> = files
        .iter()
        .map(|f| decode_file(f, Some(16_000)).map(|a| a.samples))
        .collect::<std::result::Result<_, _>>()?;
    let audio_s: f64 = clips.iter().map(|c| c.len() as f64 / 16_000.0).sum();
    eprintln!(
        "bench audio: {} files, {:.1} s of audio; measuring vaak...",
        files.len(),
        audio_s
    );

    let vaak = |name: &str, seconds: f64| Measurement {
        implementation: name.to_string(),
        seconds,
        throughput: audio_s / seconds,
        threads: 1,
    };
    let mut cases = Vec::new();
    let mut push = |case: &str, m: Measurement| {
        cases.push(CaseResult {
            case: case.to_string(),
            unit: "x RT".to_string(),
            vaak: m,
            peers: Vec::new(),
        })
    };

    let t = time_median(timing, || {
        for f in &files {
            decode_file(f, Some(16_000))?;
        }
        Ok(())
    })?;
    push("decode+resample->16k", vaak("vaak (symphonia+rubato)", t));

    for n_mels in [80, 128] {
        let mel = vaak_audio::features::WhisperMel::new(n_mels)?;
        let t = time_median(timing, || {
            for c in &clips {
                mel.compute(c, true)?;
            }
            Ok(())
        })?;
        push(
            &format!("whisper log-mel {n_mels} (30 s window)"),
            vaak("vaak WhisperMel", t),
        );
    }

    let kaldi = vaak_audio::features::KaldiFbank::new(vaak_audio::features::KaldiFbankOptions {
        num_mel_bins: 80,
        ..Default::default()
    })?;
    let t = time_median(timing, || {
        for c in &clips {
            kaldi.compute(c)?;
        }
        Ok(())
    })?;
    push("kaldi fbank 80", vaak("vaak KaldiFbank", t));

    let sb = vaak_audio::features::SpeechbrainFbank::new(Default::default())?;
    let t = time_median(timing, || {
        for c in &clips {
            sb.compute(c)?;
        }
        Ok(())
    })?;
    push("speechbrain Fbank 80", vaak("vaak SpeechbrainFbank", t));

    let mut notes = Vec::new();
    if let Some(python) = args.peer.interpreter("peer", &mut notes) {
        eprintln!(
            "bench audio: measuring the Python peer ({})...",
            python.display()
        );
        let mut peer_args = vec!["--files".to_string()];
        peer_args.extend(files.iter().map(|f| f.display().to_string()));
        peer_args.extend([
            "--threads".into(),
            args.peer_threads.to_string(),
            "--min-time".into(),
            args.min_time.to_string(),
        ]);
        match peer::run_script(&python, "audio_peer.py", PEER_SCRIPT, &peer_args) {
            Err(e) => notes.push(format!("Python peer failed: {e:#}")),
            Ok(v) => attach_peers(&mut cases, &v, audio_s, &mut notes),
        }
    }

    let report = Report {
        benchmark: "audio".to_string(),
        machine: Machine::here(),
        input: serde_json::json!({
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "audio_seconds": audio_s,
            "synthetic": args.inputs.is_empty(),
        }),
        cases,
        notes,
    };
    report.emit(&args.json)
}

fn attach_peers(
    cases: &mut [CaseResult],
    v: &serde_json::Value,
    audio_s: f64,
    notes: &mut Vec<String>,
) {
    for c in cases.iter_mut() {
        let rows = &v["cases"][&c.case];
        if !rows.is_array() {
            notes.push(format!("peer has no result for '{}'", c.case));
            continue;
        }
        c.peers.extend(peer::measurements(rows, audio_s));
    }
    if let Some(skipped) = v["skipped"].as_array() {
        for s in skipped.iter().filter_map(|s| s.as_str()) {
            notes.push(format!(
                "peer library {s} not installed; its rows are missing"
            ));
        }
    }
    notes.extend(peer::versions_note(v));
}

/// A seeded speech-like corpus: a glottal-ish harmonic source with a gliding pitch, syllable
/// envelopes and a little noise, so resamplers and filterbanks see realistic spectra.
fn synth_corpus(dir: &Path, n: usize, seconds: f64) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for i in 0..n {
        let (sr, fmt, ext) = if i % 2 == 0 {
            (44_100, WavFormat::Pcm16, "pcm16")
        } else {
            (48_000, WavFormat::Float32, "f32")
        };
        let x = speechlike(seconds, sr, i as u64);
        let path = dir.join(format!("synth_{i}_{sr}_{ext}.wav"));
        write_wav(&path, &x, sr, fmt)?;
        out.push(path);
    }
    Ok(out)
}

pub fn speechlike(seconds: f64, sr: u32, seed: u64) -> Vec<f32> {
    let n = (seconds * sr as f64) as usize;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) - 1.0
    };
    let base = 110.0 + 40.0 * (seed % 3) as f64;
    let mut phase = 0.0f64;
    (0..n)
        .map(|t| {
            let time = t as f64 / sr as f64;
            let f0 = base * (1.0 + 0.15 * (2.0 * std::f64::consts::PI * 0.7 * time).sin());
            phase += 2.0 * std::f64::consts::PI * f0 / sr as f64;
            let voiced: f64 = (1..=12).map(|h| (h as f64 * phase).sin() / h as f64).sum();
            let syllable = (std::f64::consts::PI * 4.0 * time).sin().abs().powf(0.5);
            (0.25 * syllable * voiced + 0.01 * noise()) as f32
        })
        .collect()
}
