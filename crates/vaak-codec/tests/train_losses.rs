//! Parity of the codec-training maths with PyTorch (`tools/fixtures/codec_train.py`): the
//! differentiable STFT and the losses, values and input gradients, with batch 2 (candle's conv
//! gradients are wrong for batch > 1, so every test here uses two items).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use vaak_codec::train::{MelLoss, MelResolution, MultiResStftLoss, Stft, StftResolution, Window};
use vaak_nn::streaming::max_abs_diff;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/codec_train"
);
/// STFT values vs torch (f32 here, f64 there; sums of up to 64 products of O(1) terms).
const STFT_TOL: f32 = 5e-6;
/// Input gradients of the STFT vs torch.
const STFT_GRAD_TOL: f32 = 2e-5;

/// Loss values vs torch, relative.
const LOSS_REL_TOL: f64 = 1e-5;
/// Loss input gradients vs torch, max abs error relative to the largest gradient entry (the
/// log-magnitude gradient scales with 1 / |Y|, which amplifies FFT-vs-f64 rounding at quiet bins).
const LOSS_GRAD_REL_TOL: f32 = 5e-4;

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/{name}.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/meta.json")).unwrap()).unwrap()
}

#[test]
fn stft_values_and_gradients_match_torch() {
    let r = load("stft");
    let m = meta();
    let eps = m["mag_eps"].as_f64().unwrap();
    for case in m["stft_cases"].as_array().unwrap() {
        let c = case.as_array().unwrap();
        let name = c[0].as_str().unwrap();
        let (n_fft, hop, win) = (
            c[1].as_u64().unwrap() as usize,
            c[2].as_u64().unwrap() as usize,
            c[3].as_u64().unwrap() as usize,
        );
        let center = c[4].as_bool().unwrap();
        // The FFT custom op (CPU f32) and the DFT matmul (the CUDA path).
        for matmul in [false, true] {
            let stft = Stft::new(n_fft, hop, win, Window::Hann, center, &Device::Cpu).unwrap();
            let stft = if matmul { stft.with_matmul() } else { stft };
            let label = format!("{name}{}", if matmul { " (matmul)" } else { " (fft)" });
            let key = |s: &str| format!("{name}.{s}");
            let x = Var::from_tensor(&r["x"]).unwrap();
            let (re, im) = stft.forward(x.as_tensor()).unwrap();
            let e_re = max_abs_diff(&re, &r[&key("re")]).unwrap();
            let e_im = max_abs_diff(&im, &r[&key("im")]).unwrap();
            let loss = ((re * &r[&key("g_re")]).unwrap() + (im * &r[&key("g_im")]).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            let e_g = max_abs_diff(g.get(&x).unwrap(), &r[&key("grad")]).unwrap();
            let x = Var::from_tensor(&r["x"]).unwrap();
            let mag = stft.magnitude(x.as_tensor(), eps).unwrap();
            let e_m = max_abs_diff(&mag, &r[&key("mag")]).unwrap();
            let g = (mag * &r[&key("g_mag")])
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let e_mg = max_abs_diff(g.get(&x).unwrap(), &r[&key("mag_grad")]).unwrap();
            eprintln!(
                "stft {label}: re {e_re:e} im {e_im:e} grad {e_g:e} mag {e_m:e} mag grad {e_mg:e}"
            );
            assert!(
                e_re <= STFT_TOL && e_im <= STFT_TOL && e_m <= STFT_TOL,
                "{label} values"
            );
            assert!(
                e_g <= STFT_GRAD_TOL && e_mg <= STFT_GRAD_TOL,
                "{label} grads"
            );
        }
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

fn triples(v: &serde_json::Value) -> Vec<[usize; 3]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r = r.as_array().unwrap();
            [0, 1, 2].map(|i| r[i].as_u64().unwrap() as usize)
        })
        .collect()
}

fn check_grad(name: &str, got: &Tensor, want: &Tensor) {
    let err = max_abs_diff(got, want).unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("{name}: grad max abs err {err:e} (peak {scale:e})");
    assert!(scale > 0.0, "{name}: reference gradient is zero");
    assert!(
        err <= LOSS_GRAD_REL_TOL * scale,
        "{name}: grad err {err} vs peak {scale}"
    );
}

fn check_value(name: &str, got: &Tensor, want: &Tensor) {
    let (g, w) = (scalar(got), scalar(want));
    eprintln!("{name}: {g} vs torch {w}");
    assert!(
        (g - w).abs() <= LOSS_REL_TOL * w.abs(),
        "{name}: {g} vs {w}"
    );
}

#[test]
fn stft_and_mel_losses_and_gradients_match_torch() {
    let r = load("losses");
    let m = meta();
    let dev = Device::Cpu;
    let sr = m["sample_rate"].as_u64().unwrap() as usize;
    let res: Vec<StftResolution> = triples(&m["stft_resolutions"])
        .into_iter()
        .map(|[n_fft, hop, win_length]| StftResolution {
            n_fft,
            hop,
            win_length,
        })
        .collect();
    let mels: Vec<MelResolution> = triples(&m["mel_resolutions"])
        .into_iter()
        .map(|[n_fft, hop, n_mels]| MelResolution { n_fft, hop, n_mels })
        .collect();
    let stft = MultiResStftLoss::new(&res, &dev).unwrap();
    let mel = MelLoss::new(&mels, sr, &dev).unwrap();
    let x = &r["x"];
    // The loss takes [B, 1, T] as the codec emits it.
    let y = Var::from_tensor(&r["y"].unsqueeze(1).unwrap()).unwrap();

    let (sc, lm) = stft.forward(y.as_tensor(), x).unwrap();
    check_value("spectral convergence", &sc, &r["sc"]);
    check_value("log magnitude", &lm, &r["logmag"]);
    let g = sc.backward().unwrap();
    check_grad(
        "spectral convergence",
        &g.get(&y).unwrap().squeeze(1).unwrap(),
        &r["grad_sc"],
    );
    let g = lm.backward().unwrap();
    check_grad(
        "log magnitude",
        &g.get(&y).unwrap().squeeze(1).unwrap(),
        &r["grad_logmag"],
    );

    let ml = mel.forward(y.as_tensor(), x).unwrap();
    check_value("mel", &ml, &r["mel"]);
    let g = ml.backward().unwrap();
    check_grad(
        "mel",
        &g.get(&y).unwrap().squeeze(1).unwrap(),
        &r["grad_mel"],
    );
}

#[test]
fn losses_reject_mismatched_shapes() {
    let dev = Device::Cpu;
    let res = [StftResolution {
        n_fft: 64,
        hop: 16,
        win_length: 64,
    }];
    let stft = MultiResStftLoss::new(&res, &dev).unwrap();
    let a = Tensor::zeros((2, 400), candle_core::DType::F32, &dev).unwrap();
    let b = Tensor::zeros((2, 300), candle_core::DType::F32, &dev).unwrap();
    assert!(stft.forward(&a, &b).is_err());
    assert!(MultiResStftLoss::new(&[], &dev).is_err());
}
