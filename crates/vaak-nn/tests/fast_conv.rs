//! The inference conv path (`conv1d_inference`, `conv_transpose1d_inference`) against candle's
//! reference convs on random shapes (groups, dilation, stride, asymmetric padding, strided
//! inputs), its per-item lengths against one-item calls, and its fallback under autograd.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_nn::conv::{
    conv1d_differentiable, conv1d_inference, conv_transpose1d_differentiable,
    conv_transpose1d_inference, leaky_relu, Conv1dOpts, ConvTranspose1dOpts,
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
