//! Values and gradients of vaak-nn's fused training kernels (`vaak_nn::fused`) against PyTorch
//! (fixture made by `tools/fixtures/fused_grad.py`), through both paths: the fused CPU f32
//! kernels and the primitive-op path other devices and dtypes take (run here in f64). Then the
//! parallel kernels (large inputs) against the same kernels on small slices (serial).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use vaak_nn::fused;
use vaak_nn::streaming::max_abs_diff;

/// Max abs error allowed against PyTorch (f64, stored as f32), relative to the largest value
/// of the reference where that exceeds 1.
const TOL: f32 = 2e-5;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/fused"
);

#[derive(Deserialize)]
struct Case {
    name: String,
    op: String,
    #[serde(default)]
    eps: f64,
    #[serde(default)]
    alpha: f64,
}

#[derive(Deserialize)]
struct Meta {
    cases: Vec<Case>,
}

fn load() -> Result<(Vec<Case>, HashMap<String, Tensor>)> {
    let meta: Meta = serde_json::from_str(
        &std::fs::read_to_string(format!("{DIR}/grad.json")).map_err(candle_core::Error::wrap)?,
    )
    .map_err(candle_core::Error::wrap)?;
    let tensors = candle_core::safetensors::load(format!("{DIR}/grad.safetensors"), &Device::Cpu)?;
    Ok((meta.cases, tensors))
}

fn close(what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.to_dtype(DType::F32)?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    // -inf never appears in outputs or gradients; NaN must not either.
    let d = max_abs_diff(&got, want)?;
    assert!(d.is_finite(), "{what}: non-finite difference");
    assert!(d <= TOL * scale, "{what}: max |diff| {d} > {}", TOL * scale);
    Ok(())
}

/// Runs one op on `inputs` (the differentiable ones as variables of `dtype`) and returns its
/// output and the gradients of `sum(y * g)` for the named inputs.
fn run_case(
    c: &Case,
    t: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
    let get = |k: &str| -> Result<Tensor> {
        t.get(&format!("{}.{k}", c.name))
            .unwrap_or_else(|| panic!("{}: no tensor {k}", c.name))
            .to_dtype(dtype)
    };
    let var = |k: &str| -> Result<Var> { Var::from_tensor(&get(k)?) };
    let x = var("x")?;
    let mut named: Vec<(&'static str, Var)> = vec![("x", x.clone())];
    let y = match c.op.as_str() {
        "softmax" => fused::softmax_last_dim(x.as_tensor())?,
        "layer_norm" => {
            let (w, b) = (var("w")?, var("b")?);
            named.push(("w", w.clone()));
            named.push(("b", b.clone()));
            fused::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), c.eps)?
        }
        "rms_norm" => {
            let w = var("w")?;
            named.push(("w", w.clone()));
            fused::rms_norm(x.as_tensor(), w.as_tensor(), c.eps)?
        }
        "rope_half" | "rope_interleaved" => fused::rope(
            x.as_tensor(),
            &get("cos")?,
            &get("sin")?,
            c.op == "rope_interleaved",
        )?,
        "linear" | "linear_no_bias" => {
            let w = var("w")?;
            named.push(("w", w.clone()));
            let b = if c.op == "linear" {
                let b = var("b")?;
                named.push(("b", b.clone()));
                Some(b.as_tensor().clone())
            } else {
                None
            };
            let l = candle_nn::Linear::new(w.as_tensor().clone(), b);
            fused::linear(&l, x.as_tensor())?
        }
        "gelu_erf" => fused::gelu_erf(x.as_tensor())?,
        "silu" => fused::silu(x.as_tensor())?,
        "sigmoid" => fused::sigmoid(x.as_tensor())?,
        "elu" => fused::elu(x.as_tensor(), c.alpha)?,
        "channel_bias" => {
            let b = var("b")?;
            named.push(("b", b.clone()));
            fused::add_channel_bias(x.as_tensor(), b.as_tensor())?
        }
        "cross_entropy" => {
            let targets = t[&format!("{}.targets", c.name)].to_dtype(DType::U32)?;
            fused::cross_entropy_rows(x.as_tensor(), &targets)?
        }
        other => panic!("unknown op {other}"),
    };
    let loss = (&y * get("g")?.to_dtype(y.dtype())?)?.sum_all()?;
    let grads = loss.backward()?;
    let out = named
        .into_iter()
        .map(|(k, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {k}", c.name))
                .clone();
            (k, g)
        })
        .collect();
    Ok((y, out))
}

#[test]
fn fused_kernels_match_pytorch_values_and_gradients() -> Result<()> {
    let (cases, t) = load()?;
    assert_eq!(cases.len(), 24, "fixture cases");
    for c in &cases {
        // F32: the fused CPU kernels. F64: the primitive-op path (cross-entropy computes in
        // f32 on the CPU whatever the input, so it has only the fused path here).
        for dtype in [DType::F32, DType::F64] {
            let (y, grads) = run_case(c, &t, dtype)?;
            let what = format!("{} ({dtype:?})", c.name);
            close(&format!("{what} y"), &y, &t[&format!("{}.y", c.name)])?;
            for (k, g) in grads {
                close(&format!("{what} d{k}"), &g, &t[&format!("{}.d{k}", c.name)])?;
            }
        }
    }
    Ok(())
}

#[test]
fn masked_softmax_keys_get_exactly_zero() -> Result<()> {
    let x = Tensor::new(
        &[
            [1f32, f32::NEG_INFINITY, 3.0],
            [f32::NEG_INFINITY, 0.0, 0.0],
        ],
        &Device::Cpu,
    )?;
    let y = fused::softmax_last_dim(&x)?.to_vec2::<f32>()?;
    assert_eq!(y[0][1], 0.0);
    assert_eq!(y[1][0], 0.0);
    assert!((y[1][1] - 0.5).abs() < 1e-7);
    Ok(())
}

#[test]
fn cross_entropy_rejects_targets_outside_the_vocabulary() -> Result<()> {
    let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
    let bad = Tensor::new(&[1u32, 4], &Device::Cpu)?;
    let err = fused::cross_entropy_rows(&logits, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 4 outside the vocabulary of 4"),
        "{err}"
    );
    Ok(())
}

fn rand_t(rng: &mut ChaCha8Rng, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Forward and input gradient of `op` on a big `x` (parallel kernels) against the same op on
/// slices of two rows along axis 0 (serial kernels); per-row work must agree bit for bit, and
/// the reduced weight gradients (`wrt`) within rounding.
fn parallel_equals_serial(
    what: &str,
    x: &Tensor,
    wrt: &[&Var],
    op: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = x.dim(0)?;
    let xv = Var::from_tensor(x)?;
    let y = op(xv.as_tensor())?;
    let g = rand_t(&mut rng, y.dims())?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let (mut ys, mut dxs) = (Vec::new(), Vec::new());
    let mut dws: Vec<Option<Tensor>> = vec![None; wrt.len()];
    for s in (0..n).step_by(2) {
        let len = 2.min(n - s);
        let xs = Var::from_tensor(&x.narrow(0, s, len)?)?;
        let ysl = op(xs.as_tensor())?;
        let gs = (&ysl * g.narrow(0, s, len)?)?.sum_all()?.backward()?;
        ys.push(ysl);
        dxs.push(gs.get(xs.as_tensor()).expect("dx").clone());
        for (acc, w) in dws.iter_mut().zip(wrt) {
            let d = gs.get(w.as_tensor()).expect("dw").clone();
            *acc = Some(match acc.take() {
                Some(a) => (a + d)?,
                None => d,
            });
        }
    }
    assert!(
        x.elem_count() >= 1 << 15,
        "{what}: input too small for the parallel path"
    );
    let y_serial = Tensor::cat(&ys, 0)?;
    assert_eq!(max_abs_diff(&y, &y_serial)?, 0.0, "{what}: y");
    let dx_serial = Tensor::cat(&dxs, 0)?;
    let dx = grads.get(xv.as_tensor()).expect("dx");
    assert_eq!(max_abs_diff(dx, &dx_serial)?, 0.0, "{what}: dx");
    for (w, d) in wrt.iter().zip(dws) {
        let got = grads.get(w.as_tensor()).expect("dw");
        let d = d.expect("summed dw");
        let scale = d.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        assert!(max_abs_diff(got, &d)? <= 1e-4 * scale, "{what}: dw");
    }
    Ok(())
}

#[test]
fn parallel_kernels_equal_serial_ones() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let d = 96;
    let w = Var::from_tensor(&rand_t(&mut rng, &[d])?)?;
    let b = Var::from_tensor(&rand_t(&mut rng, &[d])?)?;
    let x = rand_t(&mut rng, &[40, 20, d])?;
    parallel_equals_serial("layer norm", &x, &[&w, &b], &|x| {
        fused::layer_norm(x, w.as_tensor(), b.as_tensor(), 1e-5)
    })?;
    parallel_equals_serial("rms norm", &x, &[&w], &|x| {
        fused::rms_norm(x, w.as_tensor(), 1e-5)
    })?;
    parallel_equals_serial("softmax", &x, &[], &|x| fused::softmax_last_dim(x))?;
    parallel_equals_serial("gelu", &x, &[], &|x| fused::gelu_erf(x))?;
    parallel_equals_serial("silu", &x, &[], &|x| fused::silu(x))?;
    parallel_equals_serial("elu", &x, &[], &|x| fused::elu(x, 1.0))?;
    let lw = Var::from_tensor(&rand_t(&mut rng, &[48, d])?)?;
    let lin = candle_nn::Linear::new(
        lw.as_tensor().clone(),
        Some(b.as_tensor().narrow(0, 0, 48)?),
    );
    // Rows of a linear layer are independent too, but the gemm may block them differently.
    let lx = rand_t(&mut rng, &[40, 20, d])?;
    let lx_var = Var::from_tensor(&lx)?;
    let y_big = fused::linear(&lin, lx_var.as_tensor())?;
    let y_rows = Tensor::cat(
        &(0..40)
            .map(|r| {
                fused::linear(
                    &lin,
                    &Var::from_tensor(&lx.narrow(0, r, 1)?)?.as_tensor().clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    assert!(max_abs_diff(&y_big, &y_rows)? < 1e-4, "linear: big vs rows");
    // RoPE with per-row tables: the slices take their rows of the tables.
    let (t, hd) = (20, 32);
    let xr = rand_t(&mut rng, &[40, 4, t, hd])?;
    let ang = rand_t(&mut rng, &[40, t, hd / 2])?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    let rows = std::cell::Cell::new(0usize);
    parallel_equals_serial("rope", &xr, &[], &|x| {
        let n = x.dim(0)?;
        let start = if n == 40 {
            0
        } else {
            rows.replace(rows.get() + n)
        };
        fused::rope(
            x,
            &cos.narrow(0, start, n)?,
            &sin.narrow(0, start, n)?,
            true,
        )
    })?;
    // Cross-entropy: rows of logits; the loss is per row.
    let v = 1024;
    let logits = rand_t(&mut rng, &[48, v])?;
    let targets: Vec<u32> = (0..48).map(|_| rng.random_range(0..v as u32)).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu)?;
    let seen = std::cell::Cell::new(0usize);
    parallel_equals_serial("cross-entropy", &logits, &[], &|x| {
        let n = x.dim(0)?;
        let start = if n == 48 {
            0
        } else {
            seen.replace(seen.get() + n)
        };
        fused::cross_entropy_rows(x, &targets.narrow(0, start, n)?)
    })?;
    Ok(())
}
