//! `vaak bench vad`: the server's voice activity detection (earshot through vaak-server's
//! `TurnDetector`) against the Python `silero-vad` reference, on a labelled set built here.
//!
//! The set: espeak-ng utterances (English, Russian, Hindi and Telugu voices, several speakers)
//! with gaps of digital silence, white noise or pink noise between them (levels -50..-25 dBFS),
//! seeded. The labels come from the construction: a frame is speech when its centre lies inside
//! an utterance (trimmed to its first and last sample above -50 dBFS). Short pauses between
//! words count as speech, as a turn-taking VAD should treat them.
//!
//! Scored per detector frame (16 ms for earshot, 32 ms for silero): accuracy, precision,
//! recall, F1 over a sweep of thresholds; the server's hysteresis state (`speaking()` with the
//! default `[vad]` settings) is scored too, and the agreement of earshot with silero on a 16 ms
//! grid. Timing is per audio second (x real time) on one thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use vaak_server::client::speech;
use vaak_server::config::VadConfig;
use vaak_server::vad::{TurnDetector, VAD_FRAME};

use crate::peer::{self, PeerArgs};
use crate::report::{self, Machine};

const RATE: usize = speech::RATE as usize;
const SILERO_CHUNK: usize = 512;
const THRESHOLDS: [f32; 5] = [0.3, 0.4, 0.5, 0.6, 0.7];
const PEER_SCRIPT: &str = include_str!("../peers/vad_peer.py");

/// Flags of `vaak bench vad`.
#[derive(Args)]
pub struct VadBenchArgs {
    /// Utterances in the labelled set.
    #[arg(long, default_value_t = 36)]
    utterances: usize,
    /// Seed of the set's gaps, noise and voice order.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also write the labelled set's audio here (16 kHz PCM16 WAV).
    #[arg(long)]
    save_wav: Option<PathBuf>,
    #[arg(long, default_value = "bench-vad.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
}

/// (espeak-ng voice, text).
const SCRIPT: [(&str, &str); 12] = [
    ("en-us", "Hello, can you hear me clearly today?"),
    (
        "en-gb+f3",
        "The meeting starts at nine thirty tomorrow morning.",
    ),
    ("en-us+m3", "Please book two tickets for the evening show."),
    ("en-gb", "What is the weather like in Hyderabad this week?"),
    ("ru", "Добрый день, как у вас дела сегодня?"),
    ("ru+f2", "Встреча начнётся завтра в девять часов утра."),
    ("hi", "नमस्ते, आज आप कैसे हैं?"),
    ("hi+f3", "कल सुबह नौ बजे बैठक शुरू होगी।"),
    ("te", "నమస్కారం, మీరు ఈ రోజు ఎలా ఉన్నారు?"),
    ("te+m2", "రేపు ఉదయం తొమ్మిది గంటలకు సమావేశం ప్రారంభమవుతుంది."),
    ("en-us+f2", "Thank you, that was very helpful indeed."),
    ("en-us", "One, two, three, four, five."),
];

/// The labelled set.
pub struct LabelledSet {
    pub samples: Vec<f32>,
    pub spans: Vec<(usize, usize)>,
    /// Kind of each gap (`silence`, `white`, `pink`), in order.
    pub gaps: Vec<&'static str>,
}

impl LabelledSet {
    /// Whether sample `i` is inside an utterance.
    pub fn is_speech(&self, i: usize) -> bool {
        let k = self.spans.partition_point(|&(_, e)| e <= i);
        k < self.spans.len() && self.spans[k].0 <= i
    }

    /// Labels of consecutive frames of `frame` samples (by the frame's centre).
    pub fn labels(&self, frame: usize) -> Vec<bool> {
        (0..self.samples.len() / frame)
            .map(|f| self.is_speech(f * frame + frame / 2))
            .collect()
    }
}

fn scaled_noise(kind: &str, n: usize, dbfs: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let raw = match kind {
        "white" => vaak_audio::augment::white_noise(n, rng),
        _ => vaak_audio::augment::pink_noise(n, rng),
    };
    let rms = (raw.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
    let gain = if rms > 0.0 {
        10f64.powf(dbfs / 20.0) / rms
    } else {
        0.0
    };
    raw.iter().map(|x| (f64::from(*x) * gain) as f32).collect()
}

/// Builds the set: `n` utterances cycling through [`SCRIPT`], each followed by a 0.4–1.6 s gap.
pub fn build_set(n: usize, seed: u64) -> Result<LabelledSet> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clips = Vec::new();
    for (voice, text) in SCRIPT {
        let u =
            speech::espeak(text, voice, 160).with_context(|| format!("espeak-ng voice {voice}"))?;
        let (a, b) = speech::active_span(&u)
            .with_context(|| format!("espeak-ng voice {voice} said nothing"))?;
        clips.push(u[a..b].to_vec());
    }
    let mut set = LabelledSet {
        samples: vec![0.0; RATE / 2],
        spans: Vec::new(),
        gaps: Vec::new(),
    };
    for i in 0..n {
        let clip = &clips[(i + rng.random_range(0..clips.len())) % clips.len()];
        let gain = 10f32.powf(rng.random_range(-12.0..0.0) / 20.0);
        let off = set.samples.len();
        set.samples.extend(clip.iter().map(|s| s * gain));
        set.spans.push((off, off + clip.len()));
        let gap = (rng.random_range(0.4..1.6) * RATE as f64) as usize;
        let kind = ["silence", "white", "pink"][rng.random_range(0..3)];
        set.gaps.push(kind);
        if kind == "silence" {
            set.samples.extend(std::iter::repeat_n(0.0, gap));
        } else {
            let level = rng.random_range(-50.0..-25.0);
            set.samples.extend(scaled_noise(kind, gap, level, &mut rng));
        }
    }
    Ok(set)
}

/// Accuracy, precision, recall and F1 of `pred` against `truth`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Scores {
    pub frames: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn score(pred: &[bool], truth: &[bool]) -> Scores {
    let n = pred.len().min(truth.len());
    let (mut tp, mut fp, mut fn_, mut tn) = (0usize, 0usize, 0usize, 0usize);
    for (&p, &t) in pred.iter().zip(truth).take(n) {
        match (p, t) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = div(tp, tp + fp);
    let recall = div(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Scores {
        frames: n,
        accuracy: div(tp + tn, n),
        precision,
        recall,
        f1,
    }
}

/// Per-frame decisions of the server's detector at `threshold`, with one-frame hysteresis (so
/// `speaking()` is the raw frame decision), and the time it took.
fn vaak_raw(samples: &[f32], threshold: f32) -> (Vec<bool>, f64) {
    let cfg = VadConfig {
        threshold,
        min_speech_ms: 0,
        min_silence_ms: 0,
        ..VadConfig::default()
    };
    run_detector(samples, cfg)
}

fn run_detector(samples: &[f32], cfg: VadConfig) -> (Vec<bool>, f64) {
    let mut det = TurnDetector::new(cfg);
    let t = Instant::now();
    let out = samples
        .chunks_exact(VAD_FRAME)
        .map(|f| {
            det.push(f);
            det.speaking()
        })
        .collect();
    (out, t.elapsed().as_secs_f64())
}

#[derive(Serialize)]
struct Row {
    detector: String,
    threshold: Option<f32>,
    frame_ms: f64,
    #[serde(flatten)]
    scores: Scores,
    x_realtime: Option<f64>,
}

#[derive(Serialize)]
struct VadReport {
    benchmark: &'static str,
    machine: Machine,
    set: serde_json::Value,
    rows: Vec<Row>,
    /// Frame agreement of earshot (threshold 0.5) with silero (0.5) on the 16 ms grid.
    agreement_earshot_silero: Option<f64>,
    notes: Vec<String>,
}

pub fn run(args: VadBenchArgs) -> Result<()> {
    eprintln!(
        "building the labelled set ({} utterances)...",
        args.utterances
    );
    let set = build_set(args.utterances, args.seed)?;
    let secs = set.samples.len() as f64 / RATE as f64;
    let tmp = tempfile::tempdir()?;
    let wav = args
        .save_wav
        .clone()
        .unwrap_or_else(|| tmp.path().join("vad-set.wav"));
    vaak_audio::io::write_wav(
        &wav,
        &set.samples,
        speech::RATE,
        vaak_audio::io::WavFormat::Pcm16,
    )?;
    // Score what the detectors see: the PCM16 file, read back.
    let samples = vaak_audio::io::decode_file(&wav, Some(speech::RATE))?.samples;
    let frame_ms = |n: usize| n as f64 * 1000.0 / RATE as f64;
    let truth16 = set.labels(VAD_FRAME);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut earshot_05 = Vec::new();
    for th in THRESHOLDS {
        let (pred, t) = vaak_raw(&samples, th);
        if th == 0.5 {
            earshot_05 = pred.clone();
        }
        rows.push(Row {
            detector: "vaak earshot (frame)".into(),
            threshold: Some(th),
            frame_ms: frame_ms(VAD_FRAME),
            scores: score(&pred, &truth16),
            x_realtime: Some(secs / t),
        });
    }
    let server_cfg = VadConfig::default();
    let (pred, t) = run_detector(&samples, server_cfg.clone());
    rows.push(Row {
        detector: format!(
            "vaak server state (min speech {} ms, min silence {} ms)",
            server_cfg.min_speech_ms, server_cfg.min_silence_ms
        ),
        threshold: Some(server_cfg.threshold),
        frame_ms: frame_ms(VAD_FRAME),
        scores: score(&pred, &truth16),
        x_realtime: Some(secs / t),
    });

    let mut agreement = None;
    if let Some(py) = args.peer.interpreter("silero-vad peer", &mut notes) {
        eprintln!("running the silero-vad peer...");
        let out = peer::run_script(
            &py,
            "vad_peer.py",
            PEER_SCRIPT,
            &["--wav".into(), wav.display().to_string()],
        )?;
        let probs: Vec<f32> = out["probs"]
            .as_array()
            .context("peer wrote no probs")?
            .iter()
            .map(|p| p.as_f64().unwrap_or(0.0) as f32)
            .collect();
        let peer_s = out["seconds"].as_f64().unwrap_or(f64::NAN);
        let truth32 = set.labels(SILERO_CHUNK);
        for th in THRESHOLDS {
            let pred: Vec<bool> = probs.iter().map(|&p| p >= th).collect();
            rows.push(Row {
                detector: "silero-vad (python)".into(),
                threshold: Some(th),
                frame_ms: frame_ms(SILERO_CHUNK),
                scores: score(&pred, &truth32),
                x_realtime: Some(secs / peer_s),
            });
        }
        // Agreement on the 16 ms grid: each earshot frame against the silero chunk holding its
        // centre.
        let silero16: Vec<bool> = (0..earshot_05.len())
            .map(|f| {
                let c = (f * VAD_FRAME + VAD_FRAME / 2) / SILERO_CHUNK;
                probs.get(c).is_some_and(|&p| p >= 0.5)
            })
            .collect();
        let n = earshot_05.len().min(silero16.len());
        let same = (0..n).filter(|&i| earshot_05[i] == silero16[i]).count();
        agreement = Some(same as f64 / n.max(1) as f64);
        if let Some(v) = peer::versions_note(&out) {
            notes.push(v);
        }
    }

    let mut table = vec![vec![
        "detector".to_string(),
        "thr".into(),
        "frame".into(),
        "accuracy".into(),
        "precision".into(),
        "recall".into(),
        "F1".into(),
        "x realtime".into(),
    ]];
    for r in &rows {
        table.push(vec![
            r.detector.clone(),
            r.threshold.map_or("-".into(), |t| format!("{t:.1}")),
            format!("{:.0} ms", r.frame_ms),
            format!("{:.3}", r.scores.accuracy),
            format!("{:.3}", r.scores.precision),
            format!("{:.3}", r.scores.recall),
            format!("{:.3}", r.scores.f1),
            r.x_realtime.map_or("-".into(), |x| format!("{x:.0}")),
        ]);
    }
    let speech_s: usize = set.spans.iter().map(|(a, b)| b - a).sum();
    println!(
        "VAD on {:.1} s of audio ({} utterances, {:.0}% speech; gaps: {} silence, {} white, {} pink)",
        secs,
        set.spans.len(),
        100.0 * speech_s as f64 / set.samples.len() as f64,
        set.gaps.iter().filter(|g| **g == "silence").count(),
        set.gaps.iter().filter(|g| **g == "white").count(),
        set.gaps.iter().filter(|g| **g == "pink").count(),
    );
    print!("{}", report::columns(&table));
    if let Some(a) = agreement {
        println!("earshot vs silero frame agreement (both at 0.5, 16 ms grid): {a:.3}");
    }
    for n in &notes {
        println!("note: {n}");
    }
    let rep = VadReport {
        benchmark: "vad",
        machine: Machine::here(),
        set: serde_json::json!({
            "utterances": set.spans.len(), "seconds": secs, "seed": args.seed,
            "speech_fraction": speech_s as f64 / set.samples.len() as f64,
            "gaps": set.gaps,
        }),
        rows,
        agreement_earshot_silero: agreement,
        notes,
    };
    report::write_json(&args.json, &rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_each_cell() {
        let truth = [true, true, false, false, true];
        let pred = [true, false, true, false, true];
        let s = score(&pred, &truth);
        assert_eq!(s.frames, 5);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(score(&[false], &[false]).f1, 0.0);
    }

    #[test]
    fn labels_follow_the_spans() {
        let set = LabelledSet {
            samples: vec![0.0; 1000],
            spans: vec![(100, 300), (600, 700)],
            gaps: vec![],
        };
        assert!(!set.is_speech(99) && set.is_speech(100) && set.is_speech(299));
        assert!(!set.is_speech(300) && set.is_speech(650) && !set.is_speech(700));
        let l = set.labels(100);
        assert_eq!(
            l,
            vec![false, true, true, false, false, false, true, false, false, false]
        );
    }
}
