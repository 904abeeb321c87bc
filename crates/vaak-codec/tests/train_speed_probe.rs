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
        let _y = vaak_nn::conv::conv1d_differentiable(&x, &w, 0, 1, 1, 1).unwrap();
        let a = t.elapsed();
        let t = Instant::now();
        let _y = vaak_codec::train::fastconv::conv1d_im2col(&x, &w, 1, 1, 1).unwrap();
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
