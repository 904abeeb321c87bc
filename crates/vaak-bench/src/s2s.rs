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
use vaak_nn::train::run::{current_host_mb, peak_host_mb};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use serde::{Deserialize, Serialize};
use vaak_nn::train::{clip_grad_norm, AdamW, AdamWConfig};
use vaak_nn::StreamMask;
use vaak_s2s::{
    CodecSpec, EncodedChunk, HeadKind, LossWeights, S2sConfig, S2sModel, Sample, SlotCondition,
};

use crate::peer::{self, PeerArgs};
use crate::report::{columns, write_json, CaseResult, Machine, Measurement, Report};

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
    /// Codebook heads: delay (K linear heads, codebook k delayed k steps), depth (a small
    /// transformer over the codebooks of each frame).
    #[arg(long, value_delimiter = ',', default_value = "delay,depth")]
    heads: Vec<String>,
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
    /// `(case, RSS at its start, peak RSS during it)` in MB.
    memory: Vec<(String, f64, f64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChildOut {
    threads: usize,
    candle_threads: usize,
    presets: Vec<(String, Timings)>,
}

fn model_config(preset: &str, head: HeadKind) -> Result<S2sConfig> {
    let mut cfg = S2sConfig::preset(preset, CodecSpec::default())?;
    cfg.head = head;
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

/// The parity batch and vaak's teacher-forced logits of it, with the decoder layout's
/// targets and mask (what the depth transformer is fed).
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
    let layouts = samples
        .iter()
        .enumerate()
        .map(|(i, s)| Ok(model.layout(i, s)?))
        .collect::<Result<Vec<_>>>()?;
    let dec: Vec<Vec<Vec<u32>>> = layouts.iter().map(|l| l.inputs.clone()).collect();
    out.insert("dec_ids".to_string(), ids_tensor(&dec)?);
    let tgt: Vec<Vec<Vec<u32>>> = layouts
        .iter()
        .map(|l| {
            l.targets
                .iter()
                .map(|r| r.iter().map(|t| t.unwrap_or(0)).collect())
                .collect()
        })
        .collect();
    out.insert("dec_targets".to_string(), ids_tensor(&tgt)?);
    let msk: Vec<Vec<Vec<u32>>> = layouts
        .iter()
        .map(|l| {
            l.targets
                .iter()
                .map(|r| r.iter().map(|t| t.is_some() as u32).collect())
                .collect()
        })
        .collect();
    out.insert("dec_mask".to_string(), ids_tensor(&msk)?);
    let lang: Vec<i64> = samples
        .iter()
        .map(|s| s.cond.language.index() as i64)
        .collect();
    out.insert("lang".to_string(), Tensor::from_vec(lang, b, &Device::Cpu)?);
    for c in 0..tf.logits.dim(2)? {
        out.insert(format!("logits.{c}"), tf.codebook_logits(c)?.contiguous()?);
    }
    candle_core::safetensors::save(&out, path)?;
    Ok(())
}

/// Greedy codes `[B][K]` of one decoder step's hidden states `h: [B, d]`: each delay head's
/// argmax, or the depth transformer run over the codebooks (each code fed to the next).
fn greedy(model: &S2sModel, h: &Tensor) -> Result<Vec<Vec<u32>>> {
    let b = h.dim(0)?;
    let per: Vec<Vec<u32>> = match model.config().head {
        HeadKind::Delay => model
            .delay_logits(h)?
            .iter()
            .map(|l| l.argmax(D::Minus1)?.to_vec1::<u32>())
            .collect::<candle_core::Result<_>>()?,
        HeadKind::Depth => {
            let mut st = model.depth_start(h)?;
            let mut prev = vec![0u32; b];
            let mut per = Vec::new();
            for _ in 0..model.config().codec.num_codebooks {
                prev = model
                    .depth_step(&mut st, &prev)?
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?;
                per.push(prev.clone());
            }
            per
        }
    };
    Ok((0..b).map(|r| per.iter().map(|c| c[r]).collect()).collect())
}

/// Resets the peak RSS to the current RSS (writing 5 to `/proc/self/clear_refs`, Linux) and
/// returns the current RSS in MB.
fn reset_peak() -> Option<f64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    current_host_mb()
}

/// Runs `f` as case `name`, recording the RSS at its start and its peak since then (MB) in
/// `mem`.
fn with_memory<T>(
    name: &str,
    mem: &mut Vec<(String, f64, f64)>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let base = reset_peak();
    let out = f()?;
    if let (Some(b), Some(p)) = (base, peak_host_mb()) {
        mem.push((name.to_string(), b, p));
    }
    Ok(out)
}

fn first_frame(model: &S2sModel, n_src: usize, reps: usize) -> Result<f64> {
    let cfg = model.config();
    let (k, card) = (cfg.codec.num_codebooks, cfg.codec.cardinality);
    let sp = cfg.audio_specials();
    let delays = cfg.delays();
    let max_delay = delays.iter().copied().max().unwrap_or(0);
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
        // Frame 0 is complete after `max_delay + 1` steps (K with the delay pattern, 1 with
        // the depth transformer).
        let mut inp = vec![vec![sp.bos; k]];
        for s in 0..=max_delay {
            let h = model.decoder_step(&mut ds, &inp, None, &cond, &StreamMask::All)?;
            let y = greedy(model, &h)?;
            inp = vec![(0..k)
                .map(|c| if delays[c] <= s { y[0][c] } else { sp.pad })
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

fn parse_head(h: &str) -> Result<HeadKind> {
    match h {
        "delay" => Ok(HeadKind::Delay),
        "depth" => Ok(HeadKind::Depth),
        other => bail!("--heads: unknown head {other:?}; valid: delay, depth"),
    }
}

/// The measured models: `(preset, head)`, named `"{preset} {head}"` in the table and
/// `{preset}-{head}` on disk.
fn model_list(args: &S2sBenchArgs) -> Vec<(String, String)> {
    args.presets
        .iter()
        .flat_map(|p| args.heads.iter().map(move |h| (p.clone(), h.clone())))
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
    for (p, h) in model_list(args) {
        let model = S2sModel::load_inference(&dir.join(format!("{p}-{h}")), &Device::Cpu)?;
        let say =
            |what: &str| eprintln!("bench s2s [{threads} thread(s)]: vaak {p} {h} {what} ...");
        let mut t = Timings::default();
        say("first frame");
        t.first_frame = with_memory("first_frame", &mut t.memory, || {
            first_frame(&model, args.source_frames, args.reps)
        })?;
        for b in batches_for(args, &p) {
            say(&format!("decoder step, batch {b}"));
            let (p50, p95) = with_memory(&format!("decoder_step_b{b}"), &mut t.memory, || {
                decoder_steps(&model, b, args.source_frames, args.steps)
            })?;
            t.decoder_step.push((b, p50, p95));
        }
        if p == "small" && !args.no_train {
            say("training step");
            let ts = with_memory("train_step", &mut t.memory, || {
                train_step(model.config(), args.reps)
            })?;
            t.train_step = Some(ts);
        }
        presets.push((format!("{p} {h}"), t));
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
    for h in &args.heads {
        parse_head(h)?;
    }
    let mut notes = vec![format!(
        "random weights; vaak-16k tokens (8 codebooks of 1024); greedy steps (delay: the K \
         heads' argmax; depth: K depth-transformer steps, each code fed to the next); source \
         {} frames",
        args.source_frames
    )];
    let python = args.peer.interpreter("PyTorch peer", &mut notes);
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    for (p, h) in model_list(&args) {
        let cfg = model_config(&p, parse_head(&h)?)?;
        let (model, vm) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7)?;
        let name = format!("{p}-{h}");
        S2sModel::save(&cfg, &vm, &tmp.path().join(&name))?;
        write_parity(
            &model,
            &tmp.path().join(format!("parity-{name}.safetensors")),
        )?;
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        notes.push(format!("{p} {h}: {:.1}M parameters", n as f64 / 1e6));
    }
    let mut memory: Vec<MemoryRow> = Vec::new();
    let mut versions_noted = false;
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
            .arg("--heads")
            .arg(args.heads.join(","))
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
        for (label, vt) in &c.presets {
            // `label` is "{preset} {head}", the model directory "{preset}-{head}".
            let name = label.replace(' ', "-");
            let p = label.split(' ').next().unwrap_or(label);
            for (case, base, peak) in &vt.memory {
                memory.push(MemoryRow {
                    model: label.clone(),
                    case: case.clone(),
                    implementation: "vaak (candle)".into(),
                    threads: t,
                    base_mb: *base,
                    peak_mb: *peak,
                });
            }
            let peer_t = python.as_ref().and_then(|py| {
                let cases_path = tmp.path().join(format!("cases-{name}.json"));
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
                    tmp.path().join(&name).display().to_string(),
                    "--parity".to_string(),
                    tmp.path()
                        .join(format!("parity-{name}.safetensors"))
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
                            "{label} parity ({t} thread(s)): teacher-forced logits max |diff| {:.2e}, \
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
                        if !versions_noted {
                            notes.extend(peer::versions_note(&v));
                            versions_noted = true;
                        }
                        if let Some(m) = v["memory"].as_object() {
                            for (case, r) in m {
                                if let (Some(b), Some(pk)) =
                                    (r["base_mb"].as_f64(), r["peak_mb"].as_f64())
                                {
                                    memory.push(MemoryRow {
                                        model: label.clone(),
                                        case: case.clone(),
                                        implementation: "PyTorch eager".into(),
                                        threads: t,
                                        base_mb: b,
                                        peak_mb: pk,
                                    });
                                }
                            }
                        }
                        Some(v["timings"].clone())
                    }
                    Err(e) => {
                        notes.push(format!("PyTorch peer failed on {label}: {e:#}"));
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
                case: format!("{label} first frame (end of source -> frame 1)"),
                unit: "1/s".into(),
                vaak: measurement("vaak (candle)", vt.first_frame, 1.0, t),
                peers: peer_m(pt.and_then(|v| v["first_frame"]["median_s"].as_f64()), 1.0),
            });
            for &(b, p50, p95) in &vt.decoder_step {
                let pv = pt.map(|v| &v["decoder_step"][b.to_string()]);
                for (name, sec, key) in [("p50", p50, "p50_s"), ("p95", p95, "p95_s")] {
                    cases.push(CaseResult {
                        case: format!("{label} decoder step b{b} {name}"),
                        unit: "frames/s".into(),
                        vaak: measurement("vaak (candle)", sec, b as f64, t),
                        peers: peer_m(pv.and_then(|v| v[key].as_f64()), b as f64),
                    });
                }
            }
            if let Some((sec, frames)) = vt.train_step {
                cases.push(CaseResult {
                    case: format!("{label} training step b{TRAIN_BATCH} (AdamW)"),
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
            "heads": args.heads,
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
    print!("{}", report.table());
    print!("{}", memory_table(&memory));
    write_json(&args.json, &S2sReport { report, memory })
}

/// Peak resident memory of one case in one process.
#[derive(Debug, Serialize)]
struct MemoryRow {
    /// `"{preset} {head}"`.
    model: String,
    /// `first_frame`, `decoder_step_b{B}` or `train_step`.
    case: String,
    implementation: String,
    threads: usize,
    /// RSS when the case started (the process, its libraries and the loaded model), MB.
    base_mb: f64,
    /// Peak RSS during the case, MB.
    peak_mb: f64,
}

/// The report with the memory rows beside the timed cases.
#[derive(Debug, Serialize)]
struct S2sReport {
    #[serde(flatten)]
    report: Report,
    memory: Vec<MemoryRow>,
}

/// One line per (model, case, threads): vaak's and the peer's peak RSS and the growth over
/// the case's start.
fn memory_table(rows: &[MemoryRow]) -> String {
    let mut out = vec![[
        "peak memory (RSS)",
        "threads",
        "vaak peak (+case)",
        "PyTorch peak (+case)",
    ]
    .map(String::from)
    .to_vec()];
    let cell = |r: Option<&MemoryRow>| {
        r.map(|r| format!("{:.0} MB (+{:.0})", r.peak_mb, r.peak_mb - r.base_mb))
            .unwrap_or_else(|| "-".into())
    };
    for r in rows.iter().filter(|r| r.implementation.starts_with("vaak")) {
        let peer = rows.iter().find(|p| {
            !p.implementation.starts_with("vaak")
                && p.model == r.model
                && p.case == r.case
                && p.threads == r.threads
        });
        out.push(vec![
            format!("{} {}", r.model, r.case),
            r.threads.to_string(),
            cell(Some(r)),
            cell(peer),
        ]);
    }
    if out.len() == 1 {
        return String::new();
    }
    columns(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_file_and_measurements_on_a_tiny_model() {
        for head in [HeadKind::Delay, HeadKind::Depth] {
            let cfg = model_config("tiny", head).unwrap();
            let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("parity.safetensors");
            write_parity(&model, &p).unwrap();
            let t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
            let (b, ts, tt) = PARITY;
            let k = cfg.codec.num_codebooks;
            assert_eq!(t["src_ids"].dims(), &[b, ts, k]);
            let steps = cfg.decoder_steps(tt);
            for name in ["dec_ids", "dec_targets", "dec_mask"] {
                assert_eq!(t[name].dims(), &[b, steps, k], "{name}");
            }
            assert_eq!(
                t["logits.0"].dims(),
                &[b, steps, cfg.audio_specials().vocab()]
            );
            // The timed paths run (their times are not asserted); percentiles come sorted.
            first_frame(&model, 10, 1).unwrap();
            let (p50, p95) = decoder_steps(&model, 2, 10, 3).unwrap();
            assert!(p95 >= p50);
            // Greedy codes are a whole frame per row, inside the codebook.
            let mut ds = model.decoder_state(1).unwrap();
            let rows = [codes(4, k, cfg.codec.cardinality, 1)];
            let refs: Vec<&[Vec<u32>]> = rows.iter().map(|r| r.as_slice()).collect();
            let (mem, _) = model.encoder().forward(&refs, false).unwrap();
            let chunk = EncodedChunk {
                out: mem,
                mask: StreamMask::All,
            };
            model.append_memory(&mut ds, &chunk).unwrap();
            let cond = model.condition(&[SlotCondition::default()], false).unwrap();
            let bos = vec![vec![cfg.audio_specials().bos; k]];
            let h = model
                .decoder_step(&mut ds, &bos, None, &cond, &StreamMask::All)
                .unwrap();
            let y = greedy(&model, &h).unwrap();
            assert_eq!((y.len(), y[0].len()), (1, k));
            assert!(y[0]
                .iter()
                .all(|&c| c < cfg.audio_specials().vocab() as u32));
        }
        // Peak memory is read back on Linux, and a case's peak is at least its start.
        let mut mem = Vec::new();
        let v = with_memory("alloc", &mut mem, || {
            Ok(vec![1u8; 64 << 20].iter().map(|&x| x as u64).sum::<u64>())
        })
        .unwrap();
        assert_eq!(v, 64 << 20);
        if cfg!(target_os = "linux") {
            let (_, base, peak) = &mem[0];
            assert!(peak - base >= 60.0, "{mem:?}");
        }
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.95), 4.0);
    }
}
