//! Phase timings of one default training step (ignored; run by hand).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use vaak_codec::train::{CodecTrainConfig, MelLoss, MultiResStftLoss};
use vaak_codec::{Codec, Preset};

#[test]
#[ignore]
fn phase_timings() {
    let dev = Device::Cpu;
    let cfg = CodecTrainConfig::default();
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let codec = Codec::new(cfg.model.clone(), Preset::Vaak16k, vb).unwrap();
    let x = (Tensor::randn(0f32, 0.1, (8, 1, 16000), &dev).unwrap())
        .contiguous()
        .unwrap();
    let stft = MultiResStftLoss::new(&cfg.loss.stft, &dev).unwrap();
    let mel = MelLoss::new(&cfg.loss.mel, 16000, &dev).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let out = codec.forward_train(&x, &[8; 8]).unwrap();
        let t_fwd = t.elapsed();
        let t = Instant::now();
        let (sc, mg) = stft.forward(&out.audio, &x).unwrap();
        let ml = mel.forward(&out.audio, &x).unwrap();
        let t_loss = t.elapsed();
        let total = ((sc + mg).unwrap() + ml).unwrap();
        let t = Instant::now();
        let _g = total.backward().unwrap();
        let t_bwd_all = t.elapsed();
        let t = Instant::now();
        let l1 = out.audio.abs().unwrap().mean_all().unwrap();
        let _g = l1.backward().unwrap();
        let t_bwd_model = t.elapsed();
        eprintln!("fwd {t_fwd:?} losses {t_loss:?} bwd(all) {t_bwd_all:?} bwd(model only) {t_bwd_model:?}");
    }
}

#[test]
#[ignore]
fn conv_timings() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (8, 16, 16000), &dev).unwrap();
    let w = Tensor::randn(0f32, 0.1, (16, 16, 7), &dev).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let _y = vaak_nn::conv::conv1d_composed(&x, &w, 0, 1, 1, 1).unwrap();
        let a = t.elapsed();
        let t = Instant::now();
        let _y = vaak_nn::conv::conv1d_differentiable(&x, &w, 0, 1, 1, 1).unwrap();
        let b = t.elapsed();
        let t = Instant::now();
        let p = x.permute((0, 2, 1)).unwrap().contiguous().unwrap();
        let c = t.elapsed();
        let t = Instant::now();
        let m = p
            .reshape((8 * 16000, 16))
            .unwrap()
            .matmul(&w.narrow(2, 0, 1).unwrap().squeeze(2).unwrap().t().unwrap())
            .unwrap();
        let d = t.elapsed();
        eprintln!(
            "diff conv {a:?} im2col {b:?} permute-copy {c:?} matmul {d:?} {:?}",
            m.dims()
        );
    }
}

/// Steps/s of the default config and the frame-rate comparison (hop 320 vs 640) on real
/// audio: `A2_DATA=<dir of wavs> A2_STEPS=300 cargo test --release --test train_speed_probe
/// frame_rate -- --ignored --nocapture`. Prints timings and held-out quality per kbps.
#[test]
#[ignore]
fn frame_rate_experiment() {
    let dir = std::env::var("A2_DATA").expect("A2_DATA");
    let steps: u64 = std::env::var("A2_STEPS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(300);
    let only: Option<String> = std::env::var("A2_ONLY").ok();
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    paths.sort();
    let dev = Device::Cpu;
    for (name, ratios) in [("hop320", vec![8, 5, 4, 2]), ("hop640", vec![8, 5, 4, 4])] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut cfg = CodecTrainConfig::default();
        cfg.model.seanet.ratios = ratios;
        cfg.steps = steps;
        cfg.intervals.val_every = 0;
        cfg.intervals.ckpt_every = 0;
        cfg.intervals.log_every = 25;
        let data = vaak_codec::train::TrainData::load(
            &paths,
            16_000,
            cfg.segment_samples(),
            cfg.data.val_clips,
        )
        .unwrap();
        let out = std::env::temp_dir().join(format!("a2_fr_{name}"));
        let _ = std::fs::remove_dir_all(&out);
        let mut t = vaak_codec::train::CodecTrainer::new(cfg, &dev).unwrap();
        let opts = vaak_codec::train::RunOptions {
            out_dir: out.clone(),
            stop: None,
            val_codebooks: vec![2, 4, 8],
        };
        let t0 = Instant::now();
        let s = vaak_codec::train::run_training(&mut t, &data, &opts, &mut |m| {
            if m.step % 25 == 0 {
                eprintln!("{name} step {} loss {:.3} mel {:.3}", m.step, m.loss, m.mel);
            }
        })
        .unwrap();
        eprintln!(
            "RESULT {name}: {} steps in {:.1} s ({:.3} steps/s); val {}",
            s.steps,
            t0.elapsed().as_secs_f64(),
            s.steps_per_s,
            serde_json::to_string(&s.final_val).unwrap()
        );
    }
}
