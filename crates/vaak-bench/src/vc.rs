//! `vaak bench vc`: real-time factor of OpenVoice V2 tone-colour conversion on the CPU, vaak
//! against openvoice-cli (PyTorch) on the same checkpoints and clips, in the same run.
//!
//! Converters: the tiny fixture (`tools/fixtures/data/openvoice/converter`) and a seeded random
//! full-size one (the published V2 sizes) that the Python peer writes to a temp dir; without a
//! peer only the tiny one (and any `--converter` given) is measured. Each case converts the
//! first 1, 8 or 32 clips, one clip per call as upstream does, from a precomputed source and
//! target embedding; the time covers the spectrogram and the network, not resampling. For more
//! than one clip a `batched` case also runs vaak's `convert_batched` (padded batches of up to
//! `--max-batch` clips, same audio as one by one); its peer figure is upstream's loop.

use crate::audio::speechlike;
use crate::encodec::wall_and_cpu;
use crate::peer::{self, PeerArgs, PeerTimingArgs};
use crate::report::{CaseResult, Machine, Measurement, Report, Timing};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use vaak_audio::io::{write_wav, WavFormat};
use vaak_teachers::vc::{ConvertItem, ConverterOptions, ToneColorConverter, DEFAULT_TAU};
use vaak_teachers::AudioRef;

const PEER_SCRIPT: &str = include_str!("../peers/vc_peer.py");
const RATE: u32 = 22_050;

#[derive(Args)]
#[command(
    mut_arg("python", |a| a.help(
        "Python interpreter with torch and openvoice-cli (default: $VAAK_PYTHON, then \
         tools/fixtures/.venv/bin/python)"
    )),
    mut_arg("no_peer", |a| a.help("Skip the Python peer (and so the full-size converter)")),
    mut_arg("peer_threads", |a| a.help(
        "Thread count for the PyTorch peer (default: as many as candle uses, which is \
         $RAYON_NUM_THREADS or all logical CPUs). On a busy machine prefer 1 for both \
         (RAYON_NUM_THREADS=1 --peer-threads 1): OpenMP spin-waits collapse under \
         oversubscription"
    ))
)]
pub struct VcBenchArgs {
    /// The tiny fixture converter directory.
    #[arg(long, default_value = "tools/fixtures/data/openvoice/converter")]
    tiny: PathBuf,
    /// More converters to measure, as NAME=DIR (config.json + checkpoint.pth).
    #[arg(long = "converter", value_name = "NAME=DIR")]
    converters: Vec<String>,
    /// Skip the random full-size converter (it needs the Python peer to write it).
    #[arg(long)]
    no_full: bool,
    /// Clip counts per case.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    counts: Vec<usize>,
    /// Most clips per padded batch in the `batched` cases.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Length of each synthetic clip in seconds.
    #[arg(long, default_value_t = 2.0)]
    clip_seconds: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-vc.json")]
    json: PathBuf,
    #[command(flatten)]
    timing: PeerTimingArgs,
    #[command(flatten)]
    peer: PeerArgs,
}

pub fn run(args: VcBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let n_clips = args.counts.iter().copied().max().unwrap_or(1).max(1);
    let clips: Vec<Vec<f32>> = (0..n_clips)
        .map(|i| speechlike(args.clip_seconds, RATE, i as u64))
        .collect();
    let reference = speechlike(3.0, RATE, 1000);
    let mut clip_files = Vec::new();
    for (i, c) in clips.iter().enumerate() {
        let p = tmp.path().join(format!("clip_{i}.wav"));
        write_wav(&p, c, RATE, WavFormat::Float32)?;
        clip_files.push(p);
    }
    let ref_file = tmp.path().join("reference.wav");
    write_wav(&ref_file, &reference, RATE, WavFormat::Float32)?;

    let mut notes = Vec::new();
    let python = args.peer.interpreter("peer", &mut notes);

    let mut converters: Vec<(String, PathBuf)> = vec![("tiny".into(), args.tiny.clone())];
    for spec in &args.converters {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--converter {spec:?}: expected NAME=DIR"))?;
        converters.push((name.to_string(), PathBuf::from(dir)));
    }
    if !args.no_full {
        match &python {
            Some(py) => {
                let dir = tmp.path().join("full");
                eprintln!("bench vc: writing a random full-size converter with the peer...");
                match peer::run_script(
                    py,
                    "vc_peer.py",
                    PEER_SCRIPT,
                    &["--make-full".into(), dir.display().to_string()],
                ) {
                    Ok(_) => converters.push(("full".into(), dir)),
                    Err(e) => notes.push(format!("full-size converter not made: {e:#}")),
                }
            }
            None => notes.push("full-size converter skipped: it is written by the peer".into()),
        }
    }

    let timing = |n: usize| Timing {
        min_time: Duration::from_secs_f64(args.timing.min_time),
        min_iters: if n == 1 { 3 } else { 1 },
        max_iters: 1000,
    };
    // candle's CPU kernels use this many threads ($RAYON_NUM_THREADS, else all CPUs).
    let threads = candle_core::utils::get_num_threads();
    let mut cases = Vec::new();
    // (case, vaak process CPU s/pass)
    let mut cpu_s: Vec<(String, Option<f64>)> = Vec::new();
    for (name, dir) in &converters {
        let conv =
            ToneColorConverter::load(&dir.display().to_string(), &ConverterOptions::default())
                .with_context(|| format!("loading converter {name} from {}", dir.display()))?;
        let tgt_se = conv.tone_color(AudioRef::new(&reference, RATE))?;
        let src_se = conv.tone_color(AudioRef::new(&clips[0], RATE))?;
        for &n in &args.counts {
            eprintln!("bench vc: vaak, {name} x{n}...");
            let (t, cpu) = wall_and_cpu(timing(n), || {
                for (i, c) in clips[..n].iter().enumerate() {
                    conv.convert(
                        AudioRef::new(c, RATE),
                        &src_se,
                        &tgt_se,
                        DEFAULT_TAU,
                        i as u64,
                    )?;
                }
                Ok(())
            })?;
            let audio_s = n as f64 * args.clip_seconds;
            cpu_s.push((format!("{name} x{n}"), cpu));
            eprintln!(
                "bench vc: vaak, {name} x{n}: {t:.3} s/pass, {:.2} x RT",
                audio_s / t
            );
            cases.push(CaseResult {
                case: format!("{name} x{n}"),
                unit: "x RT".into(),
                vaak: Measurement {
                    implementation: "vaak (candle)".into(),
                    seconds: t,
                    throughput: audio_s / t,
                    threads,
                },
                peers: Vec::new(),
            });
            if n > 1 {
                let items: Vec<ConvertItem<'_>> = clips[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ConvertItem {
                        src: AudioRef::new(c, RATE),
                        src_se: &src_se,
                        tgt_se: &tgt_se,
                        tau: DEFAULT_TAU,
                        seed: i as u64,
                    })
                    .collect();
                eprintln!("bench vc: vaak batched, {name} x{n}...");
                let (t, cpu) = wall_and_cpu(timing(n), || {
                    for r in conv.convert_batched(&items, args.max_batch) {
                        r?;
                    }
                    Ok(())
                })?;
                cpu_s.push((format!("{name} x{n} batched"), cpu));
                eprintln!(
                    "bench vc: vaak batched, {name} x{n}: {t:.3} s/pass, {:.2} x RT",
                    audio_s / t
                );
                cases.push(CaseResult {
                    case: format!("{name} x{n} batched"),
                    unit: "x RT".into(),
                    vaak: Measurement {
                        implementation: format!("vaak (candle), batches of <= {}", args.max_batch),
                        seconds: t,
                        throughput: audio_s / t,
                        threads,
                    },
                    peers: Vec::new(),
                });
            }
        }
    }

    if let Some(py) = &python {
        eprintln!("bench vc: measuring the PyTorch peer...");
        let peer_threads = args.timing.peer_threads.unwrap_or(threads);
        let mut pa: Vec<String> = Vec::new();
        for (name, dir) in &converters {
            pa.extend(["--converter".into(), format!("{name}={}", dir.display())]);
        }
        pa.push("--clips".into());
        pa.extend(clip_files.iter().map(|p| p.display().to_string()));
        pa.extend(["--reference".into(), ref_file.display().to_string()]);
        pa.push("--counts".into());
        pa.extend(args.counts.iter().map(|c| c.to_string()));
        pa.extend([
            "--threads".into(),
            peer_threads.to_string(),
            "--min-time".into(),
            args.timing.min_time.to_string(),
        ]);
        match peer::run_script(py, "vc_peer.py", PEER_SCRIPT, &pa) {
            Err(e) => notes.push(format!("Python peer failed: {e:#}")),
            Ok(v) => {
                for c in cases.iter_mut() {
                    // A batched case is compared with upstream's one-clip-per-call loop.
                    let key = c.case.trim_end_matches(" batched").to_string();
                    let n: f64 = key
                        .rsplit('x')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1.0);
                    let audio_s = n * args.clip_seconds;
                    c.peers
                        .extend(peer::measurements(&v["cases"][&key], audio_s));
                    let peer_cpu = v["cases"][&key][0]["cpu_seconds"].as_f64();
                    if let Some((_, Some(vaak))) = cpu_s.iter().find(|(k, _)| *k == c.case) {
                        notes.push(match peer_cpu {
                            Some(p) => format!(
                                "CPU s/pass, {}: vaak {vaak:.3}, PyTorch {p:.3}, vaak speed-up {:.2}x",
                                c.case,
                                p / vaak
                            ),
                            None => format!("CPU s/pass, {}: vaak {vaak:.3}", c.case),
                        });
                    }
                }
                notes.extend(peer::versions_note(&v));
            }
        }
    }

    let report = Report {
        benchmark: "vc".into(),
        machine: Machine::here(),
        input: serde_json::json!({
            "converters": converters.iter().map(|(n, d)| (n.clone(), d.display().to_string())).collect::<Vec<_>>(),
            "clip_seconds": args.clip_seconds,
            "counts": args.counts,
            "sample_rate": RATE,
            "tau": DEFAULT_TAU,
        }),
        cases,
        notes,
    };
    report.emit(&args.json)
}
