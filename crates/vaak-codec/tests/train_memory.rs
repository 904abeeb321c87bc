//! Adversarial codec training keeps no step's autograd graph alive: every tensor the trainer
//! carries from one step to the next (optimizer moments of the generator and the
//! discriminators, EMA codebooks) has an empty graph after each step, and host memory stops
//! growing after warm-up. A kept graph grows by one forward/backward per step (GPU OOM on an
//! H200 within seconds); the graph count is the exact signal, RSS the coarse second one.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use vaak_codec::train::disc::DiscConfig;
use vaak_codec::train::{Clip, CodecTrainConfig, CodecTrainer, StftResolution, TrainData};
use vaak_codec::{CodecConfig, PadMode, SeanetConfig};

/// Steps before memory is measured (allocator pools, lazily built constants).
const WARMUP_STEPS: usize = 10;
/// Steps measured after warm-up.
const MEASURED_STEPS: usize = 30;
/// Allowed host RSS growth over the measured steps. Measured on this config: about 9 MB when
/// the optimizer moments kept each step's graph, under 0.1 MB without.
const RSS_GROWTH_LIMIT_KB: u64 = 4 * 1024;

fn tiny_gan_config() -> CodecTrainConfig {
    let mut c = CodecTrainConfig {
        model: CodecConfig {
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
        },
        seed: 5,
        steps: (WARMUP_STEPS + MEASURED_STEPS) as u64,
        batch_size: 2,
        segment_s: 0.032,
        ..Default::default()
    };
    c.loss.stft = vec![StftResolution {
        n_fft: 128,
        hop: 32,
        win_length: 128,
    }];
    c.loss.mel = vec![];
    c.optim.warmup_steps = 0;
    c.quantizer.kmeans_batches = 1;
    c.adversarial.enabled = true;
    c.adversarial.start_step = 1;
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

fn data() -> TrainData {
    let clips = (0..3)
        .map(|c| Clip {
            path: PathBuf::from(format!("clip{c}.wav")),
            samples: (0..4000)
                .map(|i| (i as f32 * (0.05 + 0.02 * c as f32)).sin() * 0.4)
                .collect(),
        })
        .collect();
    TrainData::from_clips(clips, 16_000, 512, 1).unwrap()
}

/// Autograd nodes reachable from `t` that lead to a variable (0 for a plain value).
fn graph_nodes(t: &Tensor) -> usize {
    t.sorted_nodes().len()
}

/// Every tensor the trainer keeps across steps, by name, with its graph size.
fn kept_graphs(t: &CodecTrainer) -> Vec<(String, usize)> {
    let (_, opt, _) = t.checkpoint_parts().unwrap();
    let mut out: Vec<(String, usize)> = opt
        .iter()
        .map(|(n, v)| (format!("optimizer {n}"), graph_nodes(v)))
        .collect();
    for (i, e) in t.codebooks().iter().enumerate() {
        for (what, v) in [
            ("embed", e.codebook().embed()),
            ("cluster_size", e.cluster_size()),
            ("embed_sum", e.embed_sum()),
        ] {
            out.push((format!("codebook {i} {what}"), graph_nodes(v)));
        }
    }
    out
}

/// `VmRSS` of this process in kB (Linux).
fn rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn adversarial_training_keeps_no_graph_and_memory_stops_growing() {
    let dev = Device::Cpu;
    let d = data();
    let mut t = CodecTrainer::new(tiny_gan_config(), &dev).unwrap();
    let b = t.sample_batch(&d).unwrap();
    t.init_codebooks(&[b]).unwrap();
    let mut rss_after_warmup = None;
    for step in 0..WARMUP_STEPS + MEASURED_STEPS {
        let b = t.sample_batch(&d).unwrap();
        let m = t.train_step(&b).unwrap();
        assert_eq!(m.adversarial, step >= 1, "step {step}");
        let leaking: Vec<_> = kept_graphs(&t)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            leaking.is_empty(),
            "after step {}: {} kept tensors still hold a graph, e.g. {:?}",
            m.step,
            leaking.len(),
            &leaking[..leaking.len().min(4)]
        );
        if step + 1 == WARMUP_STEPS {
            rss_after_warmup = rss_kb();
        }
    }
    if let (Some(before), Some(after)) = (rss_after_warmup, rss_kb()) {
        let growth = after.saturating_sub(before);
        eprintln!("RSS after warm-up {before} kB, after {MEASURED_STEPS} more steps {after} kB");
        assert!(
            growth <= RSS_GROWTH_LIMIT_KB,
            "host RSS grew by {growth} kB over {MEASURED_STEPS} steps"
        );
    }
}
