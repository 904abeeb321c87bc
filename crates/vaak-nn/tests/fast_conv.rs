//! The inference conv path (`conv1d_inference`, `conv_transpose1d_inference`) against candle's
//! reference convs on random shapes (groups, dilation, stride, asymmetric padding, strided
//! inputs), its per-item lengths against one-item calls, its fused input activation and
//! residual, 1 against 2 threads, and its fallback under autograd.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_nn::conv::{
    conv1d_differentiable, conv1d_fused, conv1d_inference, conv_transpose1d_differentiable,
    conv_transpose1d_inference, elu, leaky_relu, Conv1dOpts, ConvTranspose1dOpts, Fused, InputAct,
};

const TOL: f32 = 1e-5;

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Relative to the magnitude of the reference, so long reductions stay within 1e-5.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let scale = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    let d = max_diff(got, want);
    assert!(d <= TOL * scale, "{what}: max diff {d} (scale {scale})");
}

#[test]
fn conv1d_matches_candle_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..60 {
        let groups = [1, 1, 2, 3, 4][rng.random_range(0..5)];
        let c_in = groups * rng.random_range(1..6);
        let c_out = groups * rng.random_range(1..6);
        let k = rng.random_range(1..8);
        let stride = rng.random_range(1..5);
        let dilation = rng.random_range(1..4);
        let pad_left = rng.random_range(0..6);
        let pad_right = rng.random_range(0..6);
        let b = rng.random_range(1..4);
        let k_eff = dilation * (k - 1) + 1;
        let l = k_eff + rng.random_range(0..40);
        // Half the cases read a strided view (a narrow of a longer signal).
        let x = if case % 2 == 0 {
            randn(&mut rng, &[b, c_in, l])
        } else {
            randn(&mut rng, &[b, c_in, l + 5]).narrow(2, 3, l).unwrap()
        };
        let w = randn(&mut rng, &[c_out, c_in / groups, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = Conv1dOpts {
            pad_left,
            pad_right,
            stride,
            dilation,
            groups,
        };
        let got = conv1d_inference(&x, &w, Some(&bias), opts, None).unwrap();
        let want = x
            .pad_with_zeros(2, pad_left, pad_right)
            .unwrap()
            .contiguous()
            .unwrap()
            .conv1d(&w, 0, stride, dilation, groups)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        assert_close(&got, &want, &format!("conv1d case {case} {opts:?} k {k}"));
        let no_bias = conv1d_inference(&x, &w, None, opts, None).unwrap();
        let want_nb = want
            .broadcast_sub(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        assert_close(&no_bias, &want_nb, &format!("conv1d no bias {case}"));
    }
}

#[test]
fn conv_transpose1d_matches_candle_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in 0..60 {
        let groups = [1, 1, 2, 4][rng.random_range(0..4)];
        let c_in = groups * rng.random_range(1..6);
        let c_out_g = rng.random_range(1..6);
        let k = rng.random_range(1..10);
        let stride: usize = rng.random_range(1..6);
        let dilation = rng.random_range(1..3);
        let t: usize = rng.random_range(1..20);
        let b = rng.random_range(1..4);
        let k_eff = dilation * (k - 1) + 1;
        let full = (t - 1) * stride + k_eff;
        // candle computes (t - 1) * stride - 2 * padding first, in usize.
        let padding = rng.random_range(
            0..=((t - 1) * stride / 2)
                .min(full.saturating_sub(1) / 2)
                .min(4),
        );
        let output_padding = rng.random_range(0..stride.max(dilation));
        let x = randn(&mut rng, &[b, c_in, t]);
        let w = randn(&mut rng, &[c_in, c_out_g, k]);
        let bias = randn(&mut rng, &[c_out_g * groups]);
        let opts = ConvTranspose1dOpts {
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        };
        let got = conv_transpose1d_inference(&x, &w, Some(&bias), opts, None).unwrap();
        // candle's native transpose is right for batch 1 (its batch > 1 CPU bug is in the
        // module docs), so compare item by item.
        for i in 0..b {
            let want = x
                .narrow(0, i, 1)
                .unwrap()
                .conv_transpose1d(&w, padding, output_padding, stride, dilation, groups)
                .unwrap()
                .broadcast_add(&bias.reshape((1, (), 1)).unwrap())
                .unwrap();
            assert_close(
                &got.narrow(0, i, 1).unwrap(),
                &want,
                &format!("transpose case {case} item {i} {opts:?} k {k} t {t}"),
            );
        }
        let diff = conv_transpose1d_differentiable(
            &x,
            &w,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        )
        .unwrap()
        .broadcast_add(&bias.reshape((1, (), 1)).unwrap())
        .unwrap();
        assert_close(&got, &diff, &format!("transpose vs differentiable {case}"));
    }
}

#[test]
fn lengths_make_a_batch_equal_one_item_calls() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (c_in, c_out, k, dilation) = (6, 4, 5, 2);
    let lens = [37usize, 20, 9];
    let l = 37;
    let x = randn(&mut rng, &[3, c_in, l]);
    let w = randn(&mut rng, &[c_out, c_in, k]);
    let bias = randn(&mut rng, &[c_out]);
    let opts = Conv1dOpts::new(4, 1, dilation, 1);
    let batched = conv1d_inference(&x, &w, Some(&bias), opts, Some(&lens)).unwrap();
    for (i, &n) in lens.iter().enumerate() {
        let alone = conv1d_inference(
            &x.narrow(0, i, 1).unwrap().narrow(2, 0, n).unwrap(),
            &w,
            Some(&bias),
            opts,
            None,
        )
        .unwrap();
        let mine = batched.narrow(0, i, 1).unwrap().narrow(2, 0, n).unwrap();
        assert!(max_diff(&mine, &alone) <= TOL, "conv1d item {i}");
    }

    let (stride, kt) = (4, 8);
    let wt = randn(&mut rng, &[c_in, c_out, kt]);
    let topts = ConvTranspose1dOpts {
        stride,
        padding: 2,
        output_padding: 0,
        dilation: 1,
        groups: 1,
    };
    let batched = conv_transpose1d_inference(&x, &wt, Some(&bias), topts, Some(&lens)).unwrap();
    for (i, &n) in lens.iter().enumerate() {
        let alone = conv_transpose1d_inference(
            &x.narrow(0, i, 1).unwrap().narrow(2, 0, n).unwrap(),
            &wt,
            Some(&bias),
            topts,
            None,
        )
        .unwrap();
        let len = alone.dim(2).unwrap();
        let mine = batched.narrow(0, i, 1).unwrap().narrow(2, 0, len).unwrap();
        assert!(max_diff(&mine, &alone) <= TOL, "transpose item {i}");
    }
}

#[test]
fn tracked_inputs_fall_back_to_the_differentiable_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = randn(&mut rng, &[2, 4, 16]);
    let w = Var::from_tensor(&randn(&mut rng, &[6, 2, 3])).unwrap();
    let opts = Conv1dOpts::new(1, 2, 1, 2);
    let y = conv1d_inference(&x, w.as_tensor(), None, opts, None).unwrap();
    assert!(y.track_op(), "the result must carry the graph");
    let want = conv1d_differentiable(&x, w.as_tensor(), 1, 2, 1, 2).unwrap();
    assert!(max_diff(&y, &want) <= TOL);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "no gradient reached the weight"
    );
}

#[test]
fn leaky_relu_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = randn(&mut rng, &[2, 3, 50]);
    let want = candle_nn::ops::leaky_relu(&x, 0.1).unwrap();
    assert_eq!(max_diff(&leaky_relu(&x, 0.1).unwrap(), &want), 0.0);
    let xt = x.transpose(1, 2).unwrap();
    let want = candle_nn::ops::leaky_relu(&xt, 0.01).unwrap();
    assert_eq!(max_diff(&leaky_relu(&xt, 0.01).unwrap(), &want), 0.0);
}

#[test]
fn long_inputs_spanning_many_im2col_blocks_match_candle() {
    // 64 channels x 7 taps: the im2col is cut into blocks of a few hundred columns.
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (c_in, c_out, k) = (64, 8, 7);
    for (stride, dilation, pad) in [(1, 1, 3), (1, 3, 9), (3, 2, 5)] {
        let x = randn(&mut rng, &[2, c_in, 5000]);
        let w = randn(&mut rng, &[c_out, c_in, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = Conv1dOpts::new(pad, stride, dilation, 1);
        let got = conv1d_inference(&x, &w, Some(&bias), opts, None).unwrap();
        let want = x
            .conv1d(&w, pad, stride, dilation, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        assert_close(
            &got,
            &want,
            &format!("long, stride {stride} dilation {dilation}"),
        );
        // Lengths cut inside a block and at a block edge.
        let lens = [3333usize, 5000];
        let batched = conv1d_inference(&x, &w, Some(&bias), opts, Some(&lens)).unwrap();
        let alone = conv1d_inference(
            &x.narrow(0, 0, 1).unwrap().narrow(2, 0, lens[0]).unwrap(),
            &w,
            Some(&bias),
            opts,
            None,
        )
        .unwrap();
        let n = alone.dim(2).unwrap();
        let mine = batched.narrow(0, 0, 1).unwrap().narrow(2, 0, n).unwrap();
        assert_close(&mine, &alone, "long, lengths");
    }
}

#[test]
fn long_transposes_spanning_many_gemm_blocks_match_the_differentiable_one() {
    // 64 outputs x 16 taps = 1024 gemm rows: the input is cut into blocks of a few hundred frames.
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let (c_in, c_out, k) = (8, 64, 16);
    for (stride, padding, dilation) in [(8, 4, 1), (3, 0, 2)] {
        let x = randn(&mut rng, &[2, c_in, 1500]);
        let w = randn(&mut rng, &[c_in, c_out, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = ConvTranspose1dOpts {
            stride,
            padding,
            output_padding: 0,
            dilation,
            groups: 1,
        };
        let got = conv_transpose1d_inference(&x, &w, Some(&bias), opts, None).unwrap();
        let want = conv_transpose1d_differentiable(&x, &w, stride, padding, 0, dilation, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        assert_close(&got, &want, &format!("long transpose, stride {stride}"));
        let lens = [777usize, 1500];
        let batched = conv_transpose1d_inference(&x, &w, Some(&bias), opts, Some(&lens)).unwrap();
        let alone = conv_transpose1d_inference(
            &x.narrow(0, 0, 1).unwrap().narrow(2, 0, lens[0]).unwrap(),
            &w,
            Some(&bias),
            opts,
            None,
        )
        .unwrap();
        let n = alone.dim(2).unwrap();
        let mine = batched.narrow(0, 0, 1).unwrap().narrow(2, 0, n).unwrap();
        assert_close(&mine, &alone, "long transpose, lengths");
    }
}

/// Runs `f` inside a rayon pool of `threads` threads (the fast path uses at most that many).
fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// A fused case's random parts: a `[b, c_out, l_out]` residual (a transposed view when
/// `transposed`), the input activation (cycling with `case`) and per-item lengths up to `l`.
fn fused_case(
    rng: &mut ChaCha8Rng,
    case: usize,
    (b, c_out, l, l_out): (usize, usize, usize, usize),
    transposed: bool,
) -> (Tensor, InputAct, Vec<usize>) {
    let residual = if transposed {
        randn(rng, &[b, l_out, c_out]).transpose(1, 2).unwrap()
    } else {
        randn(rng, &[b, c_out, l_out])
    };
    let act = [InputAct::None, InputAct::LeakyRelu(0.1), InputAct::Elu(1.0)][case % 3];
    let lens = (0..b).map(|_| rng.random_range(1..=l)).collect();
    (residual, act, lens)
}

#[test]
fn fused_activation_and_residual_match_the_composed_ops() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for case in 0..40 {
        let groups = [1, 1, 2, 3][rng.random_range(0..4)];
        let c_in = groups * rng.random_range(1..6);
        let c_out = groups * rng.random_range(1..6);
        let k = rng.random_range(1..8);
        let stride = rng.random_range(1..4);
        let dilation = rng.random_range(1..4);
        let pad_left = rng.random_range(0..6);
        let pad_right = rng.random_range(0..6);
        let b = rng.random_range(1..4);
        let k_eff = dilation * (k - 1) + 1;
        let l = k_eff + rng.random_range(0..300);
        let x = if case % 2 == 0 {
            randn(&mut rng, &[b, c_in, l])
        } else {
            randn(&mut rng, &[b, c_in, l + 5]).narrow(2, 2, l).unwrap()
        };
        let w = randn(&mut rng, &[c_out, c_in / groups, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = Conv1dOpts {
            pad_left,
            pad_right,
            stride,
            dilation,
            groups,
        };
        let l_out = (l + pad_left + pad_right - k_eff) / stride + 1;
        // A transposed view as residual in a third of the cases.
        let (residual, act, lens) = fused_case(&mut rng, case, (b, c_out, l, l_out), case % 3 == 0);
        let lengths = (case % 4 == 1).then_some(lens.as_slice());
        let fused = Fused {
            input_act: act,
            residual: Some(&residual),
            ..Default::default()
        };
        // Reference: the activation, masking and residual as separate candle ops.
        let xa = match act {
            InputAct::None => x.clone(),
            InputAct::LeakyRelu(s) => candle_nn::ops::leaky_relu(&x, s as f64).unwrap(),
            InputAct::Elu(a) => x.elu(a as f64).unwrap(),
        };
        let xa = match lengths {
            Some(ls) => {
                let mut m = vec![0f32; b * l];
                for (i, &n) in ls.iter().enumerate() {
                    m[i * l..i * l + n].fill(1.0);
                }
                let m = Tensor::from_vec(m, (b, 1, l), &Device::Cpu).unwrap();
                xa.broadcast_mul(&m).unwrap()
            }
            None => xa,
        };
        let want = xa
            .pad_with_zeros(2, pad_left, pad_right)
            .unwrap()
            .conv1d(&w, 0, stride, dilation, groups)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap()
            .add(&residual)
            .unwrap();
        for threads in [1, 2] {
            let got = in_pool(threads, || {
                conv1d_fused(&x, &w, Some(&bias), opts, lengths, fused).unwrap()
            });
            assert_close(
                &got,
                &want,
                &format!("fused case {case} {opts:?} k {k} {act:?} threads {threads}"),
            );
        }
        // The fallback (tracked weight) computes the same.
        let wv = Var::from_tensor(&w).unwrap();
        let tracked = conv1d_fused(&x, wv.as_tensor(), Some(&bias), opts, lengths, fused).unwrap();
        assert_close(&tracked, &want, &format!("fused fallback case {case}"));
    }
}

#[test]
fn one_and_two_threads_agree_on_long_convs_and_transposes() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    // (c_in, c_out, k, stride, dilation, groups, batch, length): few channels and long
    // signals (many column blocks), a 1x1 conv, a strided one, groups.
    let shapes = [
        (32, 32, 11, 1, 5, 1, 1, 9000),
        (16, 32, 1, 1, 1, 1, 2, 4097),
        (24, 48, 4, 2, 1, 3, 2, 3001),
        (1, 32, 7, 1, 1, 1, 1, 12345),
        (192, 384, 5, 1, 1, 1, 3, 173),
    ];
    for (c_in, c_out, k, stride, dilation, groups, b, l) in shapes {
        let x = randn(&mut rng, &[b, c_in, l]);
        let w = randn(&mut rng, &[c_out, c_in / groups, k]);
        let bias = randn(&mut rng, &[c_out]);
        let pad = (k - 1) * dilation / 2;
        let opts = Conv1dOpts::new(pad, stride, dilation, groups);
        let want = x
            .conv1d(&w, pad, stride, dilation, groups)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        let lens: Vec<usize> = (0..b).map(|i| l - i * l / 3).collect();
        for threads in [1, 2] {
            let got = in_pool(threads, || {
                conv1d_inference(&x, &w, Some(&bias), opts, None).unwrap()
            });
            assert_close(
                &got,
                &want,
                &format!("conv {c_in}->{c_out} k {k} t{threads}"),
            );
            // Lengths: item i alone on its valid samples.
            let batched = in_pool(threads, || {
                conv1d_inference(&x, &w, Some(&bias), opts, Some(&lens)).unwrap()
            });
            for (i, &n) in lens.iter().enumerate() {
                let alone = conv1d_inference(
                    &x.narrow(0, i, 1).unwrap().narrow(2, 0, n).unwrap(),
                    &w,
                    Some(&bias),
                    opts,
                    None,
                )
                .unwrap();
                let m = alone.dim(2).unwrap();
                let mine = batched.narrow(0, i, 1).unwrap().narrow(2, 0, m).unwrap();
                assert_close(&mine, &alone, &format!("conv lengths item {i} t{threads}"));
            }
        }
    }
    // Transposes: HiFi-GAN-like upsamplers (k = 2 * stride) and an odd one, with groups.
    let tshapes = [
        (64, 32, 16, 8, 4, 1, 1, 700),
        (32, 16, 4, 2, 1, 1, 2, 5000),
        (12, 6, 7, 3, 2, 2, 2, 999),
    ];
    for (c_in, c_out_g, k, stride, padding, groups, b, t) in tshapes {
        let x = randn(&mut rng, &[b, c_in, t]);
        let w = randn(&mut rng, &[c_in, c_out_g, k]);
        let bias = randn(&mut rng, &[c_out_g * groups]);
        let opts = ConvTranspose1dOpts {
            stride,
            padding,
            output_padding: 0,
            dilation: 1,
            groups,
        };
        let want = conv_transpose1d_differentiable(&x, &w, stride, padding, 0, 1, groups)
            .unwrap()
            .broadcast_add(&bias.reshape((1, (), 1)).unwrap())
            .unwrap();
        let lens: Vec<usize> = (0..b).map(|i| t - i * t / 3).collect();
        for threads in [1, 2] {
            let got = in_pool(threads, || {
                conv_transpose1d_inference(&x, &w, Some(&bias), opts, None).unwrap()
            });
            assert_close(
                &got,
                &want,
                &format!("transpose k {k} s {stride} t{threads}"),
            );
            let batched = in_pool(threads, || {
                conv_transpose1d_inference(&x, &w, Some(&bias), opts, Some(&lens)).unwrap()
            });
            for (i, &n) in lens.iter().enumerate() {
                let alone = conv_transpose1d_inference(
                    &x.narrow(0, i, 1).unwrap().narrow(2, 0, n).unwrap(),
                    &w,
                    Some(&bias),
                    opts,
                    None,
                )
                .unwrap();
                let m = alone.dim(2).unwrap();
                let mine = batched.narrow(0, i, 1).unwrap().narrow(2, 0, m).unwrap();
                assert_close(&mine, &alone, &format!("transpose lengths {i} t{threads}"));
            }
        }
    }
}

#[test]
fn elementwise_ops_match_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    // Big enough for the parallel chunks, with a ragged tail.
    let x = (randn(&mut rng, &[3, 17, 4001]) * 4.0).unwrap();
    for threads in [1, 2] {
        let (e, lr) = in_pool(threads, || {
            (elu(&x, 1.0).unwrap(), leaky_relu(&x, 0.1).unwrap())
        });
        // The vectorised exp is within a few ulp of libm's; the values here reach about -16.
        assert!(max_diff(&e, &x.elu(1.0).unwrap()) < 1e-6, "elu t{threads}");
        let want = candle_nn::ops::leaky_relu(&x, 0.1).unwrap();
        assert_eq!(max_diff(&lr, &want), 0.0, "leaky_relu t{threads}");
    }
    let xt = x.transpose(1, 2).unwrap();
    assert!(
        max_diff(&elu(&xt, 0.5).unwrap(), &xt.elu(0.5).unwrap()) < 1e-6,
        "elu strided"
    );
    // Positive inputs pass through exactly, negative ones never reach below -alpha.
    let e = elu(&x, 1.0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (y, v) in e.iter().zip(&xs) {
        assert!(
            if *v > 0.0 {
                y == v
            } else {
                *y >= -1.0 && *y <= 0.0
            },
            "elu({v}) = {y}"
        );
    }
}

/// `act(x)` with samples at or past each item's length zeroed, as separate candle ops.
fn act_and_mask(x: &Tensor, act: InputAct, lengths: Option<&[usize]>) -> Tensor {
    let xa = match act {
        InputAct::None => x.clone(),
        InputAct::LeakyRelu(s) => candle_nn::ops::leaky_relu(x, s as f64).unwrap(),
        InputAct::Elu(a) => x.elu(a as f64).unwrap(),
    };
    let Some(ls) = lengths else { return xa };
    let (b, _, l) = x.dims3().unwrap();
    let mut m = vec![0f32; b * l];
    for (i, &n) in ls.iter().enumerate() {
        m[i * l..i * l + n.min(l)].fill(1.0);
    }
    let m = Tensor::from_vec(m, (b, 1, l), &Device::Cpu).unwrap();
    xa.broadcast_mul(&m).unwrap()
}

/// The few-column paths (a streaming step: a conv with one output column, a transpose with up
/// to 8 input frames, which read each weight row once instead of running im2col + gemm)
/// against candle's conv and the differentiable transpose, on wide weights that split into
/// several thread tasks, channel counts that are no multiple of the SIMD widths, groups,
/// stride, dilation, padding, lengths, fused activation and residual, on 1 and 2 threads.
/// The column counts reach past both thresholds into the gemm path, for the border.
#[test]
fn few_column_convs_and_transposes_match_the_references() {
    let mut rng = ChaCha8Rng::seed_from_u64(53);
    for (case, n) in (1..=9).chain([15, 16, 17, 18]).enumerate() {
        let groups = [1, 3, 1, 2][case % 4];
        let c_in = groups * [301, 67, 130][case % 3];
        let c_out = groups * [97, 13, 41][case % 3];
        let k = [5, 3, 1, 7, 2][case % 5];
        let stride = 1 + case % 3;
        let dilation = 1 + case % 2;
        let b = 1 + case % 2;
        let k_eff = dilation * (k - 1) + 1;
        // The padded input length that gives exactly n output columns.
        let need = (n - 1) * stride + k_eff;
        let (pad_left, pad_right) = if need > case % 4 + case % 3 {
            (case % 4, case % 3)
        } else {
            (0, 0)
        };
        let l = need - pad_left - pad_right;
        let x = if case % 2 == 0 {
            randn(&mut rng, &[b, c_in, l])
        } else {
            randn(&mut rng, &[b, c_in, l + 4]).narrow(2, 1, l).unwrap()
        };
        let w = randn(&mut rng, &[c_out, c_in / groups, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = Conv1dOpts {
            pad_left,
            pad_right,
            stride,
            dilation,
            groups,
        };
        let l_out = n;
        let residual = if case % 3 == 0 {
            randn(&mut rng, &[b, l_out, c_out]).transpose(1, 2).unwrap()
        } else {
            randn(&mut rng, &[b, c_out, l_out])
        };
        let act = [InputAct::None, InputAct::LeakyRelu(0.1), InputAct::Elu(1.0)][case % 3];
        let lens: Vec<usize> = (0..b).map(|i| (l - i * l / 3).max(1)).collect();
        let lengths = (case % 2 == 1).then_some(lens.as_slice());
        let want = act_and_mask(&x, act, lengths)
            .pad_with_zeros(2, pad_left, pad_right)
            .unwrap()
            .conv1d(&w, 0, stride, dilation, groups)
            .unwrap()
            .broadcast_add(&bias.reshape((1, c_out, 1)).unwrap())
            .unwrap();
        let fused = Fused {
            input_act: act,
            residual: Some(&residual),
            ..Default::default()
        };
        for threads in [1, 2] {
            let (plain, with_res) = in_pool(threads, || {
                let y = conv1d_fused(
                    &x,
                    &w,
                    Some(&bias),
                    opts,
                    lengths,
                    Fused {
                        residual: None,
                        ..fused
                    },
                );
                (
                    y.unwrap(),
                    conv1d_fused(&x, &w, Some(&bias), opts, lengths, fused).unwrap(),
                )
            });
            let what =
                format!("few conv n {n} (l_out {l_out}) {opts:?} k {k} {act:?} threads {threads}");
            assert_close(&plain, &want, &what);
            assert_close(
                &with_res,
                &(&want + &residual).unwrap(),
                &format!("{what} + residual"),
            );
        }

        // The transpose with n input frames.
        let c_out_g = [37, 5, 64][case % 3];
        let kt = [7, 4, 1, 16, 3][case % 5];
        let tstride = 1 + case % 4;
        let k_eff = dilation * (kt - 1) + 1;
        let full = (n - 1) * tstride + k_eff;
        let padding = (case % 3).min(full.saturating_sub(1) / 2);
        let output_padding = case % tstride.max(dilation);
        let topts = ConvTranspose1dOpts {
            stride: tstride,
            padding,
            output_padding,
            dilation,
            groups,
        };
        let x = randn(&mut rng, &[b, c_in, n]);
        let w = randn(&mut rng, &[c_in, c_out_g, kt]);
        let bias = randn(&mut rng, &[c_out_g * groups]);
        let tl: Vec<usize> = (0..b).map(|i| n - i * n / 2).collect();
        let tlengths = (case % 2 == 0).then_some(tl.as_slice());
        let want = conv_transpose1d_differentiable(
            &act_and_mask(&x, InputAct::None, tlengths),
            &w,
            tstride,
            padding,
            output_padding,
            dilation,
            groups,
        )
        .unwrap()
        .broadcast_add(&bias.reshape((1, (), 1)).unwrap())
        .unwrap();
        for threads in [1, 2] {
            let got = in_pool(threads, || {
                conv_transpose1d_inference(&x, &w, Some(&bias), topts, tlengths).unwrap()
            });
            let what = format!("few transpose t {n} {topts:?} k {kt} threads {threads}");
            assert_close(&got, &want, &what);
        }
    }
}

#[test]
fn winograd_matches_the_direct_conv() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for case in 0..24 {
        let c_in = rng.random_range(32..72);
        let c_out = rng.random_range(32..72);
        let k = [3, 4, 5, 7, 11][case % 5];
        // Undilated in every third case (its own vector paths).
        let dilation = if case % 3 == 0 {
            1
        } else {
            rng.random_range(2..7)
        };
        let pad_left = rng.random_range(0..(dilation * (k - 1) + 2));
        let pad_right = rng.random_range(0..6);
        let b = rng.random_range(1..4);
        let k_eff = dilation * (k - 1) + 1;
        // From just long enough for the Winograd path (16 tiles' worth) to several blocks.
        let l = k_eff + 16 * dilation + rng.random_range(0..[40, 400, 3000][case % 3]);
        let x = if case % 2 == 0 {
            randn(&mut rng, &[b, c_in, l])
        } else {
            randn(&mut rng, &[b, c_in, l + 7]).narrow(2, 2, l).unwrap()
        };
        let w = randn(&mut rng, &[c_out, c_in, k]);
        let bias = randn(&mut rng, &[c_out]);
        let opts = Conv1dOpts {
            pad_left,
            pad_right,
            stride: 1,
            dilation,
            groups: 1,
        };
        let l_out = l + pad_left + pad_right - k_eff + 1;
        // A residual in every other case, strided in time in every fourth.
        let (residual, act, lens) = fused_case(&mut rng, case, (b, c_out, l, l_out), case % 4 == 2);
        let lengths = (case % 4 == 1).then_some(lens.as_slice());
        let direct = Fused {
            input_act: act,
            residual: (case % 2 == 0).then_some(&residual),
            ..Default::default()
        };
        let want = conv1d_fused(&x, &w, Some(&bias), opts, lengths, direct).unwrap();
        let winograd = Fused {
            winograd: true,
            ..direct
        };
        for threads in [1, 2] {
            let got = in_pool(threads, || {
                conv1d_fused(&x, &w, Some(&bias), opts, lengths, winograd).unwrap()
            });
            assert_close(
                &got,
                &want,
                &format!("winograd case {case} {opts:?} k {k} {act:?} c {c_in}->{c_out} l {l} threads {threads}"),
            );
        }
    }
}
