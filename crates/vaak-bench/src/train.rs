//! `vaak bench train`: codec training steps per second and peak memory of vaak's trainer
//! (`vaak_codec::train::CodecTrainer`, the bundled vaak-16k config) against a PyTorch peer of
//! the same model, losses and optimizer (`crates/vaak-bench/peers/codec_train_peer.py`), in
//! the same run.
//!
//! - Cases: every `--batch` x `--dtypes` x `--stages` (`recon`: reconstruction losses only;
//!   `adv`: plus the MPD + MS-STFT discriminator step, feature matching and the generator's
//!   adversarial term from the first step). The same seeded speech-like crops
//!   (`--segment-s`, 1 s by default as the trainer's) feed both implementations.
//! - Each case of each implementation runs in its own process (this binary re-run as
//!   `<exe> bench train --child-case ...`, the peer one Python process per case), so peak host
//!   memory (`VmHWM`) is per case; on CUDA a thread samples the process's GPU memory with
//!   `nvidia-smi` every 0.2 s in both (PyTorch also reports its allocator's peak).
//! - Timing: `--warmup` steps (after k-means initialisation), then steps until both
//!   `--min-steps` and `--min-time` are reached; steps/s = steps / their wall time. Process
//!   CPU time per step is reported as well: on a shared machine it is the steadier number.
//! - vaak's step is profiled by phase (codec rebuild, forward, losses, discriminator step,
//!   generator adversarial terms, backward, clipping, AdamW, EMA codebooks, readback) with the
//!   device synchronised at each boundary, in separate steps after the timed ones; plus the
//!   reconstruction losses alone on a leaf tensor (forward and backward), which splits the
//!   backward into losses and codec.
//! - Discriminators: `--disc published` (HiFi-GAN MPD 32-128-512-1024-1024, EnCodec MS-STFT 32
//!   filters) or `small` (MPD 16-64-256, MS-STFT 16 filters, cap 256); `small` is the default on
//!   the CPU, where a published-size step takes minutes.

use crate::audio::speechlike;
use crate::peer::{self, PeerArgs};
use crate::report::{columns, write_json, Machine};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vaak_codec::train::{
    CodecTrainConfig, CodecTrainer, MelLoss, MultiResStftLoss, StepProfile, TrainDtype,
};

const PEER_SCRIPT: &str = include_str!("../peers/codec_train_peer.py");

/// What the step trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reconstruction losses only (time L1, multi-resolution STFT, mel, commitment).
    Recon,
    /// Reconstruction plus the discriminator step, feature matching and adversarial loss.
    Adv,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Recon => "recon",
            Self::Adv => "adv",
        }
    }
}

/// Discriminator sizes for the `adv` stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiscSize {
    /// HiFi-GAN's MPD and EnCodec's MS-STFT discriminator (vaak's defaults).
    Published,
    /// MPD 16-64-256, MS-STFT 16 filters capped at 256 (affordable on a CPU).
    Small,
}

#[derive(Args)]
#[command(mut_arg("python", |a| a.help(
    "Python interpreter with torch + torchaudio (default: $VAAK_PYTHON, then \
     tools/fixtures/.venv/bin/python)"
)))]
pub struct TrainBenchArgs {
    /// Batch sizes (crops per step).
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    batch: Vec<usize>,
    /// Compute precisions: f32, bf16 (bf16 forward/backward with f32 master weights).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    dtypes: Vec<TrainDtype>,
    /// What each step trains.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Stage::Recon, Stage::Adv])]
    stages: Vec<Stage>,
    /// cpu or cuda[:N] (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Discriminator sizes of the adv stage (default: small on the CPU, published on CUDA).
    #[arg(long, value_enum)]
    disc: Option<DiscSize>,
    /// Crop length in seconds (whole codec frames).
    #[arg(long, default_value_t = 1.0)]
    segment_s: f64,
    /// Untimed steps after the codebook initialisation.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps at least.
    #[arg(long, default_value_t = 3)]
    min_steps: usize,
    /// Timed seconds at least (per case and implementation).
    #[arg(long, default_value_t = 5.0)]
    min_time: f64,
    /// Profiled steps of vaak per case (after the timed ones; 0: no profile).
    #[arg(long, default_value_t = 2)]
    profile_steps: usize,
    /// Threads for both (RAYON_NUM_THREADS of vaak's child, torch.set_num_threads); default:
    /// candle's and torch's own choice.
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the input crops.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-train.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
    /// Internal: measure this case ("batch,dtype,stage") in this process.
    #[arg(long, hide = true)]
    child_case: Option<String>,
    /// Internal: where the child writes its row.
    #[arg(long, hide = true)]
    child_out: Option<PathBuf>,
    /// Internal: the input crops (raw little-endian f32, `[B, 1, T]`).
    #[arg(long, hide = true)]
    input: Option<PathBuf>,
}

/// One implementation on one case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub implementation: String,
    pub batch: usize,
    pub dtype: String,
    /// Set by `vaak bench train` for the peer's rows.
    #[serde(default)]
    pub stage: String,
    pub steps: usize,
    pub step_ms_mean: f64,
    pub step_ms_median: f64,
    pub steps_per_s: f64,
    /// Process CPU time per step (all threads), ms.
    pub cpu_ms_per_step: Option<f64>,
    /// Peak resident host memory of the process (`VmHWM`), MiB.
    pub peak_host_mb: Option<f64>,
    /// Peak GPU memory of the process (nvidia-smi samples), MiB.
    pub peak_device_mb: Option<f64>,
    /// PyTorch only: `torch.cuda.max_memory_reserved()`, MiB.
    #[serde(default)]
    pub device_allocator_peak_mb: Option<f64>,
    pub threads: usize,
    /// vaak only: mean phase times of the profiled steps, ms.
    #[serde(default)]
    pub profile_ms: Option<HashMap<String, f64>>,
    /// vaak only: the reconstruction losses alone on a leaf tensor, forward and backward, ms.
    #[serde(default)]
    pub losses_alone_ms: Option<(f64, f64)>,
    /// Loss values of the last step (total, time L1, SC, log mag, mel, commit[, disc, gen, feat]).
    #[serde(default)]
    pub last_losses: Vec<f64>,
}

/// The bundled vaak-16k training config for one case.
fn case_config(
    args: &TrainBenchArgs,
    batch: usize,
    dtype: TrainDtype,
    stage: Stage,
    cuda: bool,
) -> CodecTrainConfig {
    let mut cfg = CodecTrainConfig {
        batch_size: batch,
        segment_s: args.segment_s,
        dtype,
        ..Default::default()
    };
    cfg.adversarial.enabled = stage == Stage::Adv;
    cfg.adversarial.start_step = 0;
    let size = args.disc.unwrap_or(if cuda {
        DiscSize::Published
    } else {
        DiscSize::Small
    });
    if size == DiscSize::Small {
        let d = &mut cfg.adversarial.disc;
        d.mpd_channels = vec![16, 64, 256];
        d.stft_filters = 16;
        d.stft_max_filters = 256;
    }
    cfg
}

fn parse_case(s: &str) -> Result<(usize, TrainDtype, Stage)> {
    let parts: Vec<&str> = s.split(',').collect();
    let [b, d, st] = parts[..] else {
        bail!("--child-case {s:?}: expected batch,dtype,stage");
    };
    let stage =
        Stage::from_str(st, true).map_err(|e| anyhow::anyhow!("--child-case stage: {e}"))?;
    Ok((b.parse()?, d.parse()?, stage))
}

/// CPU seconds used so far by every thread of this process (Linux `schedstat`).
fn process_cpu_s() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Samples this process's GPU memory with nvidia-smi until dropped; `peak()` in MiB.
struct GpuPoller {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<Option<f64>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl GpuPoller {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(None));
        let (s, p) = (stop.clone(), peak.clone());
        let pid = std::process::id();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok(out) = Command::new("nvidia-smi")
                    .args([
                        "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader,nounits",
                    ])
                    .output()
                else {
                    return;
                };
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let mut f = line.split(',').map(str::trim);
                    if let (Some(a), Some(m)) = (f.next(), f.next()) {
                        if a.parse::<u32>() == Ok(pid) {
                            if let Ok(mb) = m.parse::<f64>() {
                                let mut g = p.lock().expect("poller lock");
                                *g = Some(g.map_or(mb, |v: f64| v.max(mb)));
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        Self {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        *self.peak.lock().expect("poller lock")
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn profile_map(p: &StepProfile) -> HashMap<String, f64> {
    let v = serde_json::to_value(p).expect("plain numbers");
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.trim_end_matches("_s").to_string(), v.as_f64()? * 1e3)))
        .collect()
}

/// The reconstruction losses alone on a leaf tensor: (forward ms, backward ms), median of 3.
fn losses_alone(cfg: &CodecTrainConfig, x: &Tensor) -> Result<(f64, f64)> {
    let dev = x.device();
    let stft = MultiResStftLoss::new(&cfg.loss.stft, dev)?;
    let mel = MelLoss::new(&cfg.loss.mel, cfg.model.sample_rate, dev)?;
    let y = Var::from_tensor(&(x * 0.9)?)?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t0 = Instant::now();
        let (sc, mag) = stft.forward(y.as_tensor(), x)?;
        let m = mel.forward(y.as_tensor(), x)?;
        let l1 = (y.as_tensor() - x)?.abs()?.mean_all()?;
        let total = (((sc + mag)? + m)? + (l1 * 0.1)?)?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let g = total.backward()?;
        dev.synchronize()?;
        fwd.push((t1 - t0).as_secs_f64() * 1e3);
        bwd.push(t1.elapsed().as_secs_f64() * 1e3);
        drop(g);
    }
    Ok((median(&fwd), median(&bwd)))
}

fn child(args: &TrainBenchArgs, case: &str, out: &Path) -> Result<()> {
    let (batch, dtype, stage) = parse_case(case)?;
    let device = vaak_nn::device::parse_device(&args.device)?;
    let cuda = device.is_cuda();
    let poller = cuda.then(GpuPoller::start);
    let input = args.input.as_ref().context("--input")?;
    let cfg = case_config(args, batch, dtype, stage, cuda);
    let seg = cfg.segment_samples();
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let vals: Vec<f32> = bytes
        .chunks_exact(4)
        .take(batch * seg)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if vals.len() != batch * seg {
        bail!(
            "{}: fewer than {batch} crops of {seg} samples",
            input.display()
        );
    }
    let x = Tensor::from_vec(vals, (batch, 1, seg), &device)?;
    let mut t = CodecTrainer::new(cfg.clone(), &device)?;
    t.init_codebooks(std::slice::from_ref(&x))?;
    let mut last = None;
    for _ in 0..args.warmup {
        last = Some(t.train_step(&x)?);
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while wall.len() < args.min_steps || start.elapsed().as_secs_f64() < args.min_time {
        let c0 = process_cpu_s();
        let t0 = Instant::now();
        last = Some(t.train_step(&x)?);
        wall.push(t0.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, process_cpu_s()) {
            cpu.push(b - a);
        }
    }
    let mut profile_ms = None;
    if args.profile_steps > 0 {
        t.set_profiling(true);
        let mut sum = StepProfile::default();
        for _ in 0..args.profile_steps {
            t.train_step(&x)?;
            sum.add(t.last_profile().context("profile of the step")?);
        }
        profile_ms = Some(profile_map(&sum.scaled(1.0 / args.profile_steps as f64)));
    }
    let losses_alone_ms = if args.profile_steps > 0 {
        Some(losses_alone(&cfg, &x.to_dtype(DType::F32)?)?)
    } else {
        None
    };
    let last_losses = last.map_or(Vec::new(), |m| {
        let mut v = vec![m.loss, m.time_l1, m.stft_sc, m.stft_mag, m.mel, m.commit];
        if m.adversarial {
            v.extend([m.disc_loss, m.gen_adv, m.feat]);
        }
        v
    });
    let n = wall.len();
    let row = Row {
        implementation: "vaak".into(),
        batch,
        dtype: dtype.name().into(),
        stage: stage.name().into(),
        steps: n,
        step_ms_mean: 1e3 * wall.iter().sum::<f64>() / n as f64,
        step_ms_median: 1e3 * median(&wall),
        steps_per_s: n as f64 / wall.iter().sum::<f64>(),
        cpu_ms_per_step: (cpu.len() == n).then(|| 1e3 * cpu.iter().sum::<f64>() / n as f64),
        peak_host_mb: vaak_nn::train::run::peak_host_mb(),
        peak_device_mb: poller.and_then(GpuPoller::finish),
        device_allocator_peak_mb: None,
        threads: candle_core::utils::get_num_threads(),
        profile_ms,
        losses_alone_ms,
        last_losses,
    };
    std::fs::write(out, serde_json::to_vec(&row)?)
        .with_context(|| format!("writing {}", out.display()))
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    if let (Some(case), Some(out)) = (&args.child_case, &args.child_out) {
        return child(&args, case, out);
    }
    let device = vaak_nn::device::parse_device(&args.device)?;
    let cuda = device.is_cuda();
    let mut notes = Vec::new();
    let python = args.peer.interpreter("PyTorch peer", &mut notes);
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let bmax = args
        .batch
        .iter()
        .copied()
        .max()
        .context("--batch is empty")?;
    let base = CodecTrainConfig {
        segment_s: args.segment_s,
        ..Default::default()
    };
    let seg = base.segment_samples();
    let mut rows_in = Vec::with_capacity(bmax * seg);
    for i in 0..bmax {
        rows_in.extend(
            speechlike(seg as f64 / 16_000.0 + 0.001, 16_000, args.seed + i as u64)
                .into_iter()
                .take(seg),
        );
    }
    let input = dir.path().join("input.f32");
    let bytes: Vec<u8> = rows_in.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).with_context(|| format!("writing {}", input.display()))?;
    let exe = std::env::current_exe().context("locating the vaak binary")?;
    let mut rows: Vec<Row> = Vec::new();
    for &stage in &args.stages {
        for &dtype in &args.dtypes {
            for &batch in &args.batch {
                let case = format!("{batch},{},{}", dtype.name(), stage.name());
                eprintln!("bench train: vaak {case}...");
                let out = dir.path().join(format!(
                    "vaak_{batch}_{}_{}.json",
                    dtype.name(),
                    stage.name()
                ));
                let mut cmd = Command::new(&exe);
                cmd.args(["bench", "train", "--child-case", &case, "--child-out"])
                    .arg(&out)
                    .arg("--input")
                    .arg(&input)
                    .args([
                        "--device",
                        &args.device,
                        "--segment-s",
                        &args.segment_s.to_string(),
                    ])
                    .args(["--warmup", &args.warmup.to_string()])
                    .args(["--min-steps", &args.min_steps.to_string()])
                    .args(["--min-time", &args.min_time.to_string()])
                    .args(["--profile-steps", &args.profile_steps.to_string()]);
                if let Some(d) = args.disc {
                    cmd.args([
                        "--disc",
                        if d == DiscSize::Small {
                            "small"
                        } else {
                            "published"
                        },
                    ]);
                }
                if let Some(t) = args.threads {
                    cmd.env("RAYON_NUM_THREADS", t.to_string());
                }
                let status = cmd.status().context("starting the measuring child")?;
                if status.success() {
                    let row: Row = serde_json::from_slice(&std::fs::read(&out)?)
                        .with_context(|| format!("parsing {}", out.display()))?;
                    rows.push(row);
                } else {
                    notes.push(format!("vaak {case} failed ({status}); see stderr"));
                }
                if let Some(py) = &python {
                    eprintln!("bench train: PyTorch {case}...");
                    let cfg = case_config(&args, batch, dtype, stage, cuda);
                    let cfg_path = dir
                        .path()
                        .join(format!("cfg_{batch}_{}.json", stage.name()));
                    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
                    let mut a: Vec<String> = vec![
                        "--config".into(),
                        cfg_path.display().to_string(),
                        "--input".into(),
                        input.display().to_string(),
                        "--samples".into(),
                        seg.to_string(),
                        "--batch".into(),
                        batch.to_string(),
                        "--dtype".into(),
                        dtype.name().into(),
                        "--device".into(),
                        args.device.clone(),
                        "--warmup".into(),
                        args.warmup.to_string(),
                        "--min-steps".into(),
                        args.min_steps.to_string(),
                        "--min-time".into(),
                        args.min_time.to_string(),
                        "--threads".into(),
                        args.threads.unwrap_or(0).to_string(),
                    ];
                    if stage == Stage::Adv {
                        a.push("--adversarial".into());
                    }
                    match peer::run_script(py, "codec_train_peer.py", PEER_SCRIPT, &a) {
                        Err(e) => notes.push(format!("PyTorch peer {case} failed: {e:#}")),
                        Ok(v) => {
                            for r in v["rows"].as_array().into_iter().flatten() {
                                let mut row: Row = serde_json::from_value(r.clone())?;
                                row.stage = stage.name().into();
                                rows.push(row);
                            }
                            if let Some(n) = peer::versions_note(&v) {
                                if !notes.contains(&n) {
                                    notes.push(n);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        notes.push(format!(
            "load average at the end (1/5/15 min): {}; wall times on a shared machine are \
             inflated by other processes, CPU time per step much less",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ));
    }
    let disc = args.disc.unwrap_or(if cuda {
        DiscSize::Published
    } else {
        DiscSize::Small
    });
    notes.push(format!(
        "model: bundled vaak-16k config (SEANet 12 filters, ratios 8-5-4-4, 8 x 1024 RVQ), \
         {} s crops; adv discriminators: {disc:?}",
        args.segment_s
    ));
    print!("{}", table(&rows, &notes));
    let report = serde_json::json!({
        "benchmark": "train",
        "machine": Machine::here(),
        "device": args.device,
        "input": {"segment_s": args.segment_s, "seed": args.seed, "sample_rate": 16000},
        "config": case_config(&args, bmax, TrainDtype::F32, Stage::Adv, cuda),
        "rows": rows,
        "notes": notes,
    });
    write_json(&args.json, &report)
}

/// vaak over peer ratios of one case, when both ran.
fn ratio(rows: &[Row], r: &Row, f: impl Fn(&Row) -> Option<f64>) -> String {
    let vaak = rows.iter().find(|v| {
        v.implementation == "vaak" && v.batch == r.batch && v.dtype == r.dtype && v.stage == r.stage
    });
    match (vaak.and_then(&f), f(r)) {
        (Some(a), Some(b)) if r.implementation != "vaak" && b > 0.0 => format!("{:.2}", a / b),
        _ => String::new(),
    }
}

/// One line per (stage, dtype, batch, implementation); peer lines carry vaak / peer ratios.
fn table(rows: &[Row], notes: &[String]) -> String {
    let head = [
        "stage",
        "dtype",
        "batch",
        "implementation",
        "steps",
        "steps/s",
        "step p50",
        "cpu/step",
        "peak host",
        "peak device",
        "vaak/peer time",
        "vaak/peer cpu",
        "vaak/peer mem",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    let mb = |v: Option<f64>| v.map_or("-".into(), |m| format!("{m:.0} MiB"));
    for r in rows {
        let mem = |x: &Row| {
            if x.peak_device_mb.is_some() {
                x.peak_device_mb
            } else {
                x.peak_host_mb
            }
        };
        cells.push(vec![
            r.stage.clone(),
            r.dtype.clone(),
            r.batch.to_string(),
            r.implementation.clone(),
            r.steps.to_string(),
            format!("{:.3}", r.steps_per_s),
            format!("{:.0} ms", r.step_ms_median),
            r.cpu_ms_per_step
                .map_or("-".into(), |c| format!("{c:.0} ms")),
            mb(r.peak_host_mb),
            mb(r.peak_device_mb),
            ratio(rows, r, |x| Some(x.step_ms_mean)),
            ratio(rows, r, |x| x.cpu_ms_per_step),
            ratio(rows, r, mem),
        ]);
    }
    let mut out = columns(&cells);
    for r in rows.iter().filter(|r| r.profile_ms.is_some()) {
        let p = r.profile_ms.as_ref().expect("filtered");
        let mut parts: Vec<(&String, &f64)> = p.iter().filter(|(_, v)| **v > 0.0).collect();
        parts.sort_by(|a, b| b.1.total_cmp(a.1));
        let total: f64 = p.values().sum();
        let list: Vec<String> = parts
            .iter()
            .map(|(k, v)| format!("{k} {:.0} ms ({:.0}%)", v, 100.0 * **v / total.max(1e-12)))
            .collect();
        out.push_str(&format!(
            "profile vaak {} {} batch {}: {}",
            r.stage,
            r.dtype,
            r.batch,
            list.join(", ")
        ));
        if let Some((f, b)) = r.losses_alone_ms {
            out.push_str(&format!(
                "; losses alone: forward {f:.0} ms, backward {b:.0} ms"
            ));
        }
        out.push('\n');
    }
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(
        "vaak/peer < 1: vaak is faster or smaller; mem = peak device memory on CUDA, else peak \
         host RSS\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_case_round_trips_and_rejects_garbage() {
        let (b, d, s) = parse_case("32,bf16,adv").unwrap();
        assert_eq!((b, d, s), (32, TrainDtype::Bf16, Stage::Adv));
        assert!(parse_case("8,f32").is_err());
        assert!(parse_case("8,f16,recon").is_err());
        assert!(parse_case("x,f32,recon").is_err());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    fn row(imp: &str, ms: f64, mem: f64) -> Row {
        Row {
            implementation: imp.into(),
            batch: 8,
            dtype: "f32".into(),
            stage: "recon".into(),
            steps: 3,
            step_ms_mean: ms,
            step_ms_median: ms,
            steps_per_s: 1e3 / ms,
            cpu_ms_per_step: Some(2.0 * ms),
            peak_host_mb: Some(mem),
            peak_device_mb: None,
            device_allocator_peak_mb: None,
            threads: 2,
            profile_ms: None,
            losses_alone_ms: None,
            last_losses: vec![],
        }
    }

    #[test]
    fn ratios_are_vaak_over_peer_on_peer_rows_only() {
        let rows = vec![
            row("vaak", 300.0, 500.0),
            row("PyTorch 2.11", 100.0, 1000.0),
        ];
        assert_eq!(ratio(&rows, &rows[1], |x| Some(x.step_ms_mean)), "3.00");
        assert_eq!(ratio(&rows, &rows[1], |x| x.peak_host_mb), "0.50");
        assert_eq!(ratio(&rows, &rows[0], |x| Some(x.step_ms_mean)), "");
    }

    #[test]
    fn small_discriminators_only_on_the_cpu_by_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: TrainBenchArgs,
        }
        let cli = Cli::parse_from(["x"]);
        let cpu = case_config(&cli.a, 8, TrainDtype::F32, Stage::Adv, false);
        assert_eq!(cpu.adversarial.disc.mpd_channels, vec![16, 64, 256]);
        assert!(cpu.adversarial.enabled && cpu.adversarial.start_step == 0);
        let gpu = case_config(&cli.a, 8, TrainDtype::F32, Stage::Recon, true);
        assert_eq!(gpu.adversarial.disc, Default::default());
        assert!(!gpu.adversarial.enabled);
        assert_eq!(cli.a.batch, vec![8, 32]);
    }
}
