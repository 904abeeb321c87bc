//! Values and gradients of vaak's differentiable conv-transpose and causal convs against
//! PyTorch (fixture made by `tools/fixtures/conv_transpose_grad.py`), plus value equality of
//! the differentiable conv-transpose with candle's native one.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use vaak_nn::conv::{
    conv1d_composed, conv1d_differentiable, conv_transpose1d_differentiable, CausalConv1d,
    CausalConvConfig, CausalConvTranspose1d,
};
use vaak_nn::streaming::max_abs_diff;

/// Max abs error allowed between candle (f32) and PyTorch (f64, stored as f32).
const GRAD_TOL: f32 = 1e-4;
/// Max abs error allowed between the differentiable and the native conv-transpose (both f32).
const NATIVE_TOL: f32 = 1e-5;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/conv_transpose"
);

#[derive(Deserialize)]
struct Case {
    name: String,
    op: String,
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
    groups: usize,
}

#[derive(Deserialize)]
struct Meta {
    cases: Vec<Case>,
}

/// Seeded uniform(-1, 1) values, so every run checks the same inputs.
fn rand_t(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches data")
}

fn load() -> Result<(Vec<Case>, HashMap<String, Tensor>)> {
    let meta: Meta = serde_json::from_str(
        &std::fs::read_to_string(format!("{DIR}/grad.json")).map_err(candle_core::Error::wrap)?,
    )
    .map_err(candle_core::Error::wrap)?;
    let tensors = candle_core::safetensors::load(format!("{DIR}/grad.safetensors"), &Device::Cpu)?;
    Ok((meta.cases, tensors))
}

fn get<'a>(t: &'a HashMap<String, Tensor>, case: &str, key: &str) -> &'a Tensor {
    t.get(&format!("{case}.{key}"))
        .unwrap_or_else(|| panic!("fixture misses {case}.{key}"))
}

/// Runs one case through candle autograd; returns (y, dx, dw, db).
fn candle_case(c: &Case, t: &HashMap<String, Tensor>) -> Result<[Tensor; 4]> {
    let x = Var::from_tensor(get(t, &c.name, "x"))?;
    let w = Var::from_tensor(get(t, &c.name, "w"))?;
    let b = Var::from_tensor(get(t, &c.name, "b"))?;
    let cfg = CausalConvConfig {
        in_channels: c.in_channels,
        out_channels: c.out_channels,
        kernel_size: c.kernel_size,
        stride: c.stride,
        dilation: c.dilation,
        groups: c.groups,
        bias: true,
    };
    let y = match c.op.as_str() {
        "conv_transpose1d" => conv_transpose1d_differentiable(
            x.as_tensor(),
            w.as_tensor(),
            c.stride,
            c.padding,
            c.output_padding,
            c.dilation,
            c.groups,
        )?
        .broadcast_add(&b.as_tensor().reshape((1, c.out_channels, 1))?)?,
        "causal_conv1d" => {
            CausalConv1d::from_tensors(cfg, w.as_tensor().clone(), Some(b.as_tensor().clone()))?
                .forward(x.as_tensor())?
        }
        "causal_conv_transpose1d" => CausalConvTranspose1d::from_tensors(
            cfg,
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        )?
        .forward(x.as_tensor())?,
        other => panic!("unknown op {other}"),
    };
    let loss = y.mul(get(t, &c.name, "g"))?.sum_all()?;
    let grads = loss.backward()?;
    let grad = |v: &Var| {
        grads
            .get(v.as_tensor())
            .cloned()
            .unwrap_or_else(|| panic!("{}: no gradient reached a parameter", c.name))
    };
    Ok([y, grad(&x), grad(&w), grad(&b)])
}

#[test]
fn values_and_gradients_match_pytorch() -> Result<()> {
    let (cases, tensors) = load()?;
    let n_transpose = cases.iter().filter(|c| c.op == "conv_transpose1d").count();
    assert!(
        n_transpose >= 6,
        "fixture has only {n_transpose} conv_transpose1d cases"
    );
    let mut worst = 0f32;
    for c in &cases {
        let got = candle_case(c, &tensors)?;
        for (key, g) in ["y", "dx", "dw", "db"].iter().zip(got.iter()) {
            let want = get(&tensors, &c.name, key);
            let err = max_abs_diff(g, want)?;
            worst = worst.max(err);
            assert!(
                err <= GRAD_TOL,
                "{} {key}: max abs err {err} > {GRAD_TOL}",
                c.name
            );
        }
    }
    println!(
        "worst max abs error vs PyTorch over {} cases: {worst:e}",
        cases.len()
    );
    Ok(())
}

#[test]
fn differentiable_equals_native_conv_transpose() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut checked = 0;
    let mut worst = 0f32;
    for stride in 1..=5usize {
        for kernel in [1usize, 2, 3, 4, 7, 8, 10] {
            for dilation in 1..=2usize {
                for groups in [1usize, 2] {
                    let padding = rng.random_range(0..=2usize);
                    let output_padding = rng.random_range(0..stride.max(dilation));
                    let t = rng.random_range(1..=6usize);
                    let (c_in, c_out_g) = (2 * groups, rng.random_range(1..=3usize));
                    let l_out = ((t - 1) * stride + dilation * (kernel - 1) + output_padding + 1)
                        as isize
                        - 2 * padding as isize;
                    // candle's own op underflows (panics) when (t - 1) * stride < 2 * padding.
                    if l_out <= 0 || (t - 1) * stride < 2 * padding {
                        continue;
                    }
                    let x = rand_t(&mut rng, &[2, c_in, t]);
                    let w = rand_t(&mut rng, &[c_in, c_out_g, kernel]);
                    // Row by row: candle's own op is wrong for batch > 1 on its col2im path.
                    let rows = (0..2)
                        .map(|i| {
                            x.narrow(0, i, 1)?.conv_transpose1d(
                                &w,
                                padding,
                                output_padding,
                                stride,
                                dilation,
                                groups,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let native = Tensor::cat(&rows, 0)?;
                    let ours = conv_transpose1d_differentiable(
                        &x,
                        &w,
                        stride,
                        padding,
                        output_padding,
                        dilation,
                        groups,
                    )?;
                    let err = max_abs_diff(&native, &ours)?;
                    worst = worst.max(err);
                    assert!(
                        err <= NATIVE_TOL,
                        "s{stride} k{kernel} d{dilation} g{groups} p{padding} op{output_padding} \
                         t{t}: {err}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 100, "only {checked} configurations checked");
    println!("{checked} configurations, worst max abs error {worst:e}");
    Ok(())
}

#[test]
fn causal_transpose_trains_through_a_var_weight() -> Result<()> {
    // Native conv_transpose1d would fail in backward(); the module's path must not.
    let dev = Device::Cpu;
    let cfg = CausalConvConfig::new(2, 3, 4).with_stride(2);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let w = Var::from_tensor(&rand_t(&mut rng, &[2, 3, 4]))?;
    let b = Var::zeros(3, DType::F32, &dev)?;
    let conv = CausalConvTranspose1d::from_tensors(
        cfg,
        w.as_tensor().clone(),
        Some(b.as_tensor().clone()),
    )?;
    let x = rand_t(&mut rng, &[2, 2, 5]);
    let grads = conv.forward(&x)?.sqr()?.sum_all()?.backward()?;
    let gw = grads.get(w.as_tensor()).expect("weight gradient");
    assert_eq!(gw.dims(), &[2, 3, 4]);
    assert!(gw.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
    let gb = grads.get(b.as_tensor()).expect("bias gradient");
    // d/db of sum(y^2) is 2 * sum over batch and time of y.
    let y = conv.forward(&x)?;
    let want = y.sum((0, 2))?.affine(2., 0.)?;
    assert!(max_abs_diff(gb, &want)? <= NATIVE_TOL * 10.);
    Ok(())
}

#[test]
fn differentiable_rejects_bad_arguments() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 3), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((4, 2, 3), DType::F32, &dev).unwrap();
    let msg = |r: Result<Tensor>| r.expect_err("should fail").to_string();
    assert!(msg(conv_transpose1d_differentiable(&x, &w, 0, 0, 0, 1, 1)).contains("stride"));
    assert!(msg(conv_transpose1d_differentiable(&x, &w, 1, 0, 0, 1, 3)).contains("groups"));
    let w3 = Tensor::zeros((3, 2, 3), DType::F32, &dev).unwrap();
    assert!(msg(conv_transpose1d_differentiable(&x, &w3, 1, 0, 0, 1, 1)).contains("channels"));
    assert!(msg(conv_transpose1d_differentiable(&x, &w, 1, 9, 0, 1, 1)).contains("output length"));
    let x2 = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    assert!(msg(conv_transpose1d_differentiable(&x2, &w, 1, 0, 0, 1, 1)).contains("[batch"));
}

#[test]
fn differentiable_conv1d_equals_candle_conv1d() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut checked = 0;
    let mut worst = 0f32;
    for stride in 1..=4usize {
        for kernel in [1usize, 2, 3, 5, 8] {
            for dilation in 1..=3usize {
                for (groups, padding) in [(1usize, 0usize), (2, 1), (3, 2)] {
                    let l = 3 + (stride * kernel * dilation) % 17 + (dilation - 1) * kernel;
                    if l + 2 * padding < dilation * (kernel - 1) + 1 {
                        continue;
                    }
                    let x = rand_t(&mut rng, &[2, 2 * groups, l]);
                    let w = rand_t(&mut rng, &[3 * groups, 2, kernel]);
                    let want = x.conv1d(&w, padding, stride, dilation, groups)?;
                    let got = conv1d_differentiable(&x, &w, padding, stride, dilation, groups)?;
                    let err = max_abs_diff(&want, &got)?;
                    worst = worst.max(err);
                    assert!(
                        err <= NATIVE_TOL,
                        "s{stride} k{kernel} d{dilation} g{groups} p{padding} l{l}: {err}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 100, "only {checked} configurations checked");
    println!("{checked} conv1d configurations, worst max abs error {worst:e}");
    let x = Tensor::zeros((1, 2, 2), DType::F32, &dev)?;
    let w = Tensor::zeros((1, 2, 5), DType::F32, &dev)?;
    let e = conv1d_differentiable(&x, &w, 0, 1, 1, 1).expect_err("too short");
    assert!(
        e.to_string().contains("shorter than the kernel span"),
        "{e}"
    );
    Ok(())
}

#[test]
fn causal_conv_training_path_equals_inference_path() -> Result<()> {
    // Tracked inputs take conv1d_differentiable, plain ones candle's conv1d: same values.
    let cfg = CausalConvConfig::new(4, 6, 5)
        .with_stride(2)
        .with_dilation(2)
        .with_groups(2);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let w = Var::from_tensor(&rand_t(&mut rng, &[6, 2, 5]))?;
    let b = Var::from_tensor(&rand_t(&mut rng, &[6]))?;
    let x = rand_t(&mut rng, &[3, 4, 21]);
    let tracked =
        CausalConv1d::from_tensors(cfg, w.as_tensor().clone(), Some(b.as_tensor().clone()))?;
    let plain =
        CausalConv1d::from_tensors(cfg, w.as_tensor().detach(), Some(b.as_tensor().detach()))?;
    let yt = tracked.forward(&x)?;
    let yp = plain.forward(&x)?;
    assert!(yt.track_op() && !yp.track_op());
    assert!(max_abs_diff(&yt, &yp)? <= NATIVE_TOL);
    Ok(())
}

/// The CPU f32 fast path of `conv1d_differentiable` (im2col custom ops) vs the composed
/// formulation (itself checked against PyTorch): values and both gradients, batch 2.
const FASTCONV_TOL: f32 = 1e-5;

#[test]
fn fast_conv_matches_the_reference_conv_and_its_gradients() {
    let dev = Device::Cpu;
    for (c_in, c_out, k, stride, dilation, groups, l) in [
        (3, 4, 5, 1, 1, 1, 40),
        (4, 6, 4, 2, 1, 1, 41),
        (4, 4, 3, 1, 3, 2, 30),
        (6, 3, 16, 8, 1, 1, 97),
        (2, 2, 1, 1, 1, 1, 9),
    ] {
        let x0 = Tensor::randn(0f32, 1.0, (2, c_in, l), &dev).unwrap();
        let w0 = Tensor::randn(0f32, 0.5, (c_out, c_in / groups, k), &dev).unwrap();
        let run = |fast: bool| {
            let x = Var::from_tensor(&x0).unwrap();
            let w = Var::from_tensor(&w0).unwrap();
            let y = if fast {
                conv1d_differentiable(x.as_tensor(), w.as_tensor(), 0, stride, dilation, groups)
                    .unwrap()
            } else {
                conv1d_composed(x.as_tensor(), w.as_tensor(), 0, stride, dilation, groups).unwrap()
            };
            // A non-uniform upstream gradient.
            let g = Tensor::arange(0f32, y.elem_count() as f32, &dev)
                .unwrap()
                .reshape(y.dims())
                .unwrap()
                .sin()
                .unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y,
                grads.get(&x).unwrap().clone(),
                grads.get(&w).unwrap().clone(),
            )
        };
        let (y1, gx1, gw1) = run(true);
        let (y2, gx2, gw2) = run(false);
        assert_eq!(y1.dims(), y2.dims());
        let e = [
            max_abs_diff(&y1, &y2).unwrap(),
            max_abs_diff(&gx1, &gx2).unwrap(),
            max_abs_diff(&gw1, &gw2).unwrap(),
        ];
        eprintln!("fast conv k{k} s{stride} d{dilation} g{groups}: y/gx/gw err {e:?}");
        assert!(e.iter().all(|&v| v <= FASTCONV_TOL), "{e:?}");
    }
}

#[test]
fn differentiable_conv1d_gradients_equal_the_composed_ones() -> Result<()> {
    // groups 1 on CPU f32 is one node with its own backward; the composed form is plain
    // candle ops differentiated by autograd.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut checked = 0;
    for stride in 1..=3usize {
        for kernel in [1usize, 3, 4] {
            for dilation in 1..=2usize {
                for padding in 0..=2usize {
                    let l = 7 + stride * kernel;
                    let x = Var::from_tensor(&rand_t(&mut rng, &[2, 3, l]))?;
                    let w = Var::from_tensor(&rand_t(&mut rng, &[4, 3, kernel]))?;
                    let (xt, wt) = (x.as_tensor(), w.as_tensor());
                    let fast = conv1d_differentiable(xt, wt, padding, stride, dilation, 1)?;
                    let slow = conv1d_composed(xt, wt, padding, stride, dilation, 1)?;
                    let g = rand_t(&mut rng, fast.dims());
                    let what = format!("s{stride} k{kernel} d{dilation} p{padding}");
                    assert!(max_abs_diff(&fast, &slow)? <= 1e-5, "{what}: values");
                    let gf = (&fast * &g)?.sum_all()?.backward()?;
                    let gs = (&slow * &g)?.sum_all()?.backward()?;
                    for (name, v) in [("dx", xt), ("dw", wt)] {
                        let (a, b) = (gf.get(v).unwrap(), gs.get(v).unwrap());
                        let err = max_abs_diff(a, b)?;
                        assert!(err <= 1e-4, "{what}: {name} differs by {err}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 54);
    Ok(())
}

#[test]
fn differentiable_transpose_gradients_equal_the_composed_ones() -> Result<()> {
    // groups 1 in CPU f32 is one node with its own backward; in f64 the same call runs the
    // composed overlap-add that autograd differentiates.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut checked = 0;
    for stride in 1..=4usize {
        for kernel in [1usize, 3, 8] {
            for dilation in 1..=2usize {
                for (padding, output_padding) in [(0usize, 0usize), (1, 0), (2, 1)] {
                    if output_padding >= stride.max(dilation) {
                        continue;
                    }
                    let x32 = Var::from_tensor(&rand_t(&mut rng, &[2, 3, 6]))?;
                    let w32 = Var::from_tensor(&rand_t(&mut rng, &[3, 4, kernel]))?;
                    let x64 = Var::from_tensor(&x32.as_tensor().to_dtype(DType::F64)?)?;
                    let w64 = Var::from_tensor(&w32.as_tensor().to_dtype(DType::F64)?)?;
                    let run = |x: &Tensor, w: &Tensor| {
                        conv_transpose1d_differentiable(
                            x,
                            w,
                            stride,
                            padding,
                            output_padding,
                            dilation,
                            1,
                        )
                    };
                    let what =
                        format!("s{stride} k{kernel} d{dilation} p{padding} op{output_padding}");
                    let (Ok(fast), Ok(slow)) = (
                        run(x32.as_tensor(), w32.as_tensor()),
                        run(x64.as_tensor(), w64.as_tensor()),
                    ) else {
                        continue;
                    };
                    let g = rand_t(&mut rng, fast.dims());
                    let slow32 = slow.to_dtype(DType::F32)?;
                    assert!(max_abs_diff(&fast, &slow32)? <= 1e-5, "{what}: values");
                    let gf = (&fast * &g)?.sum_all()?.backward()?;
                    let gs = (&slow * &g.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
                    for (name, a, b) in [
                        ("dx", x32.as_tensor(), x64.as_tensor()),
                        ("dw", w32.as_tensor(), w64.as_tensor()),
                    ] {
                        let got = gf.get(a).unwrap();
                        let want = gs.get(b).unwrap().to_dtype(DType::F32)?;
                        let err = max_abs_diff(got, &want)?;
                        assert!(err <= 1e-4, "{what}: {name} differs by {err}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 50, "only {checked} configurations checked");
    Ok(())
}
