//! `vaak bench s2s`: the S2S model's serving and training speed, vaak against an eager
//! PyTorch implementation of the same model (`peers/s2s_torch.py`) on the same weights.
//!
//! - Models: seeded random `small` and `base` presets (vaak-16k tokens: 8 codebooks of 1024,
//!   delay heads), written by this command as `config.json` + `model.safetensors`; the peer
//!   loads those very files.
//! - **Parity first**: the peer computes the teacher-forced logits of one batch and the logits
//!   of KV-cached decoder steps over the same inputs, and compares them with vaak's
//!   (`parity.safetensors`); it times nothing unless both are within 1e-4.
//! - **Cases**, at each thread count (each in a child process of this binary with
//!   `RAYON_NUM_THREADS` set, as `bench codec` does; the peer uses `torch.set_num_threads`):
//!   - *first frame*: the source (`--source-frames`) streamed through the encoder but for its
//!     last partial chunk; timed: that chunk, its cross-attention keys/values, and the
//!     decoder steps until the reply's first frame is complete (K steps with the delay
//!     pattern), greedy;
//!   - *decoder step* p50/p95 at each batch (one greedy step of every slot: decoder, the K
//!     heads, argmax), over `--steps` steps after one warm-up;
//!   - *training step* of `small` at batch 8 (forward, per-codebook cross-entropy, backward,
//!     grad clipping, AdamW), 50 source and 50 target frames per row.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use serde::{Deserialize, Serialize};
use vaak_nn::train::{clip_grad_norm, AdamW, AdamWConfig};
use vaak_nn::StreamMask;
use vaak_s2s::{CodecSpec, EncodedChunk, LossWeights, S2sConfig, S2sModel, Sample, SlotCondition};

use crate::peer::{self, PeerArgs};
use crate::report::{CaseResult, Machine, Measurement, Report};

const PEER_SCRIPT: &str = include_str!("../peers/s2s_torch.py");
/// Rows, source frames and target frames of the parity batch (the source is not a multiple
/// of the chunk, so the peer's streamed encoder also meets a partial chunk).
const PARITY: (usize, usize, usize) = (2, 18, 10);
const TRAIN_BATCH: usize = 8;
const TRAIN_FRAMES: usize = 50;

#[derive(Args)]
pub struct S2sBenchArgs {
    /// Model presets (random weights).
    #[arg(long, value_delimiter = ',', default_value = "small,base")]
    presets: Vec<String>,
    /// Thread counts (each measured in its own process).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Decoder step batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    batch: Vec<usize>,
    /// Largest decoder step batch for `base` (its batch 128 takes long on a CPU).
    #[arg(long, default_value_t = 32)]
    base_max_batch: usize,
    /// Timed decoder steps per batch size.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Source frames (25 per second) of the first-frame and decoder-step cases.
    #[arg(long, default_value_t = 50)]
    source_frames: usize,
    /// Timed repetitions of the first-frame and training-step cases.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip the training step.
    #[arg(long)]
    no_train: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-s2s.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
    /// Internal: measure in this process and write the results here (set by the parent).
    #[arg(long, hide = true)]
    child_out: Option<PathBuf>,
    /// Internal: where the parent wrote the models.
    #[arg(long, hide = true)]
    models_dir: Option<PathBuf>,
}

/// What one process measured for one preset, in seconds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Timings {
    first_frame: f64,
    /// `(batch, p50, p95)`.
    decoder_step: Vec<(usize, f64, f64)>,
    /// Seconds per step and target frames per step.
    train_step: Option<(f64, usize)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChildOut {
    threads: usize,
    candle_threads: usize,
    presets: Vec<(String, Timings)>,
}

fn model_config(preset: &str) -> Result<S2sConfig> {
    let mut cfg = S2sConfig::preset(preset, CodecSpec::default())?;
    cfg.max_source_frames = 256;
    cfg.max_target_frames = 256;
    Ok(cfg)
}

/// Seeded codes `[T][K]` below `card`.
fn codes(t: usize, k: usize, card: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..t)
        .map(|_| {
            (0..k)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % card as u64) as u32
                })
                .collect()
        })
        .collect()
}

fn sample(cfg: &S2sConfig, src: usize, tgt: usize, seed: u64) -> Sample {
    let (k, c) = (cfg.codec.num_codebooks, cfg.codec.cardinality);
    Sample {
        source: codes(src, k, c, seed),
        target: codes(tgt, k, c, seed + 1000),
        text: None,
        cond: SlotCondition::default(),
    }
}

fn ids_tensor(rows: &[Vec<Vec<u32>>]) -> Result<Tensor> {
    let (b, t, k) = (rows.len(), rows[0].len(), rows[0][0].len());
    let v: Vec<i64> = rows.iter().flatten().flatten().map(|&x| x as i64).collect();
    Ok(Tensor::from_vec(v, (b, t, k), &Device::Cpu)?)
}

/// The parity batch and vaak's teacher-forced logits of it.
fn write_parity(model: &S2sModel, path: &Path) -> Result<()> {
    let cfg = model.config();
    let (b, t_src, t_tgt) = PARITY;
    let samples: Vec<Sample> = (0..b)
        .map(|i| sample(cfg, t_src, t_tgt, 11 + i as u64))
        .collect();
    let tf = model.forward_batch(&samples, false)?;
    let mut out = std::collections::HashMap::new();
    let src: Vec<Vec<Vec<u32>>> = samples.iter().map(|s| s.source.clone()).collect();
    out.insert("src_ids".to_string(), ids_tensor(&src)?);
    let dec: Vec<Vec<Vec<u32>>> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(model.layout(i, s)?.inputs))
        .collect::<Result<_>>()?;
    out.insert("dec_ids".to_string(), ids_tensor(&dec)?);
    let lang: Vec<i64> = samples
        .iter()
        .map(|s| s.cond.language.index() as i64)
        .collect();
    out.insert("lang".to_string(), Tensor::from_vec(lang, b, &Device::Cpu)?);
    for (c, l) in tf.logits.iter().enumerate() {
        out.insert(format!("logits.{c}"), l.clone());
    }
    candle_core::safetensors::save(&out, path)?;
    Ok(())
}

fn greedy(model: &S2sModel, h: &Tensor) -> Result<Vec<Vec<u32>>> {
    let per: Vec<Vec<u32>> = model
        .delay_logits(h)?
        .iter()
        .map(|l| l.argmax(D::Minus1)?.to_vec1::<u32>())
        .collect::<candle_core::Result<_>>()?;
    let b = per[0].len();
    Ok((0..b).map(|r| per.iter().map(|c| c[r]).collect()).collect())
}

fn first_frame(model: &S2sModel, n_src: usize, reps: usize) -> Result<f64> {
    let cfg = model.config();
    let (k, card) = (cfg.codec.num_codebooks, cfg.codec.cardinality);
    let sp = cfg.audio_specials();
    let chunk = model.encoder().chunk_size();
    let mut full = (n_src / chunk) * chunk;
    if full == n_src {
        full -= chunk;
    }
    let cond = model.condition(&[SlotCondition::default()], false)?;
    let mut times = Vec::new();
    for rep in 0..=reps {
        let src = codes(n_src, k, card, 100 + rep as u64);
        let mut es = model.encoder().state(1)?;
        let mut ds = model.decoder_state(1)?;
        for ch in model.encoder().push(&mut es, &[src[..full].to_vec()])? {
            model.append_memory(&mut ds, &ch)?;
        }
        model.encoder().push(&mut es, &[src[full..].to_vec()])?;
        let t0 = Instant::now();
        if let Some(ch) = model.encoder().flush(&mut es, 0)? {
            model.append_memory(&mut ds, &ch)?;
        }
        let mut inp = vec![vec![sp.bos; k]];
        for s in 0..k {
            let h = model.decoder_step(&mut ds, &inp, None, &cond, &StreamMask::All)?;
            let y = greedy(model, &h)?;
            inp = vec![(0..k)
                .map(|c| if c <= s { y[0][c] } else { sp.pad })
                .collect()];
        }
        if rep > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn decoder_steps(model: &S2sModel, b: usize, n_src: usize, steps: usize) -> Result<(f64, f64)> {
    let cfg = model.config();
    let (k, card) = (cfg.codec.num_codebooks, cfg.codec.cardinality);
    let rows: Vec<Vec<Vec<u32>>> = (0..b)
        .map(|i| codes(n_src, k, card, 500 + i as u64))
        .collect();
    let refs: Vec<&[Vec<u32>]> = rows.iter().map(|r| r.as_slice()).collect();
    let (mem, _) = model.encoder().forward(&refs, false)?;
    let mut ds = model.decoder_state(b)?;
    model.append_memory(
        &mut ds,
        &EncodedChunk {
            out: mem,
            mask: StreamMask::All,
        },
    )?;
    let cond = model.condition(&vec![SlotCondition::default(); b], false)?;
    let mut inp = vec![vec![cfg.audio_specials().bos; k]; b];
    let h = model.decoder_step(&mut ds, &inp, None, &cond, &StreamMask::All)?;
    greedy(model, &h)?;
    let mut per = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        let h = model.decoder_step(&mut ds, &inp, None, &cond, &StreamMask::All)?;
        inp = greedy(model, &h)?;
        per.push(t0.elapsed().as_secs_f64());
    }
    per.sort_by(|a, b| a.total_cmp(b));
    Ok((pct(&per, 0.5), pct(&per, 0.95)))
}

fn train_step(cfg: &S2sConfig, reps: usize) -> Result<(f64, usize)> {
    let (model, vm) = S2sModel::init_seeded(cfg, &Device::Cpu, 7)?;
    let mut params: Vec<(String, candle_core::Var)> = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<candle_core::Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let var_refs: Vec<&candle_core::Var> = vars.iter().collect();
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let samples: Vec<Sample> = (0..TRAIN_BATCH)
        .map(|i| sample(cfg, TRAIN_FRAMES, TRAIN_FRAMES, 900 + i as u64))
        .collect();
    let w = LossWeights::uniform(cfg.codec.num_codebooks);
    let mut times = Vec::new();
    for rep in 0..=reps {
        let t0 = Instant::now();
        let tf = model.forward_batch(&samples, true)?;
        let loss = model.loss(&tf, &w)?;
        let mut grads = loss.total.backward()?;
        clip_grad_norm(&mut grads, &var_refs, 1.0)?;
        opt.step(&grads)?;
        if rep > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], TRAIN_BATCH * TRAIN_FRAMES))
}

fn batches_for(args: &S2sBenchArgs, preset: &str) -> Vec<usize> {
    args.batch
        .iter()
        .copied()
        .filter(|&b| preset != "base" || b <= args.base_max_batch)
        .collect()
}

fn child(args: &S2sBenchArgs, out: &Path) -> Result<()> {
    let dir = args
        .models_dir
        .as_ref()
        .context("--child-out needs --models-dir")?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut presets = Vec::new();
    for p in &args.presets {
        let (model, _) = S2sModel::load(&dir.join(p), &Device::Cpu)?;
        eprintln!("bench s2s [{threads} thread(s)]: vaak {p} first frame ...");
        let mut t = Timings {
            first_frame: first_frame(&model, args.source_frames, args.reps)?,
            ..Default::default()
        };
        for b in batches_for(args, p) {
            eprintln!("bench s2s [{threads} thread(s)]: vaak {p} decoder step, batch {b} ...");
            let (p50, p95) = decoder_steps(&model, b, args.source_frames, args.steps)?;
            t.decoder_step.push((b, p50, p95));
        }
        if p == "small" && !args.no_train {
            eprintln!("bench s2s [{threads} thread(s)]: vaak {p} training step ...");
            t.train_step = Some(train_step(model.config(), args.reps)?);
        }
        presets.push((p.clone(), t));
    }
    let co = ChildOut {
        threads,
        candle_threads: candle_core::utils::get_num_threads(),
        presets,
    };
    std::fs::write(out, serde_json::to_vec(&co)?)?;
    Ok(())
}

fn measurement(implementation: &str, seconds: f64, work: f64, threads: usize) -> Measurement {
    Measurement {
        implementation: implementation.to_string(),
        seconds,
        throughput: work / seconds,
        threads,
    }
}

pub fn run(args: S2sBenchArgs) -> Result<()> {
    if let Some(out) = args.child_out.clone() {
        return child(&args, &out);
    }
    for p in &args.presets {
        if !["tiny", "small", "base"].contains(&p.as_str()) {
            bail!("--presets: unknown preset {p:?}; valid: tiny, small, base");
        }
    }
    let mut notes = vec![format!(
        "random weights; vaak-16k tokens (8 codebooks of 1024), delay heads; greedy steps; \
         source {} frames",
        args.source_frames
    )];
    let python = args.peer.interpreter("PyTorch peer", &mut notes);
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    for p in &args.presets {
        let cfg = model_config(p)?;
        let (model, vm) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7)?;
        S2sModel::save(&cfg, &vm, &tmp.path().join(p))?;
        write_parity(&model, &tmp.path().join(format!("parity-{p}.safetensors")))?;
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        notes.push(format!("{p}: {:.1}M parameters", n as f64 / 1e6));
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut cases = Vec::new();
    for &t in &args.threads {
        let out = tmp.path().join(format!("child_{t}.json"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.env("RAYON_NUM_THREADS", t.to_string())
            .args(["bench", "s2s", "--child-out"])
            .arg(&out)
            .arg("--models-dir")
            .arg(tmp.path())
            .arg("--presets")
            .arg(args.presets.join(","))
            .arg("--batch")
            .arg(
                args.batch
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--base-max-batch")
            .arg(args.base_max_batch.to_string())
            .arg("--steps")
            .arg(args.steps.to_string())
            .arg("--source-frames")
            .arg(args.source_frames.to_string())
            .arg("--reps")
            .arg(args.reps.to_string());
        if args.no_train {
            cmd.arg("--no-train");
        }
        let status = cmd.status().context("starting the measuring child")?;
        if !status.success() {
            bail!("bench s2s child ({t} threads) failed ({status})");
        }
        let c: ChildOut = serde_json::from_slice(&std::fs::read(&out)?)?;
        if c.candle_threads != t {
            notes.push(format!(
                "asked for {t} thread(s), candle used {}",
                c.candle_threads
            ));
        }
        for (p, vt) in &c.presets {
            let peer_t = python.as_ref().and_then(|py| {
                let cases_path = tmp.path().join(format!("cases-{p}.json"));
                let spec = serde_json::json!({
                    "first_frame": {"source_frames": args.source_frames, "reps": args.reps},
                    "decoder_step": {"batches": batches_for(&args, p),
                        "memory_frames": args.source_frames, "steps": args.steps},
                    "train_step": vt.train_step.map(|_| serde_json::json!({
                        "batch": TRAIN_BATCH, "source_frames": TRAIN_FRAMES,
                        "target_frames": TRAIN_FRAMES, "reps": args.reps})),
                });
                if let Err(e) = std::fs::write(&cases_path, spec.to_string()) {
                    notes.push(format!("writing {}: {e}", cases_path.display()));
                    return None;
                }
                eprintln!("bench s2s [{t} thread(s)]: PyTorch {p} ...");
                let a = vec![
                    "--model".to_string(),
                    tmp.path().join(p).display().to_string(),
                    "--parity".to_string(),
                    tmp.path()
                        .join(format!("parity-{p}.safetensors"))
                        .display()
                        .to_string(),
                    "--cases".to_string(),
                    cases_path.display().to_string(),
                    "--threads".to_string(),
                    t.to_string(),
                ];
                match peer::run_script(py, "s2s_torch.py", PEER_SCRIPT, &a) {
                    Ok(v) => {
                        let par = &v["parity"];
                        notes.push(format!(
                            "{p} parity ({t} thread(s)): teacher-forced logits max |diff| {:.2e}, \
                             KV-cached steps {:.2e}, peer's streamed encoder vs whole {:.2e}{}",
                            par["teacher_forced_max_abs"].as_f64().unwrap_or(f64::NAN),
                            par["kv_steps_max_abs"].as_f64().unwrap_or(f64::NAN),
                            par["encoder_stream_vs_whole_max_abs"]
                                .as_f64()
                                .unwrap_or(f64::NAN),
                            v["error"]
                                .as_str()
                                .map(|e| format!(" -- {e}"))
                                .unwrap_or_default()
                        ));
                        if t == args.threads[0] && p == &args.presets[0] {
                            notes.extend(peer::versions_note(&v));
                        }
                        Some(v["timings"].clone())
                    }
                    Err(e) => {
                        notes.push(format!("PyTorch peer failed on {p}: {e:#}"));
                        None
                    }
                }
            });
            let torch = "PyTorch eager";
            let peer_m = |sec: Option<f64>, work: f64| -> Vec<Measurement> {
                sec.map(|s| vec![measurement(torch, s, work, t)])
                    .unwrap_or_default()
            };
            let pt = peer_t.as_ref();
            cases.push(CaseResult {
                case: format!("{p} first frame (end of source -> frame 1)"),
                unit: "1/s".into(),
                vaak: measurement("vaak (candle)", vt.first_frame, 1.0, t),
                peers: peer_m(pt.and_then(|v| v["first_frame"]["median_s"].as_f64()), 1.0),
            });
            for &(b, p50, p95) in &vt.decoder_step {
                let pv = pt.map(|v| &v["decoder_step"][b.to_string()]);
                for (name, sec, key) in [("p50", p50, "p50_s"), ("p95", p95, "p95_s")] {
                    cases.push(CaseResult {
                        case: format!("{p} decoder step b{b} {name}"),
                        unit: "frames/s".into(),
                        vaak: measurement("vaak (candle)", sec, b as f64, t),
                        peers: peer_m(pv.and_then(|v| v[key].as_f64()), b as f64),
                    });
                }
            }
            if let Some((sec, frames)) = vt.train_step {
                cases.push(CaseResult {
                    case: format!("{p} training step b{TRAIN_BATCH} (AdamW)"),
                    unit: "frames/s".into(),
                    vaak: measurement("vaak (candle)", sec, frames as f64, t),
                    peers: peer_m(
                        pt.and_then(|v| v["train_step"]["median_s"].as_f64()),
                        frames as f64,
                    ),
                });
            }
        }
    }
    let report = Report {
        benchmark: "s2s".to_string(),
        machine: Machine::here(),
        input: serde_json::json!({
            "presets": args.presets,
            "threads": args.threads,
            "batch": args.batch,
            "base_max_batch": args.base_max_batch,
            "steps": args.steps,
            "source_frames": args.source_frames,
            "reps": args.reps,
            "dtype": format!("{:?}", DType::F32),
        }),
        cases,
        notes,
    };
    report.emit(&args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_file_and_measurements_on_a_tiny_model() {
        let cfg = model_config("tiny").unwrap();
        let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("parity.safetensors");
        write_parity(&model, &p).unwrap();
        let t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        let (b, ts, tt) = PARITY;
        let k = cfg.codec.num_codebooks;
        assert_eq!(t["src_ids"].dims(), &[b, ts, k]);
        let steps = cfg.decoder_steps(tt);
        assert_eq!(t["dec_ids"].dims(), &[b, steps, k]);
        assert_eq!(
            t["logits.0"].dims(),
            &[b, steps, cfg.audio_specials().vocab()]
        );
        // The timed paths run (their times are not asserted); percentiles come sorted.
        first_frame(&model, 10, 1).unwrap();
        let (p50, p95) = decoder_steps(&model, 2, 10, 3).unwrap();
        assert!(p95 >= p50);
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.95), 4.0);
    }
}
