//! `vaak bench codec`: per-frame streaming latency (encode_step + decode_step, one frame at a
//! time, batch 1) and real-time factor of vaak's codecs against candle-transformers' Mimi and
//! transformers' `MimiModel`, on the same audio and the same random full-size Mimi weights.
//!
//! - Weights: a full-size kyutai/mimi architecture with seeded random weights and data-fitted
//!   codebooks, made once by the Python peer (`crates/vaak-bench/peers/codec_peer.py
//!   --make-weights`) when the fixture venv exists, else here from a `VarMap` (random, non-zero
//!   codebooks) and saved under the published names. Either way: `config.json` + `model.safetensors` in a cache dir.
//! - Threads: candle sizes its gemm and rayon pools from `RAYON_NUM_THREADS`, read once per
//!   process for rayon; so each thread count runs in a child process of this binary with the
//!   variable set, and the child reports `candle_core::utils::get_num_threads()` to show it took
//!   effect. The PyTorch peer uses `torch.set_num_threads`.
//! - vaak-16k runs with random weights of its preset config (or `models/vaak-16k` when a trained
//!   one is bundled); `--frame-rates` adds hop 320 / 640 / 1280 variants at the same widths.
//! - Codes: the streamed codes of the three Mimi implementations are compared (sanity check that
//!   they run the same model).

use crate::audio::speechlike;
use crate::peer::{self, PeerArgs};
use crate::report::{columns, write_json, Machine};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_audio::metrics::snr_db;
use vaak_codec::codec::published_mimi_name;
use vaak_codec::{Codec, CodecConfig, HfCodecConfig, HfMimiConfig, Preset, StepWeights};
use vaak_nn::streaming::StreamMask;
use vaak_nn::weights::LoadOptions;

const PEER_SCRIPT: &str = include_str!("../peers/codec_peer.py");

/// How `bench codec` re-runs the current executable to measure one thread count in a child
/// process: `<exe> bench codec --child-out ... --input-wav ... --weights-dir ...`.
pub const CODEC_CHILD_COMMAND: [&str; 2] = ["bench", "codec"];

/// Full-size kyutai/mimi architecture (transformers' `MimiConfig()` defaults, frame rate 12.5).
const MIMI_CONFIG: &str = r#"{"architectures": ["MimiModel"], "attention_bias": false,
"attention_dropout": 0.0, "audio_channels": 1, "codebook_dim": 256, "codebook_size": 2048,
"compress": 2, "dilation_growth_rate": 2, "dtype": "float32", "frame_rate": 12.5, "head_dim": 64,
"hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048,
"kernel_size": 7, "last_kernel_size": 3, "layer_scale_initial_scale": 0.01,
"max_position_embeddings": 8000, "model_type": "mimi", "norm_eps": 1e-05,
"num_attention_heads": 8, "num_filters": 64, "num_hidden_layers": 8, "num_key_value_heads": 8,
"num_quantizers": 32, "num_residual_layers": 1, "num_semantic_quantizers": 1,
"pad_mode": "constant", "residual_kernel_size": 3,
"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "sampling_rate": 24000,
"sliding_window": 250, "trim_right_ratio": 1.0, "upsample_groups": 512,
"upsampling_ratios": [8, 6, 5, 4], "use_cache": false, "use_causal_conv": true,
"use_conv_shortcut": false, "use_streaming": false, "vector_quantization_hidden_dimension": 256}"#;

/// Frames run (and thrown away) before measuring, to fault in weights and warm caches.
const WARMUP_FRAMES: usize = 3;

#[derive(Args)]
#[command(
    mut_arg("python", |a| a.help(
        "Python interpreter with torch + transformers (default: $VAAK_PYTHON, then \
         tools/fixtures/.venv/bin/python)"
    )),
    mut_arg("no_peer", |a| a.help(
        "Skip the Python peer (the weights are then made in Rust if not cached)"
    ))
)]
pub struct CodecBenchArgs {
    /// Seconds of (seeded, speech-like) input audio; 4 s = 50 Mimi frames.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Codebooks used by every Mimi implementation.
    #[arg(long, default_value_t = 8)]
    codebooks: usize,
    /// Directory for the random full-size Mimi weights (made once, then reused).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// Seed of the random weights and the input audio.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// A trained vaak-16k checkpoint (default: models/vaak-16k if present, else random weights).
    #[arg(long)]
    vaak16k: Option<PathBuf>,
    /// Also measure vaak-16k at hop 320 / 640 / 1280 (50 / 25 / 12.5 Hz), random weights.
    #[arg(long)]
    frame_rates: bool,
    /// Storages of vaak mimi's step weights (latent transformers and latent-rate convs) to
    /// measure (f32, bf16, f16); each half one is also compared with f32: equal codes and SNR
    /// of the decoded audio.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    weights_dtype: Vec<StepWeights>,
    /// Frames of codes the transformers peer decodes per step (it has no streaming decoder).
    #[arg(long, default_value_t = 16)]
    peer_window: usize,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench-codec.json")]
    json: PathBuf,
    #[command(flatten)]
    peer: PeerArgs,
    /// Internal: measure in this process and write the rows here (set by the parent).
    #[arg(long, hide = true)]
    child_out: Option<PathBuf>,
    /// Internal: the 24 kHz input WAV (set by the parent).
    #[arg(long, hide = true)]
    input_wav: Option<PathBuf>,
}

/// Per-frame latency statistics in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatStats {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

impl LatStats {
    fn of(seconds: &[f64]) -> Self {
        let mut v: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            // Linear interpolation between closest ranks (numpy's default).
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Self {
            mean_ms: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
        }
    }
}

/// One implementation of one case at one thread count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    #[serde(default)]
    pub case: String,
    pub implementation: String,
    pub threads: usize,
    pub frames: usize,
    pub hop: usize,
    pub sample_rate: usize,
    pub encode: LatStats,
    pub decode: LatStats,
    pub total: LatStats,
    /// CPU time of the whole process per frame (all threads): robust to other load on the
    /// machine; with 1 thread it is the uncontended latency.
    #[serde(default)]
    pub cpu: Option<LatStats>,
    /// Mean (encode + decode) time per frame over the frame's duration.
    pub rtf: f64,
}

/// What a child process measured.
#[derive(Debug, Serialize, Deserialize)]
struct ChildOut {
    threads: usize,
    /// `candle_core::utils::get_num_threads()` inside the child.
    candle_threads: usize,
    rows: Vec<Row>,
    /// Streamed codes `[frame][codebook]` per Mimi implementation.
    codes: HashMap<String, Vec<Vec<u32>>>,
    /// Half step weights against f32, per half storage measured.
    #[serde(default)]
    fidelity: Vec<Fidelity>,
}

/// How far vaak mimi with half-precision step weights strays from its f32 steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fidelity {
    pub weights: String,
    pub threads: usize,
    /// Equal (frame, codebook) pairs of the streamed codes, half vs f32.
    pub codes_equal_fraction: f64,
    /// Frames whose first (semantic) code differs.
    pub first_code_differs: usize,
    pub frames: usize,
    /// SNR (dB) of the half stream's decoded audio (its own codes) against the f32 stream's.
    pub snr_db_end_to_end: f64,
    /// SNR (dB) of the half decoder fed the f32 codes against the f32 decoded audio: the
    /// decoder transformer's share, without code flips.
    pub snr_db_decoder_only: f64,
}

/// CPU seconds used so far by every thread of this process (Linux `schedstat`, ns resolution);
/// `None` where /proc is not there.
pub(crate) fn process_cpu_s() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Per-frame encode and decode wall times, process CPU times, codes and decoded audio (batch
/// row 0, vaak only) of one stream.
struct Timed {
    enc: Vec<f64>,
    dec: Vec<f64>,
    cpu: Option<Vec<f64>>,
    codes: Vec<Vec<u32>>,
    audio: Vec<f32>,
}

/// Times `frames` steps of `step` (after a warm-up on a separate state made by `fresh`).
fn stream<S>(
    audio: &[f32],
    hop: usize,
    mut fresh: impl FnMut() -> Result<S>,
    mut step: impl FnMut(&mut S, &[f32]) -> Result<(f64, f64, Vec<u32>, Vec<f32>)>,
) -> Result<Timed> {
    let n = audio.len() / hop;
    let mut warm = fresh()?;
    for i in 0..WARMUP_FRAMES.min(n) {
        step(&mut warm, &audio[i * hop..(i + 1) * hop])?;
    }
    let mut s = fresh()?;
    let (mut enc, mut dec, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    let mut decoded = Vec::new();
    let mut cpu = Some(Vec::new());
    for i in 0..n {
        let c0 = process_cpu_s();
        let (e, d, c, y) = step(&mut s, &audio[i * hop..(i + 1) * hop])?;
        decoded.extend(y);
        match (c0, process_cpu_s(), cpu.as_mut()) {
            (Some(a), Some(b), Some(v)) => v.push(b - a),
            _ => cpu = None,
        }
        enc.push(e);
        dec.push(d);
        if !c.is_empty() {
            codes.push(c);
        }
    }
    Ok(Timed {
        enc,
        dec,
        cpu,
        codes,
        audio: decoded,
    })
}

fn make_row(
    case: &str,
    implementation: &str,
    threads: usize,
    hop: usize,
    sr: usize,
    t: &Timed,
) -> Row {
    let (enc, dec) = (&t.enc, &t.dec);
    let total: Vec<f64> = enc.iter().zip(dec).map(|(a, b)| a + b).collect();
    let mean = total.iter().sum::<f64>() / total.len().max(1) as f64;
    Row {
        case: case.to_string(),
        implementation: implementation.to_string(),
        threads,
        frames: total.len(),
        hop,
        sample_rate: sr,
        encode: LatStats::of(enc),
        decode: LatStats::of(dec),
        total: LatStats::of(&total),
        cpu: t.cpu.as_deref().map(LatStats::of),
        rtf: mean / (hop as f64 / sr as f64),
    }
}

/// Codes `[1, n_q, f]` as one `[n_q]` vector per frame (f is 0 or 1 here).
fn frame_codes(codes: &Tensor) -> Result<Vec<u32>> {
    let c = codes.to_dtype(DType::U32)?.squeeze(0)?; // [n_q, f]
    if c.dim(1)? == 0 {
        return Ok(Vec::new());
    }
    Ok(c.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<u32>()?)
}

/// vaak's `CodecStreamer`, one frame per step, batch 1.
fn stream_vaak(codec: &Codec, audio: &[f32]) -> Result<Timed> {
    let hop = codec.hop_length();
    stream(
        audio,
        hop,
        || Ok(codec.streamer(1)?),
        |s, chunk| {
            let x = Tensor::from_slice(chunk, (1, 1, chunk.len()), &Device::Cpu)?;
            let t0 = Instant::now();
            let codes = s.encode_step(&x, &StreamMask::All)?;
            let t1 = Instant::now();
            let (mut out, mut y) = (Vec::new(), None);
            if let Some(c) = &codes {
                y = s.decode_step(c, &StreamMask::All)?;
                out = frame_codes(c)?;
            }
            let dt = t1.elapsed().as_secs_f64();
            let y = match y {
                Some(y) => y.get(0)?.flatten_all()?.to_vec1::<f32>()?,
                None => Vec::new(),
            };
            Ok(((t1 - t0).as_secs_f64(), dt, out, y))
        },
    )
}

/// candle-transformers' Mimi (`models::mimi::encodec`), its own `encode_step`/`decode_step`.
fn stream_candle(weights: &Path, codebooks: usize, audio: &[f32]) -> Result<(Timed, usize)> {
    use candle_transformers::models::mimi::encodec::{Config, Encodec};
    let file = weights.join("model.safetensors");
    let cfg = Config::v0_1(Some(codebooks));
    let hop = (cfg.sample_rate / cfg.frame_rate) as usize;
    // SAFETY: the file is not modified while mapped (written once by this bench).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &Device::Cpu)? };
    let model = Encodec::new(cfg, vb)
        .with_context(|| format!("candle-transformers Mimi from {}", file.display()))?;
    let t = stream(
        audio,
        hop,
        || {
            let mut m = model.clone();
            m.reset_state();
            Ok(m)
        },
        |m, chunk| {
            let x = Tensor::from_slice(chunk, (1, 1, chunk.len()), &Device::Cpu)?;
            let t0 = Instant::now();
            let codes = m.encode_step(&candle_core::StreamTensor::from_tensor(x))?;
            let t1 = Instant::now();
            let mut out = Vec::new();
            if let Some(c) = codes.as_option() {
                m.decode_step(&codes)?;
                out = frame_codes(c)?;
            }
            Ok((
                (t1 - t0).as_secs_f64(),
                t1.elapsed().as_secs_f64(),
                out,
                Vec::new(),
            ))
        },
    )?;
    Ok((t, hop))
}

/// vaak-16k with the given SEANet ratios and random weights.
fn random_vaak16k(ratios: Option<Vec<usize>>) -> Result<Codec> {
    let mut cfg = CodecConfig::vaak_16k();
    if let Some(r) = ratios {
        cfg.seanet.ratios = r;
    }
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Ok(Codec::new(cfg, Preset::Vaak16k, vb)?)
}

/// The candidate vaak-16k frame rates: 4 SEANet stages, same channel widths, other strides.
const FRAME_RATE_RATIOS: [(&str, [usize; 4]); 3] = [
    ("hop 320 (50 Hz)", [8, 5, 4, 2]),
    ("hop 640 (25 Hz)", [8, 5, 4, 4]),
    ("hop 1280 (12.5 Hz)", [8, 8, 5, 4]),
];

fn child(args: &CodecBenchArgs, out: &Path) -> Result<()> {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let candle_threads = candle_core::utils::get_num_threads();
    let weights = args.weights_dir.as_ref().context("--weights-dir")?;
    let wav = args.input_wav.as_ref().context("--input-wav")?;
    let audio24 = decode_file(wav, Some(24_000))?.samples;
    let audio16 = decode_file(wav, Some(16_000))?.samples;
    let mut rows = Vec::new();
    let mut codes = HashMap::new();

    let mut mimi = Codec::load(
        &weights.display().to_string(),
        Preset::Mimi,
        &LoadOptions::default(),
    )
    .with_context(|| format!("vaak mimi from {}", weights.display()))?;
    mimi.set_num_codebooks(args.codebooks)?;
    let case = format!("mimi 24 kHz, {} codebooks", args.codebooks);
    // f32 first: every half storage is compared with it.
    let mut kinds = vec![StepWeights::F32];
    kinds.extend(
        args.weights_dtype
            .iter()
            .filter(|k| **k != StepWeights::F32),
    );
    kinds.dedup();
    let mut reference: Option<Timed> = None;
    let mut fidelity = Vec::new();
    for kind in kinds {
        mimi.set_step_weights(kind)?;
        let name = vaak_mimi_name(kind);
        eprintln!("bench codec [{threads} thread(s)]: {name}...");
        let t = stream_vaak(&mimi, &audio24)?;
        rows.push(make_row(
            &case,
            &name,
            threads,
            mimi.hop_length(),
            24_000,
            &t,
        ));
        match &reference {
            None => reference = Some(t),
            Some(r) => {
                fidelity.push(half_fidelity(&mimi, kind, threads, r, &t)?);
                codes.insert(name, t.codes);
            }
        }
    }
    if let Some(r) = reference {
        codes.insert("vaak mimi".to_string(), r.codes);
    }
    drop(mimi);

    eprintln!("bench codec [{threads} thread(s)]: candle-transformers mimi...");
    let (t, hop) = stream_candle(weights, args.codebooks, &audio24)?;
    rows.push(make_row(
        &case,
        "candle-transformers mimi",
        threads,
        hop,
        24_000,
        &t,
    ));
    codes.insert("candle-transformers mimi".to_string(), t.codes);

    let bundled = args
        .vaak16k
        .clone()
        .or_else(|| Some(PathBuf::from("models/vaak-16k")).filter(|p| p.exists()));
    let (v16, label) = match &bundled {
        Some(p) => (
            Codec::load(
                &p.display().to_string(),
                Preset::Vaak16k,
                &LoadOptions::default(),
            )
            .with_context(|| format!("vaak-16k from {}", p.display()))?,
            format!("vaak-16k ({})", p.display()),
        ),
        None => (
            random_vaak16k(None)?,
            "vaak-16k (random weights)".to_string(),
        ),
    };
    eprintln!("bench codec [{threads} thread(s)]: {label}...");
    let t = stream_vaak(&v16, &audio16)?;
    rows.push(make_row(
        &format!(
            "vaak-16k {} Hz, {} codebooks",
            v16.frame_rate(),
            v16.num_codebooks()
        ),
        &label,
        threads,
        v16.hop_length(),
        16_000,
        &t,
    ));

    if args.frame_rates {
        for (name, ratios) in FRAME_RATE_RATIOS {
            eprintln!("bench codec [{threads} thread(s)]: vaak-16k {name}...");
            let codec = random_vaak16k(Some(ratios.to_vec()))?;
            let t = stream_vaak(&codec, &audio16)?;
            rows.push(make_row(
                &format!("vaak-16k candidate {name}"),
                "vaak-16k (random weights)",
                threads,
                codec.hop_length(),
                16_000,
                &t,
            ));
        }
    }
    let out_v = ChildOut {
        threads,
        candle_threads,
        rows,
        codes,
        fidelity,
    };
    std::fs::write(out, serde_json::to_vec(&out_v)?)
        .with_context(|| format!("writing {}", out.display()))
}

/// Row name of vaak mimi with `kind` step weights (plain "vaak mimi" for f32).
fn vaak_mimi_name(kind: StepWeights) -> String {
    match kind {
        StepWeights::F32 => "vaak mimi".to_string(),
        k => format!("vaak mimi ({k} steps)"),
    }
}

/// Codes and audio of a half-weights stream `half` against the f32 stream `reference`, and
/// the half decoder alone on the f32 codes (an untimed second pass).
fn half_fidelity(
    codec: &Codec,
    kind: StepWeights,
    threads: usize,
    reference: &Timed,
    half: &Timed,
) -> Result<Fidelity> {
    let g = agreement(&reference.codes, &half.codes);
    let first_code_differs = reference
        .codes
        .iter()
        .zip(&half.codes)
        .filter(|(a, b)| a.first() != b.first())
        .count();
    let n = reference.audio.len().min(half.audio.len());
    let snr_db_end_to_end = snr_db(&reference.audio[..n], &half.audio[..n])?;
    let mut s = codec.streamer(1)?;
    let mut dec = Vec::new();
    for c in &reference.codes {
        let codes = Tensor::from_slice(c, (1, c.len(), 1), &Device::Cpu)?;
        if let Some(y) = s.decode_step(&codes, &StreamMask::All)? {
            dec.extend(y.get(0)?.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let n = reference.audio.len().min(dec.len());
    Ok(Fidelity {
        weights: kind.to_string(),
        threads,
        codes_equal_fraction: g.equal_fraction,
        first_code_differs,
        frames: reference.codes.len().min(half.codes.len()),
        snr_db_end_to_end,
        snr_db_decoder_only: snr_db(&reference.audio[..n], &dec[..n])?,
    })
}

/// Saves random full-size Mimi weights made in Rust under the published (transformers) names.
fn rust_weights(dir: &Path) -> Result<()> {
    let label = dir.join("config.json").display().to_string();
    let cfg = HfMimiConfig::from_json(MIMI_CONFIG, &label)?.to_codec_config(&label)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Codec::new(cfg.clone(), Preset::Mimi, vb)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in vm.data().lock().expect("VarMap lock").iter() {
        tensors.insert(published_mimi_name(name), var.as_tensor().clone());
    }
    // Names the published checkpoint carries but vaak never reads.
    let n_sem = cfg.latent.as_ref().map_or(0, |l| l.num_semantic);
    for q in 0..cfg.num_quantizers {
        let (group, idx) = if q < n_sem {
            ("semantic", q)
        } else {
            ("acoustic", q - n_sem)
        };
        tensors.insert(
            format!(
                "quantizer.{group}_residual_vector_quantizer.layers.{idx}.codebook.initialized"
            ),
            Tensor::ones(1, DType::F32, &Device::Cpu)?,
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    std::fs::write(dir.join("config.json"), MIMI_CONFIG)?;
    Ok(())
}

/// Code agreement of two streams over the frames both have.
#[derive(Debug, PartialEq)]
struct Agreement {
    /// Equal (frame, codebook) pairs over all compared.
    equal_fraction: f64,
    compared: usize,
    /// Distinct code values in `a`: many, or the comparison is vacuous.
    distinct_in_a: usize,
    /// Frames with at least one differing code.
    differing_frames: Vec<usize>,
}

fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> Agreement {
    let (mut same, mut total) = (0usize, 0usize);
    let mut differing_frames = Vec::new();
    for (f, (x, y)) in a.iter().zip(b).enumerate() {
        let before = same;
        for (p, q) in x.iter().zip(y) {
            total += 1;
            same += usize::from(p == q);
        }
        if same - before < x.len().min(y.len()) {
            differing_frames.push(f);
        }
    }
    let mut all: Vec<u32> = a.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    Agreement {
        equal_fraction: same as f64 / total.max(1) as f64,
        compared: total,
        distinct_in_a: all.len(),
        differing_frames,
    }
}

pub fn run(args: CodecBenchArgs) -> Result<()> {
    if let Some(out) = args.child_out.clone() {
        return child(&args, &out);
    }
    let mut notes = Vec::new();
    let python = args.peer.interpreter("transformers peer", &mut notes);

    let weights = args.weights_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vaak-bench-mimi-random-seed{}", args.seed))
    });
    if !(weights.join("config.json").exists() && weights.join("model.safetensors").exists()) {
        match &python {
            Some(py) => {
                eprintln!(
                    "bench codec: making random full-size Mimi weights in {} (Python)...",
                    weights.display()
                );
                peer::run_script(
                    py,
                    "codec_peer.py",
                    PEER_SCRIPT,
                    &[
                        "--make-weights".into(),
                        weights.display().to_string(),
                        "--seed".into(),
                        args.seed.to_string(),
                    ],
                )?;
                notes.push("weights: transformers MimiModel(MimiConfig()), seeded random, codebooks fitted to seeded audio".into());
            }
            None => {
                eprintln!(
                    "bench codec: making random full-size Mimi weights in {} (Rust)...",
                    weights.display()
                );
                rust_weights(&weights)?;
                notes.push("weights: random full-size Mimi from a candle VarMap (no Python), codebooks N(0,1)".into());
            }
        }
    } else {
        notes.push(format!("weights: reused {}", weights.display()));
    }

    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let wav = dir.path().join("input_24k.wav");
    let audio = speechlike(args.seconds, 24_000, args.seed);
    write_wav(&wav, &audio, 24_000, WavFormat::Float32)?;

    let exe = std::env::current_exe().context("locating the vaak binary")?;
    let mut rows = Vec::new();
    let mut codes: HashMap<String, Vec<Vec<u32>>> = HashMap::new();
    let mut fidelity = Vec::new();
    for &t in &args.threads {
        let out = dir.path().join(format!("child_{t}.json"));
        let mut cmd = Command::new(&exe);
        cmd.env("RAYON_NUM_THREADS", t.to_string())
            .args(CODEC_CHILD_COMMAND)
            .arg("--child-out")
            .arg(&out)
            .arg("--input-wav")
            .arg(&wav)
            .arg("--weights-dir")
            .arg(&weights)
            .args(["--codebooks", &args.codebooks.to_string()]);
        let kinds: Vec<String> = args.weights_dtype.iter().map(|k| k.to_string()).collect();
        cmd.arg("--weights-dtype").arg(kinds.join(","));
        if args.frame_rates {
            cmd.arg("--frame-rates");
        }
        if let Some(p) = &args.vaak16k {
            cmd.arg("--vaak16k").arg(p);
        }
        let status = cmd.status().context("starting the measuring child")?;
        if !status.success() {
            bail!("bench codec child ({t} threads) failed ({status})");
        }
        let c: ChildOut = serde_json::from_slice(&std::fs::read(&out)?)
            .with_context(|| format!("parsing {}", out.display()))?;
        if c.candle_threads != t {
            notes.push(format!(
                "asked for {t} threads but candle used {} in the child",
                c.candle_threads
            ));
        } else {
            notes.push(format!(
                "{t}-thread child: candle get_num_threads() = {}",
                c.candle_threads
            ));
        }
        rows.extend(c.rows);
        fidelity.extend(c.fidelity);
        for (k, v) in c.codes {
            codes.entry(k).or_insert(v);
        }
    }

    if let Some(py) = &python {
        eprintln!("bench codec: transformers MimiModel ({})...", py.display());
        let threads: Vec<String> = args.threads.iter().map(|t| t.to_string()).collect();
        let peer_args = vec![
            "--weights".into(),
            weights.display().to_string(),
            "--input".into(),
            wav.display().to_string(),
            "--threads".into(),
            threads.join(","),
            "--codebooks".into(),
            args.codebooks.to_string(),
            "--window".into(),
            args.peer_window.to_string(),
        ];
        match peer::run_script(py, "codec_peer.py", PEER_SCRIPT, &peer_args) {
            Err(e) => notes.push(format!("transformers peer failed: {e:#}")),
            Ok(v) => {
                let case = format!("mimi 24 kHz, {} codebooks", args.codebooks);
                for r in v["rows"].as_array().into_iter().flatten() {
                    let mut row: Row = serde_json::from_value(r.clone())?;
                    row.case = case.clone();
                    rows.push(row);
                }
                if let Ok(c) = serde_json::from_value::<Vec<Vec<u32>>>(v["codes"].clone()) {
                    codes.insert("transformers MimiModel (PyTorch)".into(), c);
                }
                for n in v["notes"].as_array().into_iter().flatten() {
                    notes.extend(n.as_str().map(str::to_string));
                }
                notes.extend(peer::versions_note(&v));
            }
        }
    }

    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        notes.push(format!(
            "load average at the end (1/5/15 min): {}; latencies are wall-clock and other \
             processes on a busy machine inflate them",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ));
    }
    let mut agree = Vec::new();
    let names = [
        "vaak mimi",
        "candle-transformers mimi",
        "transformers MimiModel (PyTorch)",
    ];
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if let (Some(x), Some(y)) = (codes.get(*a), codes.get(*b)) {
                let g = agreement(x, y);
                agree.push(serde_json::json!({
                    "a": a, "b": b, "equal_fraction": g.equal_fraction, "compared": g.compared,
                    "distinct_codes_in_a": g.distinct_in_a,
                    "differing_frames": g.differing_frames,
                }));
            }
        }
    }

    let mut table = table(&rows, &agree, &notes);
    for f in &fidelity {
        table.push_str(&format!(
            "step weights {} vs f32 ({} thread(s)): {:.1}% codes equal, first code differs in \
             {} of {} frames; decoded audio SNR {:.1} dB end to end, {:.1} dB decoder only \
             (f32 codes)\n",
            f.weights,
            f.threads,
            100.0 * f.codes_equal_fraction,
            f.first_code_differs,
            f.frames,
            f.snr_db_end_to_end,
            f.snr_db_decoder_only
        ));
    }
    print!("{table}");
    let report = serde_json::json!({
        "benchmark": "codec",
        "machine": Machine::here(),
        "input": {"seconds": args.seconds, "seed": args.seed, "sample_rate": 24000,
                  "codebooks": args.codebooks, "weights": weights.display().to_string()},
        "rows": rows,
        "code_agreement": agree,
        "step_weights_fidelity": fidelity,
        "notes": notes,
    });
    write_json(&args.json, &report)
}

/// One line per (case, implementation, threads); peers carry `vaak / peer` of mean latency.
fn table(rows: &[Row], agree: &[serde_json::Value], notes: &[String]) -> String {
    let head = [
        "case",
        "implementation",
        "thr",
        "enc p50",
        "dec p50",
        "frame mean",
        "p50",
        "p95",
        "RTF",
        "cpu/frame",
        "vaak/peer wall",
        "vaak/peer cpu",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    let mut cases: Vec<&str> = Vec::new();
    for r in rows {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    for case in cases {
        let mut first = true;
        let mut in_case: Vec<&Row> = rows.iter().filter(|r| r.case == case).collect();
        in_case.sort_by_key(|r| (r.threads, !r.implementation.starts_with("vaak")));
        for r in &in_case {
            let vaak = in_case
                .iter()
                .find(|v| v.threads == r.threads && v.implementation.starts_with("vaak"));
            let peer = vaak.filter(|_| !r.implementation.starts_with("vaak"));
            let ratio = peer.map_or(String::new(), |v| {
                format!("{:.2}", v.total.mean_ms / r.total.mean_ms)
            });
            let cpu_ratio = match (peer.and_then(|v| v.cpu.as_ref()), &r.cpu) {
                (Some(a), Some(b)) => format!("{:.2}", a.mean_ms / b.mean_ms),
                _ => String::new(),
            };
            cells.push(vec![
                if first {
                    case.to_string()
                } else {
                    String::new()
                },
                r.implementation.clone(),
                r.threads.to_string(),
                format!("{:.2} ms", r.encode.p50_ms),
                format!("{:.2} ms", r.decode.p50_ms),
                format!("{:.2} ms", r.total.mean_ms),
                format!("{:.2} ms", r.total.p50_ms),
                format!("{:.2} ms", r.total.p95_ms),
                format!("{:.3}", r.rtf),
                r.cpu
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.2} ms", c.mean_ms)),
                ratio,
                cpu_ratio,
            ]);
            first = false;
        }
    }
    let mut out = columns(&cells);
    for a in agree {
        out.push_str(&format!(
            "codes: {} vs {}: {:.1}% equal over {} (frame, codebook) pairs; {} distinct codes; \
             frames differing: {}\n",
            a["a"].as_str().unwrap_or("?"),
            a["b"].as_str().unwrap_or("?"),
            100.0 * a["equal_fraction"].as_f64().unwrap_or(f64::NAN),
            a["compared"],
            a["distinct_codes_in_a"],
            a["differing_frames"]
        ));
    }
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(
        "RTF = mean (encode + decode) wall time per frame / frame duration; cpu/frame = mean \
         process CPU time per frame (all threads); vaak/peer < 1: vaak is faster\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s = LatStats::of(&[0.001, 0.002, 0.003, 0.004, 0.010]);
        assert!((s.p50_ms - 3.0).abs() < 1e-9);
        // numpy.percentile([1,2,3,4,10], 95) = 8.8
        assert!((s.p95_ms - 8.8).abs() < 1e-9, "{s:?}");
        assert!((s.mean_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn agreement_counts_common_frames_only() {
        let a = vec![vec![1, 2], vec![3, 4], vec![5, 6]];
        let b = vec![vec![1, 0], vec![3, 4]];
        let g = agreement(&a, &b);
        assert_eq!(g.compared, 4);
        assert!((g.equal_fraction - 0.75).abs() < 1e-12);
        assert_eq!(g.distinct_in_a, 6);
        assert_eq!(g.differing_frames, vec![0]);
    }

    #[test]
    fn published_names_invert_the_loader_mapping() {
        assert_eq!(
            published_mimi_name("encoder_transformer.layers.3.ffn.linear1.weight"),
            "encoder_transformer.layers.3.mlp.fc1.weight"
        );
        assert_eq!(
            published_mimi_name("decoder_transformer.layers.0.layer_scale_1.scale"),
            "decoder_transformer.layers.0.self_attn_layer_scale.scale"
        );
        assert_eq!(
            published_mimi_name("encoder.layers.0.conv.weight"),
            "encoder.layers.0.conv.weight"
        );
    }
}
