//! Streaming behaviour of `CausalConv1d` and `CausalConvTranspose1d`: streamed output equals the
//! whole-clip forward for many shapes and chunkings, per-slot reset and masking touch only
//! their slots, empty input is handled, and bad configs / inputs give errors, not panics.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_nn::conv::{CausalConv1d, CausalConvConfig, CausalConvTranspose1d, CausalPad};
use vaak_nn::streaming::{max_abs_diff, StreamMask, StreamTensor, StreamingModule};

/// Max abs difference allowed between streamed and whole-clip outputs (f32).
const STREAM_TOL: f32 = 1e-5;
/// Least number of (config, chunking, length) combinations each equality test must cover.
const MIN_COMBOS: usize = 50;

fn rand_t(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn make_conv(cfg: CausalConvConfig, rng: &mut ChaCha8Rng) -> CausalConv1d {
    let w = rand_t(
        rng,
        &[
            cfg.out_channels,
            cfg.in_channels / cfg.groups,
            cfg.kernel_size,
        ],
    );
    let b = cfg.bias.then(|| rand_t(rng, &[cfg.out_channels]));
    CausalConv1d::from_tensors(cfg, w, b).unwrap()
}

fn make_convtr(cfg: CausalConvConfig, rng: &mut ChaCha8Rng) -> CausalConvTranspose1d {
    let w = rand_t(
        rng,
        &[
            cfg.in_channels,
            cfg.out_channels / cfg.groups,
            cfg.kernel_size,
        ],
    );
    let b = cfg.bias.then(|| rand_t(rng, &[cfg.out_channels]));
    CausalConvTranspose1d::from_tensors(cfg, w, b).unwrap()
}

/// Streams `x` with chunk sizes taken cyclically from `pattern` (0 = an empty `StreamTensor`),
/// under an all-slots mask, and concatenates the outputs.
fn stream<M: StreamingModule>(m: &mut M, x: &Tensor, pattern: &[usize]) -> Result<StreamTensor> {
    let len = x.dim(2)?;
    let mut out = StreamTensor::empty();
    let (mut start, mut i) = (0, 0);
    while start < len {
        let want = pattern[i % pattern.len()];
        i += 1;
        let piece = if want == 0 {
            StreamTensor::empty()
        } else {
            let n = want.min(len - start);
            let p = StreamTensor::from_tensor(x.narrow(2, start, n)?);
            start += n;
            p
        };
        out = out.cat2(&m.step(&piece, &StreamMask::All)?, 2)?;
    }
    Ok(out)
}

fn assert_stream_matches(whole: &Tensor, streamed: &StreamTensor, what: &str) -> Result<f32> {
    match streamed.as_option() {
        None => {
            assert_eq!(
                whole.dim(2)?,
                0,
                "{what}: stream emitted nothing, whole clip did"
            );
            Ok(0.0)
        }
        Some(s) => {
            let err = max_abs_diff(whole, s)?;
            assert!(
                err <= STREAM_TOL,
                "{what}: streamed vs whole max abs err {err}"
            );
            Ok(err)
        }
    }
}

const CHUNKINGS: &[&[usize]] = &[&[1], &[3], &[7], &[2, 0, 5], &[4, 1, 6], &[11], &[1000]];

#[test]
fn conv_streamed_equals_whole_clip() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shapes = [(1, 1, 1), (4, 6, 2), (3, 2, 1), (6, 3, 3)]; // (in, out, groups)
    let (mut combos, mut worst, mut i) = (0, 0f32, 0usize);
    for kernel in [1usize, 2, 3, 4, 5, 7, 8, 9] {
        for stride in 1..=5usize {
            for dilation in 1..=3usize {
                let (c_in, c_out, groups) = shapes[i % shapes.len()];
                let cfg = CausalConvConfig::new(c_in, c_out, kernel)
                    .with_stride(stride)
                    .with_dilation(dilation)
                    .with_groups(groups)
                    .with_bias(i % 3 != 0);
                let mut conv = make_conv(cfg, &mut rng);
                for (j, t) in [5 + i % 4, 23 + i % 7].into_iter().enumerate() {
                    let chunking = CHUNKINGS[(i + 3 * j) % CHUNKINGS.len()];
                    let x = rand_t(&mut rng, &[2, c_in, t]);
                    let whole = conv.forward(&x)?;
                    assert_eq!(whole.dims(), &[2, c_out, t / stride]);
                    conv.reset_state();
                    let streamed = stream(&mut conv, &x, chunking)?;
                    let what = format!(
                        "k{kernel} s{stride} d{dilation} g{groups} t{t} chunks {chunking:?}"
                    );
                    worst = worst.max(assert_stream_matches(&whole, &streamed, &what)?);
                    combos += 1;
                }
                i += 1;
            }
        }
    }
    assert!(combos >= MIN_COMBOS, "only {combos} combinations");
    println!("conv: {combos} combinations, worst max abs err {worst:e}");
    Ok(())
}

#[test]
fn conv_transpose_streamed_equals_whole_clip() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let shapes = [(1, 1, 1), (4, 6, 2), (3, 2, 1), (6, 3, 3)]; // (in, out, groups)
    let (mut combos, mut worst, mut i) = (0, 0f32, 0usize);
    for kernel in [1usize, 2, 3, 4, 5, 8, 10] {
        for stride in 1..=5usize {
            for dilation in 1..=2usize {
                let (c_in, c_out, groups) = shapes[i % shapes.len()];
                let cfg = CausalConvConfig::new(c_in, c_out, kernel)
                    .with_stride(stride)
                    .with_dilation(dilation)
                    .with_groups(groups)
                    .with_bias(i % 3 != 1);
                let mut convtr = make_convtr(cfg, &mut rng);
                for (j, t) in [3 + i % 3, 12 + i % 5].into_iter().enumerate() {
                    let chunking = CHUNKINGS[(i + 2 * j) % CHUNKINGS.len()];
                    let x = rand_t(&mut rng, &[2, c_in, t]);
                    let whole = convtr.forward(&x)?;
                    assert_eq!(whole.dims(), &[2, c_out, t * stride]);
                    convtr.reset_state();
                    let streamed = stream(&mut convtr, &x, chunking)?;
                    let what = format!(
                        "k{kernel} s{stride} d{dilation} g{groups} t{t} chunks {chunking:?}"
                    );
                    worst = worst.max(assert_stream_matches(&whole, &streamed, &what)?);
                    combos += 1;
                }
                i += 1;
            }
        }
    }
    assert!(combos >= MIN_COMBOS, "only {combos} combinations");
    println!("conv-transpose: {combos} combinations, worst max abs err {worst:e}");
    Ok(())
}

#[test]
fn conv_padding_convention_matches_a_direct_sum() -> Result<()> {
    // Frame t reads the k_eff window ending at input (t + 1) * stride - 1, zeros before 0.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (k, s, d) in [
        (4usize, 2usize, 1usize),
        (3, 1, 2),
        (2, 4, 1),
        (1, 3, 1),
        (5, 5, 2),
    ] {
        let cfg = CausalConvConfig::new(1, 1, k)
            .with_stride(s)
            .with_dilation(d)
            .with_bias(false);
        let conv = make_conv(cfg, &mut rng);
        let t = 17;
        let x = rand_t(&mut rng, &[1, 1, t]);
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = conv.weight().flatten_all()?.to_vec1::<f32>()?;
        let y = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y.len(), t / s);
        let k_eff = (k - 1) * d + 1;
        for (f, &got) in y.iter().enumerate() {
            let end = (f + 1) * s; // exclusive
            let want: f32 = (0..k)
                .map(|j| {
                    let pos = end as isize - k_eff as isize + (j * d) as isize;
                    if pos < 0 {
                        0.0
                    } else {
                        wv[j] * xv[pos as usize]
                    }
                })
                .sum();
            assert!(
                (got - want).abs() < 1e-5,
                "k{k} s{s} d{d} frame {f}: {got} vs {want}"
            );
        }
    }
    Ok(())
}

#[test]
fn transpose_convention_matches_a_direct_sum() -> Result<()> {
    // Input frame t adds w[j] * x[t] at output t * stride + j * dilation; cut at T * stride.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (k, s, d) in [
        (4usize, 2usize, 1usize),
        (3, 1, 2),
        (2, 4, 1),
        (8, 4, 1),
        (3, 3, 2),
    ] {
        let cfg = CausalConvConfig::new(1, 1, k)
            .with_stride(s)
            .with_dilation(d)
            .with_bias(false);
        let conv = make_convtr(cfg, &mut rng);
        let t = 6;
        let x = rand_t(&mut rng, &[1, 1, t]);
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = conv.weight().flatten_all()?.to_vec1::<f32>()?;
        let mut want = vec![0f32; t * s + k * d];
        for (i, xi) in xv.iter().enumerate() {
            for (j, wj) in wv.iter().enumerate() {
                want[i * s + j * d] += xi * wj;
            }
        }
        let y = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y.len(), t * s);
        for (n, (&g, &w)) in y.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-5,
                "k{k} s{s} d{d} sample {n}: {g} vs {w}"
            );
        }
    }
    Ok(())
}

/// Rows `0` and `2` of `a` with row 1 replaced by the single row `b1`.
fn replace_row1(a: &Tensor, b1: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[&a.i(0..1)?, b1, &a.i(2..3)?], 0)
}

fn check_reset_slot<M: StreamingModule>(
    m: &mut M,
    forward: impl Fn(&Tensor) -> Result<Tensor>,
    c_in: usize,
    chunk: usize,
    rng: &mut ChaCha8Rng,
    what: &str,
) -> Result<()> {
    let (t1, t2) = (4 * chunk, 3 * chunk);
    let a = rand_t(rng, &[3, c_in, t1 + t2]);
    let b = rand_t(rng, &[1, c_in, t2]);
    let whole_a = forward(&a)?;
    let fresh_b = forward(&b)?;
    let per_in = whole_a.dim(2)? as f64 / (t1 + t2) as f64; // output frames per input sample
    m.reset_state();
    let first = stream(m, &a.narrow(2, 0, t1)?, &[chunk])?;
    m.reset_batch_idx(1, 3)?;
    let second_in = replace_row1(&a.narrow(2, t1, t2)?, &b)?;
    let second = stream(m, &second_in, &[chunk])?
        .into_option()
        .expect("output");
    let n1 = (t1 as f64 * per_in) as usize;
    let n2 = second.dim(2)?;
    assert_eq!(first.seq_len(2)?, n1, "{what}");
    let want_02 = whole_a.narrow(2, n1, n2)?;
    for s in [0, 2] {
        let err = max_abs_diff(&second.i(s)?, &want_02.i(s)?)?;
        assert!(
            err <= STREAM_TOL,
            "{what}: slot {s} disturbed by reset of slot 1: {err}"
        );
    }
    let err = max_abs_diff(&second.i(1)?, &fresh_b.i(0)?)?;
    assert!(
        err <= STREAM_TOL,
        "{what}: reset slot 1 != fresh stream: {err}"
    );
    Ok(())
}

#[test]
fn per_slot_reset_only_resets_that_slot() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (k, s, d) in [(4usize, 2usize, 1usize), (7, 1, 1), (3, 3, 2), (5, 4, 1)] {
        let cfg = CausalConvConfig::new(2, 3, k)
            .with_stride(s)
            .with_dilation(d);
        let mut conv = make_conv(cfg, &mut rng);
        let c = conv.clone();
        check_reset_slot(
            &mut conv,
            |x| c.forward(x),
            2,
            2 * s,
            &mut rng,
            &format!("conv k{k} s{s} d{d}"),
        )?;
        let mut tr = make_convtr(cfg, &mut rng);
        let t = tr.clone();
        check_reset_slot(
            &mut tr,
            |x| t.forward(x),
            2,
            1 + s % 2,
            &mut rng,
            &format!("convtr k{k} s{s} d{d}"),
        )?;
    }
    Ok(())
}

#[test]
fn reset_without_history_differs_from_continuing() -> Result<()> {
    // Guards the reset test: a conv with history really does give a different output after a
    // reset than without one (otherwise "slot 1 equals a fresh stream" would be vacuous).
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let cfg = CausalConvConfig::new(2, 2, 4).with_stride(2);
    let mut conv = make_conv(cfg, &mut rng);
    let x = rand_t(&mut rng, &[3, 2, 8]);
    conv.step(&StreamTensor::from_tensor(x.clone()), &StreamMask::All)?;
    let mut reset = conv.clone();
    reset.reset_batch_idx(1, 3)?;
    let next = StreamTensor::from_tensor(rand_t(&mut rng, &[3, 2, 4]));
    let a = conv.step(&next, &StreamMask::All)?.into_option().unwrap();
    let b = reset.step(&next, &StreamMask::All)?.into_option().unwrap();
    assert!(max_abs_diff(&a.i(1)?, &b.i(1)?)? > 1e-3);
    assert_eq!(max_abs_diff(&a.i(0)?, &b.i(0)?)?, 0.0);
    Ok(())
}

fn check_masked_step<M: StreamingModule>(
    m: &mut M,
    forward: impl Fn(&Tensor) -> Result<Tensor>,
    c_in: usize,
    chunk: usize,
    rng: &mut ChaCha8Rng,
    what: &str,
) -> Result<()> {
    let chunks: Vec<Tensor> = (0..4).map(|_| rand_t(rng, &[3, c_in, chunk])).collect();
    let masked_step = 1;
    let mask = StreamMask::from_slots(&[true, false, true]);
    m.reset_state();
    let mut outs = vec![];
    for (i, c) in chunks.iter().enumerate() {
        let mk = if i == masked_step {
            mask.clone()
        } else {
            StreamMask::All
        };
        outs.push(m.step(&StreamTensor::from_tensor(c.clone()), &mk)?);
    }
    // Slots 0 and 2 saw everything.
    let full = forward(&Tensor::cat(&chunks, 2)?)?;
    let all = outs
        .iter()
        .try_fold(StreamTensor::empty(), |acc, o| acc.cat2(o, 2))?
        .into_option()
        .unwrap();
    for s in [0, 2] {
        let err = max_abs_diff(&all.i(s)?, &full.i(s)?)?;
        assert!(err <= STREAM_TOL, "{what}: active slot {s}: {err}");
    }
    // Slot 1 never saw the masked chunk.
    let seen: Vec<Tensor> = chunks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != masked_step)
        .map(|(_, c)| c.i(1..2))
        .collect::<Result<_>>()?;
    let want = forward(&Tensor::cat(&seen, 2)?)?.i(0)?;
    let got_parts: Vec<Tensor> = outs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != masked_step)
        .filter_map(|(_, o)| o.as_option().map(|t| t.i(1)))
        .collect::<Result<_>>()?;
    let got = Tensor::cat(&got_parts, 1)?;
    let err = max_abs_diff(&got, &want)?;
    assert!(
        err <= STREAM_TOL,
        "{what}: masked slot state was touched: {err}"
    );
    Ok(())
}

#[test]
fn masked_step_leaves_inactive_slot_untouched() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (k, s, d) in [(4usize, 2usize, 1usize), (6, 1, 2), (3, 3, 1), (10, 5, 1)] {
        let cfg = CausalConvConfig::new(3, 2, k)
            .with_stride(s)
            .with_dilation(d);
        let mut conv = make_conv(cfg, &mut rng);
        let c = conv.clone();
        check_masked_step(
            &mut conv,
            |x| c.forward(x),
            3,
            2 * s,
            &mut rng,
            &format!("conv k{k} s{s}"),
        )?;
        let mut tr = make_convtr(cfg, &mut rng);
        let t = tr.clone();
        // Any chunk length works for the transpose.
        check_masked_step(
            &mut tr,
            |x| t.forward(x),
            3,
            3,
            &mut rng,
            &format!("convtr k{k} s{s}"),
        )?;
    }
    Ok(())
}

#[test]
fn empty_and_zero_length_input() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let cfg = CausalConvConfig::new(2, 3, 4).with_stride(2);
    let mut conv = make_conv(cfg, &mut rng);
    let mut tr = make_convtr(cfg, &mut rng);
    let zero = Tensor::zeros((2, 2, 0), DType::F32, &Device::Cpu)?;
    assert_eq!(conv.forward(&zero)?.dims(), &[2, 3, 0]);
    assert_eq!(tr.forward(&zero)?.dims(), &[2, 3, 0]);
    // A clip shorter than one stride has no complete frame.
    let one = rand_t(&mut rng, &[2, 2, 1]);
    assert_eq!(conv.forward(&one)?.dims(), &[2, 3, 0]);
    assert!(conv
        .step(&StreamTensor::from_tensor(one.clone()), &StreamMask::All)?
        .is_empty());
    conv.reset_state();

    let x = rand_t(&mut rng, &[2, 2, 9]);
    let whole_c = conv.forward(&x)?;
    let whole_t = tr.forward(&x)?;
    // Empty and zero-length chunks in between change nothing.
    let mut out_c = StreamTensor::empty();
    let mut out_t = StreamTensor::empty();
    for piece in [
        StreamTensor::empty(),
        StreamTensor::from_tensor(x.narrow(2, 0, 4)?),
        StreamTensor::from_tensor(zero.clone()),
        StreamTensor::empty(),
        StreamTensor::from_tensor(x.narrow(2, 4, 5)?),
    ] {
        let oc = conv.step(&piece, &StreamMask::All)?;
        let ot = tr.step(&piece, &StreamMask::All)?;
        if piece.seq_len(2)? == 0 {
            assert!(
                oc.is_empty() && ot.is_empty(),
                "empty in must give empty out"
            );
        }
        out_c = out_c.cat2(&oc, 2)?;
        out_t = out_t.cat2(&ot, 2)?;
    }
    assert_stream_matches(&whole_c, &out_c, "conv with empty chunks")?;
    assert_stream_matches(&whole_t, &out_t, "convtr with empty chunks")?;
    Ok(())
}

fn err_msg<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_and_inputs_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let w = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
    let base = CausalConvConfig::new(4, 6, 3).with_bias(false);

    let cases: Vec<(CausalConvConfig, &str)> = vec![
        (
            CausalConvConfig {
                kernel_size: 0,
                ..base
            },
            "kernel_size",
        ),
        (base.with_stride(0), "stride"),
        (base.with_dilation(0), "dilation"),
        (
            base.with_groups(3),
            "in_channels (4) is not divisible by groups (3)",
        ),
        (
            CausalConvConfig {
                out_channels: 5,
                ..base.with_groups(2)
            },
            "out_channels (5)",
        ),
        (
            CausalConvConfig {
                in_channels: 0,
                ..base
            },
            "in_channels",
        ),
    ];
    for (cfg, needle) in cases {
        let k = cfg.kernel_size.max(1);
        let m1 = err_msg(CausalConv1d::from_tensors(cfg, w(&[6, 4, k]), None));
        assert!(m1.contains("CausalConv1d") && m1.contains(needle), "{m1}");
        let m2 = err_msg(CausalConvTranspose1d::from_tensors(
            cfg,
            w(&[4, 6, k]),
            None,
        ));
        assert!(
            m2.contains("CausalConvTranspose1d") && m2.contains(needle),
            "{m2}"
        );
        let vb = VarBuilder::zeros(DType::F32, &dev);
        assert!(err_msg(CausalConv1d::new(cfg, vb)).contains(needle));
    }

    // Weight / bias shape mistakes.
    assert!(
        err_msg(CausalConv1d::from_tensors(base, w(&[6, 4, 2]), None)).contains("weight has shape")
    );
    assert!(err_msg(CausalConv1d::from_tensors(
        base,
        w(&[6, 4, 3]),
        Some(w(&[6]))
    ))
    .contains("bias"));
    let with_bias = base.with_bias(true);
    assert!(err_msg(CausalConv1d::from_tensors(with_bias, w(&[6, 4, 3]), None)).contains("bias"));
    assert!(err_msg(CausalConv1d::from_tensors(
        with_bias,
        w(&[6, 4, 3]),
        Some(w(&[5]))
    ))
    .contains("bias has shape"));
    assert!(err_msg(CausalConvTranspose1d::from_tensors(
        base,
        w(&[6, 4, 3]),
        None
    ))
    .contains("weight has shape"));

    // Input rank / channels, batch changes, mask sizes.
    let mut conv = CausalConv1d::from_tensors(base.with_stride(2), w(&[6, 4, 3]), None)?;
    let mut tr = CausalConvTranspose1d::from_tensors(base.with_stride(2), w(&[4, 6, 3]), None)?;
    for x in [w(&[4, 10]), w(&[1, 1, 4, 10])] {
        assert!(err_msg(conv.forward(&x)).contains("[batch, channels, time]"));
        assert!(err_msg(tr.forward(&x)).contains("[batch, channels, time]"));
        assert!(
            err_msg(conv.step(&StreamTensor::from_tensor(x.clone()), &StreamMask::All))
                .contains("[batch")
        );
    }
    let x5 = w(&[1, 5, 10]);
    assert!(err_msg(conv.forward(&x5)).contains("5 channels, expected 4"));
    assert!(
        err_msg(tr.step(&StreamTensor::from_tensor(x5), &StreamMask::All)).contains("5 channels")
    );

    let x = |b: usize, t: usize| StreamTensor::from_tensor(w(&[b, 4, t]));
    conv.step(&x(2, 4), &StreamMask::All)?;
    tr.step(&x(2, 4), &StreamMask::All)?;
    assert!(err_msg(conv.step(&x(3, 4), &StreamMask::All)).contains("batch changed"));
    assert!(err_msg(tr.step(&x(3, 4), &StreamMask::All)).contains("batch changed"));
    let bad_mask = StreamMask::from_slots(&[true, false, true]);
    assert!(err_msg(conv.step(&x(2, 4), &bad_mask)).contains("mask has 3 slots"));
    assert!(err_msg(tr.reset_slots(&bad_mask)).contains("mask has 3 slots"));

    // Strided conv: masked steps and partial resets need stride alignment.
    let half = StreamMask::from_slots(&[true, false]);
    assert!(err_msg(conv.step(&x(2, 3), &half)).contains("multiple of the stride"));
    conv.step(&x(2, 3), &StreamMask::All)?; // now one sample into a stride block
    assert!(err_msg(conv.reset_slots(&half)).contains("stride block"));
    conv.reset_slots(&StreamMask::All)?; // resetting everything is always fine
    conv.step(&x(2, 4), &half)?;
    conv.reset_slots(&half)?;
    // The transpose has no alignment constraint.
    tr.step(&x(2, 3), &half)?;
    tr.reset_slots(&half)?;

    // A failed step leaves the state usable.
    assert!(conv.step(&x(5, 4), &StreamMask::All).is_err());
    conv.step(&x(2, 4), &StreamMask::All)?;
    Ok(())
}

#[test]
fn var_builder_loading_matches_from_tensors() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let dev = Device::Cpu;
    let cfg = CausalConvConfig::new(4, 6, 3).with_stride(2).with_groups(2);
    let x = rand_t(&mut rng, &[2, 4, 10]);

    let (wc, bc) = (rand_t(&mut rng, &[6, 2, 3]), rand_t(&mut rng, &[6]));
    let map: HashMap<String, Tensor> = [
        ("weight".to_string(), wc.clone()),
        ("bias".to_string(), bc.clone()),
    ]
    .into();
    let loaded = CausalConv1d::new(cfg, VarBuilder::from_tensors(map, DType::F32, &dev))?;
    let direct = CausalConv1d::from_tensors(cfg, wc, Some(bc))?;
    assert_eq!(
        max_abs_diff(&loaded.forward(&x)?, &direct.forward(&x)?)?,
        0.0
    );

    let (wt, bt) = (rand_t(&mut rng, &[4, 3, 3]), rand_t(&mut rng, &[6]));
    let map: HashMap<String, Tensor> = [
        ("weight".to_string(), wt.clone()),
        ("bias".to_string(), bt.clone()),
    ]
    .into();
    let loaded = CausalConvTranspose1d::new(cfg, VarBuilder::from_tensors(map, DType::F32, &dev))?;
    let direct = CausalConvTranspose1d::from_tensors(cfg, wt.clone(), Some(bt))?;
    assert_eq!(
        max_abs_diff(&loaded.forward(&x)?, &direct.forward(&x)?)?,
        0.0
    );

    // A checkpoint without the configured bias is an error naming the tensor.
    let map: HashMap<String, Tensor> = [("weight".to_string(), wt)].into();
    let e = err_msg(CausalConvTranspose1d::new(
        cfg,
        VarBuilder::from_tensors(map, DType::F32, &dev),
    ));
    assert!(e.contains("bias"), "{e}");
    Ok(())
}

#[test]
fn replicate_padding_matches_a_direct_sum_and_differs_from_zeros() -> Result<()> {
    // Frame t reads the k_eff window ending at input (t + 1) * stride - 1; positions before 0
    // read the first sample (PyTorch `pad_mode = "replicate"`).
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (k, s, d) in [(4usize, 2usize, 1usize), (3, 1, 2), (2, 4, 1), (7, 3, 1)] {
        let cfg = CausalConvConfig::new(1, 1, k)
            .with_stride(s)
            .with_dilation(d)
            .with_bias(false);
        let zeros = make_conv(cfg, &mut rng);
        let conv = zeros.clone().with_pad(CausalPad::Replicate);
        assert_eq!(conv.pad(), CausalPad::Replicate);
        let t = 17;
        // Offset away from 0 so that replicate and zero padding really differ.
        let x = (rand_t(&mut rng, &[1, 1, t]) + 2.0)?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = conv.weight().flatten_all()?.to_vec1::<f32>()?;
        let y = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y.len(), t / s);
        let k_eff = (k - 1) * d + 1;
        for (f, &got) in y.iter().enumerate() {
            let end = (f + 1) * s;
            let want: f32 = (0..k)
                .map(|j| {
                    let pos = end as isize - k_eff as isize + (j * d) as isize;
                    wv[j] * xv[pos.max(0) as usize]
                })
                .sum();
            assert!(
                (got - want).abs() < 1e-5,
                "k{k} s{s} d{d} frame {f}: {got} vs {want}"
            );
        }
        if k_eff > s {
            let z = zeros.forward(&x)?;
            assert!(max_abs_diff(&z.narrow(2, 0, 1)?, &conv.forward(&x)?.narrow(2, 0, 1)?)? > 1e-3);
        }
    }
    Ok(())
}

#[test]
fn replicate_conv_streamed_equals_whole_clip() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let shapes = [(1, 1, 1), (4, 6, 2), (3, 2, 1)]; // (in, out, groups)
    let (mut combos, mut worst, mut i) = (0, 0f32, 0usize);
    for kernel in [1usize, 2, 3, 4, 7, 8] {
        for stride in 1..=4usize {
            for dilation in [1usize, 2] {
                let (c_in, c_out, groups) = shapes[i % shapes.len()];
                let cfg = CausalConvConfig::new(c_in, c_out, kernel)
                    .with_stride(stride)
                    .with_dilation(dilation)
                    .with_groups(groups)
                    .with_bias(i % 2 == 0);
                let mut conv = make_conv(cfg, &mut rng).with_pad(CausalPad::Replicate);
                for (j, t) in [5 + i % 4, 23 + i % 7].into_iter().enumerate() {
                    let chunking = CHUNKINGS[(i + 3 * j) % CHUNKINGS.len()];
                    let x = (rand_t(&mut rng, &[2, c_in, t]) + 1.5)?;
                    let whole = conv.forward(&x)?;
                    conv.reset_state();
                    let streamed = stream(&mut conv, &x, chunking)?;
                    let what = format!(
                        "replicate k{kernel} s{stride} d{dilation} g{groups} t{t} chunks {chunking:?}"
                    );
                    worst = worst.max(assert_stream_matches(&whole, &streamed, &what)?);
                    combos += 1;
                }
                i += 1;
            }
        }
    }
    assert!(combos >= MIN_COMBOS, "only {combos} combinations");
    println!("replicate conv: {combos} combinations, worst max abs err {worst:e}");
    Ok(())
}

#[test]
fn replicate_per_slot_reset_and_masked_steps() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for (k, s, d) in [(4usize, 2usize, 1usize), (7, 1, 1), (3, 3, 2), (10, 5, 1)] {
        let cfg = CausalConvConfig::new(2, 3, k)
            .with_stride(s)
            .with_dilation(d);
        let mut conv = make_conv(cfg, &mut rng).with_pad(CausalPad::Replicate);
        let c = conv.clone();
        let what = format!("replicate conv k{k} s{s} d{d}");
        check_reset_slot(&mut conv, |x| c.forward(x), 2, 2 * s, &mut rng, &what)?;
        check_masked_step(&mut conv, |x| c.forward(x), 2, 2 * s, &mut rng, &what)?;

        // A slot inactive on the very first steps takes its left context from its own first
        // sample when it does start, not from what the other slots saw.
        let chunks: Vec<Tensor> = (0..4)
            .map(|_| rand_t(&mut rng, &[3, 2, s]) + 1.0)
            .collect::<Result<_>>()?;
        let late = StreamMask::from_slots(&[true, false, true]);
        conv.reset_state();
        let mut outs = Vec::new();
        for (i, x) in chunks.iter().enumerate() {
            let mask = if i < 2 { late.clone() } else { StreamMask::All };
            outs.push(conv.step(&StreamTensor::from_tensor(x.clone()), &mask)?);
        }
        let got: Vec<Tensor> = outs[2..]
            .iter()
            .map(|o| o.as_option().unwrap().i(1..2))
            .collect::<Result<_>>()?;
        let want = c.forward(&Tensor::cat(
            &[&chunks[2].i(1..2)?, &chunks[3].i(1..2)?],
            2,
        )?)?;
        let err = max_abs_diff(&Tensor::cat(&got, 2)?, &want)?;
        assert!(err <= STREAM_TOL, "{what}: late slot start: {err}");
    }
    Ok(())
}
