//! `vaak bench encodec`: whole-clip EnCodec 24 kHz encode (audio to codes) of vaak against
//! transformers' `EncodecModel` (PyTorch) on the same random full-size weights and audio, at
//! each thread count, in one run.
//!
//! - Weights: `EncodecModel(EncodecConfig())` (the facebook/encodec_24khz architecture) with
//!   seeded random weights and codebooks fitted to seeded audio, written once by the Python peer
//!   (`crates/vaak-bench/peers/encodec_peer.py --make-weights`) in the published layout
//!   (`config.json` + `model.safetensors`) and cached in a temp dir. Without the peer there is
//!   nothing to measure against and nothing to load, so the bench says so and stops.
//! - Cases: `batch 1` encodes each of `--clips` clips (`--seconds` each, speech-like, different
//!   seeds) one call at a time; `batch N` encodes them all in one padded call (vaak:
//!   `Codec::encode_batch`, per-clip lengths; transformers: zero padding plus `padding_mask`).
//! - Threads: candle's pools read `RAYON_NUM_THREADS` once per process, so each thread count
//!   runs in a child process of this binary (`<exe> bench encodec --child-out ...`); the peer
//!   uses `torch.set_num_threads`.
//! - Codes: vaak's codes of the first clip are compared with transformers' (sanity check that
//!   both run the same model).

use crate::audio::speechlike;
use crate::codec::process_cpu_s;
use crate::peer::{self, PeerArgs};
use crate::report::{time_median, CaseResult, Machine, Measurement, Report, Timing};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_codec::{Codec, Preset};
use vaak_nn::weights::LoadOptions;

const PEER_SCRIPT: &str = include_str!("../peers/encodec_peer.py");
const RATE: u32 = 24_000;
const VAAK: &str = "vaak (candle)";

#[derive(Args)]
#[command(
    mut_arg("python", |a| a.help(
        "Python interpreter with torch + transformers (default: $VAAK_PYTHON, then \
         tools/fixtures/.venv/bin/python)"
    )),
    mut_arg("no_peer", |a| a.help(
        "Skip the Python peer (then --weights-dir must hold the weights)"
    ))
)]
pub struct EncodecBenchArgs {
    /// Seconds of (seeded, speech-like) audio per clip.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Clips; with more than one, a `batch N` case encodes them all in one call.
    #[arg(long, default_value_t = 4)]
    clips: usize,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Target bandwidth in kbps (one the checkpoint lists: 1.5, 3, 6, 12, 24).
    #[arg(long, default_value_t = 6.0)]
    bandwidth: f64,
    /// Keep repeating a case until this many seconds have passed (at least 2 timed runs).
    #[arg(long, default_value_t = 1.0)]
    min_time: f64,
    /// Directory for the random full-size weights (made once by the peer, then reused).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-encodec.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
    /// Internal: measure in this process and write the rows here (set by the parent).
    #[arg(long, hide = true)]
    child_out: Option<PathBuf>,
    /// Internal: the 24 kHz input WAVs (set by the parent).
    #[arg(long, hide = true, num_args = 1..)]
    input_wavs: Vec<PathBuf>,
}

/// What a child process measured.
#[derive(Debug, Serialize, Deserialize)]
struct ChildOut {
    /// `candle_core::utils::get_num_threads()` inside the child.
    candle_threads: usize,
    /// `(case, median wall seconds, median process CPU seconds)` per pass.
    times: Vec<(String, f64, Option<f64>)>,
    /// Codes `[n_q][frames]` of the first clip.
    codes: Vec<Vec<u32>>,
}

fn case_names(clips: usize) -> Vec<String> {
    let mut v = vec!["batch 1".to_string()];
    if clips > 1 {
        v.push(format!("batch {clips}"));
    }
    v
}

fn child(args: &EncodecBenchArgs, out: &Path) -> Result<()> {
    let weights = args.weights_dir.as_ref().context("--weights-dir")?;
    let mut codec = Codec::load(
        &weights.display().to_string(),
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .with_context(|| format!("vaak EnCodec from {}", weights.display()))?;
    codec.set_bandwidth(args.bandwidth)?;
    let clips = args
        .input_wavs
        .iter()
        .map(|p| {
            let s = decode_file(p, Some(RATE))?.samples;
            let n = s.len();
            Ok(Tensor::from_vec(s, (1, n), &Device::Cpu)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let timing = Timing {
        min_time: Duration::from_secs_f64(args.min_time),
        min_iters: 2,
        max_iters: 1000,
    };
    let names = case_names(clips.len());
    let mut times = Vec::new();
    let (one, one_cpu) = wall_and_cpu(timing, || {
        for c in &clips {
            codec.encode(&c.unsqueeze(0)?)?;
        }
        Ok(())
    })?;
    times.push((names[0].clone(), one, one_cpu));
    if let Some(batch) = names.get(1) {
        let (t, cpu) = wall_and_cpu(timing, || {
            codec.encode_batch(&clips)?;
            Ok(())
        })?;
        times.push((batch.clone(), t, cpu));
    }
    let codes = codec
        .encode(&clips[0].unsqueeze(0)?)?
        .squeeze(0)?
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?;
    let res = ChildOut {
        candle_threads: candle_core::utils::get_num_threads(),
        times,
        codes,
    };
    std::fs::write(out, serde_json::to_vec(&res)?)
        .with_context(|| format!("writing {}", out.display()))
}

/// [`time_median`]'s wall seconds per call, and the median process CPU seconds of the same
/// calls (robust to other load on a shared machine; `None` without /proc).
pub(crate) fn wall_and_cpu(
    timing: Timing,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    let mut cpu = Vec::new();
    let wall = time_median(timing, || {
        let c0 = process_cpu_s();
        f()?;
        if let (Some(a), Some(b)) = (c0, process_cpu_s()) {
            cpu.push(b - a);
        }
        Ok(())
    })?;
    // The first call is time_median's warm-up.
    let mut timed: Vec<f64> = cpu.into_iter().skip(1).collect();
    timed.sort_by(|a, b| a.total_cmp(b));
    Ok((wall, timed.get(timed.len() / 2).copied()))
}

/// Equal codes over all compared, and how many were compared.
fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> (f64, usize) {
    let (mut same, mut total) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            total += 1;
            same += usize::from(p == q);
        }
    }
    (same as f64 / total.max(1) as f64, total)
}

pub fn run(args: EncodecBenchArgs) -> Result<()> {
    if let Some(out) = args.child_out.clone() {
        return child(&args, &out);
    }
    if args.clips == 0 || args.seconds <= 0.0 {
        bail!("--clips and --seconds must be positive");
    }
    let mut notes = Vec::new();
    let python = args.peer.interpreter("transformers peer", &mut notes);
    let weights = args.weights_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vaak-bench-encodec-random-seed{}", args.seed))
    });
    if weights.join("config.json").exists() && weights.join("model.safetensors").exists() {
        notes.push(format!("weights: reused {}", weights.display()));
    } else {
        let Some(py) = &python else {
            bail!(
                "no weights in {} and no Python peer to write them (give --weights-dir with a \
                 transformers EnCodec 24 kHz checkpoint, or the fixture venv)",
                weights.display()
            );
        };
        eprintln!(
            "bench encodec: making random full-size EnCodec weights in {}...",
            weights.display()
        );
        peer::run_script(
            py,
            "encodec_peer.py",
            PEER_SCRIPT,
            &[
                "--make-weights".into(),
                weights.display().to_string(),
                "--seed".into(),
                args.seed.to_string(),
            ],
        )?;
        notes.push(
            "weights: transformers EncodecModel(EncodecConfig()), seeded random, codebooks \
             fitted to seeded audio"
                .into(),
        );
    }

    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut wavs = Vec::new();
    for i in 0..args.clips {
        let p = dir.path().join(format!("clip_{i}.wav"));
        // Slightly different lengths, so the batch case pads.
        let secs = args.seconds * (1.0 - 0.05 * i as f64 / args.clips as f64);
        write_wav(
            &p,
            &speechlike(secs, RATE, args.seed + i as u64),
            RATE,
            WavFormat::Float32,
        )?;
        wavs.push(p);
    }
    let audio_s: f64 = (0..args.clips)
        .map(|i| args.seconds * (1.0 - 0.05 * i as f64 / args.clips as f64))
        .sum();

    let exe = std::env::current_exe().context("locating the vaak binary")?;
    let mut results: Vec<CaseResult> = Vec::new();
    let mut vaak_codes = None;
    // (case, vaak CPU s/pass, peer CPU s/pass)
    let mut cpu_s: Vec<(String, f64, Option<f64>)> = Vec::new();
    for &t in &args.threads {
        eprintln!("bench encodec: vaak, {t} thread(s)...");
        let out = dir.path().join(format!("child_{t}.json"));
        let status = Command::new(&exe)
            .env("RAYON_NUM_THREADS", t.to_string())
            .args(["bench", "encodec", "--child-out"])
            .arg(&out)
            .arg("--weights-dir")
            .arg(&weights)
            .args(["--bandwidth", &args.bandwidth.to_string()])
            .args(["--min-time", &args.min_time.to_string()])
            .arg("--input-wavs")
            .args(&wavs)
            .status()
            .context("starting the measuring child")?;
        if !status.success() {
            bail!("bench encodec child ({t} threads) failed ({status})");
        }
        let c: ChildOut = serde_json::from_slice(&std::fs::read(&out)?)
            .with_context(|| format!("parsing {}", out.display()))?;
        if c.candle_threads != t {
            notes.push(format!(
                "asked for {t} threads but candle used {} in the child",
                c.candle_threads
            ));
        }
        for (case, secs, cpu) in c.times {
            if let Some(cpu) = cpu {
                cpu_s.push((format!("{case}, {t} thr"), cpu, None));
            }
            results.push(CaseResult {
                case: format!("{case}, {t} thr"),
                unit: "x RT".into(),
                vaak: Measurement {
                    implementation: VAAK.into(),
                    seconds: secs,
                    throughput: audio_s / secs,
                    threads: t,
                },
                peers: Vec::new(),
            });
        }
        vaak_codes.get_or_insert(c.codes);
    }

    if let Some(py) = &python {
        eprintln!(
            "bench encodec: transformers EncodecModel ({})...",
            py.display()
        );
        let threads: Vec<String> = args.threads.iter().map(|t| t.to_string()).collect();
        let mut pa: Vec<String> = vec![
            "--weights".into(),
            weights.display().to_string(),
            "--threads".into(),
            threads.join(","),
            "--bandwidth".into(),
            args.bandwidth.to_string(),
            "--min-time".into(),
            args.min_time.to_string(),
            "--inputs".into(),
        ];
        pa.extend(wavs.iter().map(|p| p.display().to_string()));
        match peer::run_script(py, "encodec_peer.py", PEER_SCRIPT, &pa) {
            Err(e) => notes.push(format!("transformers peer failed: {e:#}")),
            Ok(v) => {
                for r in v["rows"].as_array().into_iter().flatten() {
                    let (Some(case), Some(secs)) = (r["case"].as_str(), r["seconds"].as_f64())
                    else {
                        continue;
                    };
                    let t = r["threads"].as_u64().unwrap_or(1) as usize;
                    let name = format!("{case}, {t} thr");
                    if let (Some(row), Some(cpu)) = (
                        cpu_s.iter_mut().find(|r| r.0 == name),
                        r["cpu_seconds"].as_f64(),
                    ) {
                        row.2 = Some(cpu);
                    }
                    if let Some(c) = results.iter_mut().find(|c| c.case == name) {
                        c.peers.push(Measurement {
                            implementation: r["implementation"]
                                .as_str()
                                .unwrap_or("transformers")
                                .to_string(),
                            seconds: secs,
                            throughput: audio_s / secs,
                            threads: t,
                        });
                    }
                }
                if let (Some(a), Ok(b)) = (
                    &vaak_codes,
                    serde_json::from_value::<Vec<Vec<u32>>>(v["codes"].clone()),
                ) {
                    let (frac, n) = agreement(a, &b);
                    notes.push(format!(
                        "codes of clip 0, vaak vs transformers: {:.2}% of {n} equal",
                        100.0 * frac
                    ));
                }
                notes.extend(peer::versions_note(&v));
            }
        }
    }
    for (case, vaak, peer) in &cpu_s {
        notes.push(match peer {
            Some(p) => format!(
                "CPU s/pass, {case}: vaak {vaak:.3}, transformers {p:.3}, vaak speed-up {:.2}x",
                p / vaak
            ),
            None => format!("CPU s/pass, {case}: vaak {vaak:.3}"),
        });
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        notes.push(format!(
            "load average at the end (1/5/15 min): {}; times are wall-clock medians and other \
             processes on a busy machine inflate them",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ));
    }

    let report = Report {
        benchmark: "encodec".into(),
        machine: Machine::here(),
        input: serde_json::json!({
            "clips": args.clips,
            "seconds_per_clip": args.seconds,
            "audio_seconds": audio_s,
            "bandwidth_kbps": args.bandwidth,
            "threads": args.threads,
            "weights": weights.display().to_string(),
        }),
        cases: results,
        notes,
    };
    report.emit(&args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_equal_codes_over_the_common_part() {
        let a = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let b = vec![vec![1, 0, 3], vec![4, 5]];
        let (f, n) = agreement(&a, &b);
        assert_eq!(n, 5);
        assert!((f - 0.8).abs() < 1e-12);
    }

    #[test]
    fn a_batch_case_only_with_several_clips() {
        assert_eq!(case_names(1), ["batch 1"]);
        assert_eq!(case_names(4), ["batch 1", "batch 4"]);
    }
}
