//! Codec training end to end on a tiny config: a tiny codec overfits one batch, resuming from
//! a checkpoint continues exactly, the inference export loads back with `Codec::load`, and
//! the run loop writes metrics, checkpoints and the export.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vaak_codec::train::disc::DiscConfig;
use vaak_codec::train::{
    run_training, Clip, CodecTrainConfig, CodecTrainer, MelResolution, RunOptions, StftResolution,
    TrainData,
};
use vaak_codec::{Codec, CodecConfig, PadMode, Preset, SeanetConfig};
use vaak_nn::streaming::max_abs_diff;
use vaak_nn::train::CheckpointManager;
use vaak_nn::weights::LoadOptions;

fn tiny_model() -> CodecConfig {
    CodecConfig {
        sample_rate: 16_000,
        seanet: SeanetConfig {
            channels: 1,
            dimension: 8,
            n_filters: 4,
            n_residual_layers: 1,
            ratios: vec![4, 2],
            kernel_size: 5,
            last_kernel_size: 3,
            residual_kernel_size: 3,
            dilation_base: 2,
            compress: 2,
            lstm_layers: 0,
            conv_shortcut: false,
            pad_mode: PadMode::Zero,
            weight_norm: false,
        },
        latent_stride: 1,
        latent: None,
        codebook_size: 32,
        num_quantizers: 3,
        target_bandwidths: vec![],
        default_codebooks: 3,
    }
}

fn tiny_config() -> CodecTrainConfig {
    let mut c = CodecTrainConfig {
        model: tiny_model(),
        seed: 3,
        steps: 40,
        batch_size: 2,
        segment_s: 0.032, // 512 samples, 64 frames
        ..Default::default()
    };
    c.loss.stft = vec![StftResolution {
        n_fft: 128,
        hop: 32,
        win_length: 128,
    }];
    c.loss.mel = vec![MelResolution {
        n_fft: 128,
        hop: 32,
        n_mels: 16,
    }];
    c.optim.lr = 3e-3;
    c.optim.min_lr = 3e-3;
    c.optim.warmup_steps = 0;
    c.quantizer.kmeans_batches = 1;
    c.data.val_clips = 1;
    c.data.val_max_s = 0.1;
    c.intervals.log_every = 2;
    c.intervals.val_every = 3;
    c.intervals.ckpt_every = 3;
    c
}

/// Harmonic tones with a slow vibrato, different per clip.
fn clips(n: usize, len: usize) -> Vec<Clip> {
    (0..n)
        .map(|c| {
            let f0 = 150.0 + 70.0 * c as f32;
            let samples = (0..len)
                .map(|i| {
                    let t = i as f32 / 16_000.0;
                    let ph = 2.0 * std::f32::consts::PI * f0 * t + 0.5 * (6.0 * t).sin();
                    // A little deterministic broadband "noise" keeps every STFT bin away from
                    // the log floor, as in real recordings.
                    let hash = ((i as u32).wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0;
                    0.3 * ph.sin()
                        + 0.15 * (2.0 * ph).sin()
                        + 0.05 * (3.0 * ph).sin()
                        + 0.02 * (hash - 0.5)
                })
                .collect();
            Clip {
                path: PathBuf::from(format!("clip{c}.wav")),
                samples,
            }
        })
        .collect()
}

fn data() -> TrainData {
    TrainData::from_clips(clips(4, 4000), 16_000, 512, 1).unwrap()
}

#[test]
fn tiny_codec_overfits_one_batch() {
    overfit_check(tiny_config(), 40);
}

/// With EnCodec's loss balancer the gradient reaching the audio is normalised, and the codec
/// still learns the batch; every reconstruction term reports its gradient norm.
#[test]
fn tiny_codec_overfits_one_batch_with_the_loss_balancer() {
    let mut cfg = tiny_config();
    cfg.loss.balancer.enabled = true;
    overfit_check(cfg, 60);
}

fn overfit_check(mut cfg: CodecTrainConfig, steps: usize) {
    let dev = Device::Cpu;
    let balanced = cfg.loss.balancer.enabled;
    cfg.quantizer.dropout_prob = 0.0;
    let mut t = CodecTrainer::new(cfg, &dev).unwrap();
    let d = data();
    let batch = t.sample_batch(&d).unwrap();
    t.init_codebooks(std::slice::from_ref(&batch)).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let m = t.train_step(&batch).unwrap();
        assert!(m.loss.is_finite() && !m.skipped);
        let terms: Vec<&str> = m.term_grad_norms.iter().map(|(t, _)| *t).collect();
        if balanced {
            assert_eq!(terms, ["time_l1", "stft_sc", "stft_mag", "mel"]);
            assert!(m.term_grad_norms.iter().all(|(_, n)| *n > 0.0));
        } else {
            assert!(terms.is_empty());
        }
        eprintln!(
            "{} loss {:.4} l1 {:.4} sc {:.4} mag {:.4} mel {:.4} commit {:.4} gn {:.3} ppl {:?}",
            m.step,
            m.loss,
            m.time_l1,
            m.stft_sc,
            m.stft_mag,
            m.mel,
            m.commit,
            m.grad_norm,
            m.perplexity
        );
        losses.push(m.loss);
    }
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    eprintln!("overfit: loss {first:.4} -> {last:.4}");
    assert!(last < first / 2.0, "loss {first} -> {last}: no clear drop");
}

/// `tiny_config` with tiny discriminators that switch on after 2 steps.
fn tiny_gan_config() -> CodecTrainConfig {
    let mut c = tiny_config();
    c.adversarial.enabled = true;
    c.adversarial.start_step = 2;
    c.adversarial.disc = DiscConfig {
        periods: vec![2, 3],
        mpd_channels: vec![4, 8],
        stft_scales: vec![(64, 16)],
        stft_filters: 4,
        stft_max_filters: 8,
        stft_dilations: vec![1, 2],
        stft_kernel: (3, 5),
        ..DiscConfig::default()
    };
    c
}

#[test]
fn resume_continues_exactly() {
    resume_check(tiny_config());
}

#[test]
fn resume_with_discriminators_continues_exactly() {
    resume_check(tiny_gan_config());
}

/// The balancer's running norms are part of the checkpoint.
#[test]
fn resume_with_the_loss_balancer_and_discriminators_continues_exactly() {
    let mut cfg = tiny_gan_config();
    cfg.loss.balancer.enabled = true;
    cfg.loss.balancer.ema_decay = 0.5;
    resume_check(cfg);
}

fn resume_check(cfg: CodecTrainConfig) {
    let dev = Device::Cpu;
    let d = data();
    let steps = 6;
    let start = |cfg: CodecTrainConfig| {
        let mut t = CodecTrainer::new(cfg, &dev).unwrap();
        let b = t.sample_batch(&d).unwrap();
        t.init_codebooks(&[b]).unwrap();
        t
    };
    let mut a = start(cfg.clone());
    let mut last_a = 0.0;
    for _ in 0..steps {
        let b = a.sample_batch(&d).unwrap();
        let m = a.train_step(&b).unwrap();
        assert_eq!(m.adversarial, cfg.adversarial.enabled && m.step > 2);
        if m.adversarial {
            assert!(m.disc_loss.is_finite() && m.gen_adv.is_finite() && m.feat > 0.0);
        }
        let balanced_terms = match (cfg.loss.balancer.enabled, m.adversarial) {
            (false, _) => 0,
            (true, false) => 4,
            (true, true) => 6,
        };
        assert_eq!(m.term_grad_norms.len(), balanced_terms);
        last_a = m.loss;
    }
    let mut b = start(cfg.clone());
    for _ in 0..steps / 2 {
        let x = b.sample_batch(&d).unwrap();
        b.train_step(&x).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mgr = CheckpointManager::new(dir.path(), 2).unwrap();
    b.save_checkpoint(&mgr).unwrap();
    let ck = mgr.load_latest(&dev).unwrap().unwrap();
    drop(b);
    let mut b = CodecTrainer::resume(&ck, None, &dev).unwrap();
    assert_eq!(b.step(), (steps / 2) as u64);
    let mut last_b = 0.0;
    for _ in 0..steps / 2 {
        let x = b.sample_batch(&d).unwrap();
        last_b = b.train_step(&x).unwrap().loss;
    }
    assert_eq!(b.step(), steps as u64);
    let mut worst = 0f32;
    let (pa, _, _) = a.checkpoint_parts().unwrap();
    let (pb, _, _) = b.checkpoint_parts().unwrap();
    let mut names: Vec<&String> = pa.keys().collect();
    names.sort();
    assert_eq!(names.len(), pb.len());
    let weights = |p: &std::collections::HashMap<String, Tensor>| {
        names
            .iter()
            .map(|n| ((*n).clone(), p[*n].clone()))
            .collect::<Vec<_>>()
    };
    for ((na, ta), (nb, tb)) in weights(&pa).iter().zip(weights(&pb).iter()) {
        assert_eq!(na, nb);
        let e = max_abs_diff(ta, tb).unwrap();
        if e > 0.0 {
            eprintln!("{na}: {e:e}");
        }
        worst = worst.max(e);
    }
    eprintln!("resume: max weight diff {worst:e}, last loss {last_a} vs {last_b}");
    assert_eq!(worst, 0.0, "resumed weights differ by {worst}");
    assert_eq!(last_a, last_b);
}

#[test]
fn export_round_trips_through_codec_load() {
    let dev = Device::Cpu;
    let d = data();
    let mut t = CodecTrainer::new(tiny_config(), &dev).unwrap();
    let b = t.sample_batch(&d).unwrap();
    t.init_codebooks(&[b]).unwrap();
    for _ in 0..2 {
        let x = t.sample_batch(&d).unwrap();
        t.train_step(&x).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    t.export(dir.path()).unwrap();
    let loaded = Codec::load(
        dir.path().to_str().unwrap(),
        Preset::Vaak16k,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(loaded.config(), &tiny_model());
    let live = t.inference_codec().unwrap();
    let audio = Tensor::from_vec(
        clips(2, 1024)
            .into_iter()
            .flat_map(|c| c.samples)
            .collect::<Vec<f32>>(),
        (2, 1, 1024),
        &dev,
    )
    .unwrap();
    let c1 = live.encode(&audio).unwrap();
    let c2 = loaded.encode(&audio).unwrap();
    let v1 = c1.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(v1, c2.flatten_all().unwrap().to_vec1::<u32>().unwrap());
    let mut distinct = v1.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 8, "codes too uniform: {}", distinct.len());
    let y1 = live.decode(&c1).unwrap();
    let y2 = loaded.decode(&c2).unwrap();
    assert_eq!(max_abs_diff(&y1, &y2).unwrap(), 0.0);
    assert_eq!(y1.dtype(), DType::F32);
}

#[test]
fn run_loop_writes_metrics_checkpoints_and_export_and_resumes() {
    let dev = Device::Cpu;
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.steps = 5;
    let opts = RunOptions {
        out_dir: dir.path().to_path_buf(),
        stop: Some(Arc::new(AtomicBool::new(false))),
        val_codebooks: vec![1, 3],
    };
    let mut t = CodecTrainer::new(cfg.clone(), &dev).unwrap();
    let mut seen = 0;
    let s = run_training(&mut t, &d, &opts, &mut |_| seen += 1).unwrap();
    assert_eq!((s.steps, seen), (5, 5));
    assert_eq!(s.final_val.len(), 2);
    assert!(s.final_val.iter().all(|v| v.snr_db.is_finite()));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Steps 2, 4, 5 (the last) and validation at 3 and at the end.
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![2, 3, 4, 5, 5]);
    assert!(lines[0]["perplexity"].as_array().unwrap().len() == 3);
    assert!(lines[0]["steps_per_s"].as_f64().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        assert!(lines
            .iter()
            .all(|l| l["peak_host_mb"].as_f64().unwrap() > 0.0));
    }
    assert!(dir.path().join("export/config.json").is_file());
    assert!(dir.path().join("checkpoints/latest").is_file());
    Codec::load(
        dir.path().join("export").to_str().unwrap(),
        Preset::Vaak16k,
        &LoadOptions::default(),
    )
    .unwrap();

    // Resume to 7 steps: continues from 5 and appends.
    let mgr = CheckpointManager::new(dir.path().join("checkpoints"), 3).unwrap();
    let ck = mgr.load_latest(&dev).unwrap().unwrap();
    let mut t = CodecTrainer::resume(&ck, None, &dev).unwrap();
    assert_eq!(t.step(), 5);
    t.set_total_steps(7);
    let s = run_training(&mut t, &d, &opts, &mut |_| {}).unwrap();
    assert_eq!(s.steps, 7);
    let n = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    // Log lines at 6 and 7, validation at 6 and at the end (7).
    assert_eq!(n, 5 + 4);
}

#[test]
fn stop_flag_checkpoints_and_config_errors_name_fields() {
    let dev = Device::Cpu;
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = RunOptions {
        out_dir: dir.path().to_path_buf(),
        stop: Some(stop.clone()),
        val_codebooks: vec![],
    };
    let mut t = CodecTrainer::new(tiny_config(), &dev).unwrap();
    let s = run_training(&mut t, &d, &opts, &mut |m| {
        if m.step == 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(s.stopped_early);
    assert_eq!(s.steps, 2);
    assert!(s.last_checkpoint.unwrap().ends_with("step_00000002"));

    let e = CodecTrainConfig::from_yaml("optim:\n  lr: -1\n", "t.yaml").unwrap_err();
    assert!(e.to_string().contains("optim.lr"), "{e}");
    let e = CodecTrainConfig::from_yaml("optim:\n  lrr: 1\n", "t.yaml").unwrap_err();
    assert!(e.to_string().contains("lrr"), "{e}");
    let ok = CodecTrainConfig::from_yaml("steps: 7\nbatch_size: 3\n", "t.yaml").unwrap();
    assert_eq!((ok.steps, ok.batch_size), (7, 3));
    assert_eq!(ok.model, CodecConfig::vaak_16k());
    assert!(TrainData::from_clips(clips(1, 100), 16_000, 512, 0).is_err());
}

/// Same seed, same run: every weight (codec and discriminators) bit-identical.
#[test]
fn gan_straight_runs_are_deterministic() {
    let dev = Device::Cpu;
    let d = data();
    let run = || {
        let mut t = CodecTrainer::new(tiny_gan_config(), &dev).unwrap();
        let b = t.sample_batch(&d).unwrap();
        t.init_codebooks(&[b]).unwrap();
        let mut l = vec![];
        for _ in 0..4 {
            let x = t.sample_batch(&d).unwrap();
            let m = t.train_step(&x).unwrap();
            l.push((m.loss, m.disc_loss));
        }
        (t.checkpoint_parts().unwrap().0, l)
    };
    let (a, la) = run();
    let (b, lb) = run();
    assert_eq!(la, lb);
    assert!(la[3].1 > 0.0, "the discriminators trained");
    assert_eq!(a.len(), b.len());
    for (n, t) in &a {
        assert_eq!(max_abs_diff(t, &b[n]).unwrap(), 0.0, "{n} differs");
    }
}

/// The bf16 compute path (meant for CUDA) runs and trains on f32 master weights; checked on
/// the CPU with the tiny config.
#[test]
fn bf16_compute_path_steps_with_f32_master_weights() {
    let dev = Device::Cpu;
    let d = data();
    let mut cfg = tiny_config();
    cfg.dtype = vaak_codec::train::TrainDtype::Bf16;
    let mut t = CodecTrainer::new(cfg, &dev).unwrap();
    let b = t.sample_batch(&d).unwrap();
    t.init_codebooks(&[b]).unwrap();
    let before = t.params()[0].1.as_tensor().copy().unwrap();
    for _ in 0..2 {
        let x = t.sample_batch(&d).unwrap();
        let m = t.train_step(&x).unwrap();
        assert!(m.loss.is_finite() && !m.skipped, "{m:?}");
    }
    let p = t.params()[0].1.as_tensor();
    assert_eq!(p.dtype(), DType::F32);
    assert!(
        max_abs_diff(p, &before).unwrap() > 0.0,
        "weights did not move"
    );
}

/// vaak's `config.json` is read when present; a bad one is an error naming the field.
#[test]
fn vaak_config_json_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut v: serde_json::Value =
        serde_json::from_str(&tiny_model().to_vaak_json().unwrap()).unwrap();
    v["seanet"]["n_filterz"] = 4.into();
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let e = Codec::load(
        dir.path().to_str().unwrap(),
        Preset::Vaak16k,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("n_filterz"), "{e}");
    let back = CodecConfig::from_vaak_json(&tiny_model().to_vaak_json().unwrap(), "x").unwrap();
    assert_eq!(back, tiny_model());
}
