//! Parity of the codec-training maths with PyTorch (`tools/fixtures/codec_train.py`): the
//! differentiable STFT and the losses, values and input gradients, with batch 2 (candle's conv
//! gradients are wrong for batch > 1, so every test here uses two items).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use vaak_codec::train::{Stft, Window};
use vaak_nn::streaming::max_abs_diff;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/codec_train"
);
/// STFT values vs torch (f32 here, f64 there; sums of up to 64 products of O(1) terms).
const STFT_TOL: f32 = 5e-6;
/// Input gradients of the STFT vs torch.
const STFT_GRAD_TOL: f32 = 2e-5;

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
        let stft = Stft::new(n_fft, hop, win, Window::Hann, center, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&r["x"]).unwrap();
        let (re, im) = stft.forward(x.as_tensor()).unwrap();
        let e_re = max_abs_diff(&re, &r[&format!("{name}.re")]).unwrap();
        let e_im = max_abs_diff(&im, &r[&format!("{name}.im")]).unwrap();
        let loss = ((re * &r[&format!("{name}.g_re")]).unwrap()
            + (im * &r[&format!("{name}.g_im")]).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
        let g = loss.backward().unwrap();
        let e_g = max_abs_diff(g.get(&x).unwrap(), &r[&format!("{name}.grad")]).unwrap();
        let x = Var::from_tensor(&r["x"]).unwrap();
        let mag = stft.magnitude(x.as_tensor(), eps).unwrap();
        let e_m = max_abs_diff(&mag, &r[&format!("{name}.mag")]).unwrap();
        let g = (mag * &r[&format!("{name}.g_mag")])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let e_mg = max_abs_diff(g.get(&x).unwrap(), &r[&format!("{name}.mag_grad")]).unwrap();
        eprintln!(
            "stft {name}: re {e_re:e} im {e_im:e} grad {e_g:e} mag {e_m:e} mag grad {e_mg:e}"
        );
        assert!(
            e_re <= STFT_TOL && e_im <= STFT_TOL && e_m <= STFT_TOL,
            "{name} values"
        );
        assert!(
            e_g <= STFT_GRAD_TOL && e_mg <= STFT_GRAD_TOL,
            "{name} grads"
        );
    }
}
