//! A 2-D convolution with per-axis padding, stride and dilation (PyTorch's `F.conv2d`), for
//! the discriminators' `(k, 1)` kernels with stride `(3, 1)` and `(3, 9)` kernels with stride
//! `(1, 2)` and dilation `(d, 1)`.
//!
//! On the CPU every case is one 1-D conv along H ([`via_conv1d`]): the `kw` width taps become
//! channels (strided views, stacked), the output columns fold into the batch, and vaak-nn's
//! `conv1d_differentiable` (im2col with its adjoint as backward, plus one matmul) convolves
//! along H. Both passes are gemms. candle 0.11.1's CPU `conv2d` backward computes the input
//! gradient with its direct `conv_transpose2d` loop, which made a CPU adversarial step of the
//! bundled codec (batch 2, 1 s crops, scaled-down discriminators) take 27 s, most of it in
//! that loop.
//!
//! Elsewhere (a GPU: the vendor kernels) [`conv2d_differentiable`] pads explicitly and
//! reshapes every asymmetric case it can into symmetric native convs, since candle's
//! `Tensor::conv2d` takes one stride and dilation for both axes:
//!
//! - width-1 kernels (the period discriminators) fold the independent columns into the batch;
//! - dilation `d` along H with stride 1 folds the `d` residue classes of rows into the batch
//!   and convolves them undilated;
//! - stride `s` along W with dilation 1 becomes polyphase: a sum of `s` stride-1 convs of the
//!   input phases with the matching kernel taps.
//!
//! candle's conv2d backward (unlike conv1d's) is right for batch > 1: it agreed with a
//! finite-difference-checked reference to 1e-15 at batch 3, once the input is cut to the
//! samples the output reads (see `native`). Anything not reducible falls back to a sum over
//! kernel taps of `[rows, C_in] x [C_in, out]` matmuls on a channels-last view (ops whose
//! gradients are right in candle 0.11.1, no im2col matrix).
//!
//! Unit tests check every path and the tap sum against central finite differences (batch 2)
//! and against each other (batch 3); `tests/disc.rs` checks the discriminators against
//! PyTorch.

use candle_core::{bail, Result, Tensor};
use vaak_nn::conv::conv1d_differentiable;

/// Elements `start, start + stride, ..., start + (n - 1) * stride` of `t` along `dim`.
fn take_strided(t: &Tensor, dim: usize, start: usize, n: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return t.narrow(dim, start, n);
    }
    let avail = t.dim(dim)? - start;
    let want = n * stride;
    let s = if avail >= want {
        t.narrow(dim, start, want)?
    } else {
        t.narrow(dim, start, avail)?
            .pad_with_zeros(dim, 0, want - avail)?
    };
    // Split the axis into (n, stride) and keep the first of each block.
    let mut shape = s.dims().to_vec();
    shape[dim] = n;
    shape.insert(dim + 1, stride);
    s.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Output length of one axis, or an error when the padded input is shorter than the kernel.
fn out_len(len: usize, pad: usize, k: usize, stride: usize, dilation: usize) -> Result<usize> {
    let span = dilation * (k - 1) + 1;
    let padded = len + 2 * pad;
    if padded < span {
        bail!(
            "conv2d_differentiable: axis of length {len} (+ 2 x {pad} padding) is shorter than \
             the kernel span {span}"
        );
    }
    Ok((padded - span) / stride + 1)
}

/// PyTorch's `F.conv2d(x, w, None, stride, padding, dilation)` (zero padding, one group).
///
/// `x` is `[batch, in, H, W]`, `w` is `[out, in, kh, kw]`; padding, stride and dilation are
/// `(along H, along W)`. The result is `[batch, out, H_out, W_out]`.
pub fn conv2d_differentiable(
    x: &Tensor,
    w: &Tensor,
    padding: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<Tensor> {
    if x.rank() != 4 || w.rank() != 4 {
        bail!(
            "conv2d_differentiable: input must be [batch, in, H, W] and weight [out, in, kh, kw], \
             got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    }
    if stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
        bail!("conv2d_differentiable: stride {stride:?} and dilation {dilation:?} must be >= 1");
    }
    let (_, c_in, h, wd) = x.dims4()?;
    let (_, c_w, kh, kw) = w.dims4()?;
    if c_w != c_in || kh == 0 || kw == 0 {
        bail!(
            "conv2d_differentiable: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    out_len(h, padding.0, kh, stride.0, dilation.0)?;
    out_len(wd, padding.1, kw, stride.1, dilation.1)?;
    let x = x
        .pad_with_zeros(2, padding.0, padding.0)?
        .pad_with_zeros(3, padding.1, padding.1)?;
    if x.device().is_cpu() {
        return via_conv1d(&x, w, stride, dilation);
    }
    conv_valid(&x, &w.contiguous()?, stride, dilation)
}

/// A conv without padding as one 1-D conv along H (see the module docs): `[B, C, H, W]` ->
/// the `kw` width taps of every output column stacked into channels, `[B * W_out, C * kw, H]`
/// -> `conv1d_differentiable` with the kernel `[out, C * kw, kh]` -> `[B, out, H_out, W_out]`.
fn via_conv1d(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<Tensor> {
    let (b, c_in, h, wd) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    let w_out = out_len(wd, 0, kw, stride.1, dilation.1)?;
    let taps = (0..kw)
        .map(|j| take_strided(x, 3, j * dilation.1, w_out, stride.1))
        .collect::<Result<Vec<_>>>()?;
    // [B, C, kw, H, W_out]: channel c * kw + j is tap j of input channel c.
    let cols = Tensor::stack(&taps, 2)?
        .reshape((b, c_in * kw, h, w_out))?
        .permute((0, 3, 1, 2))?
        .contiguous()?
        .reshape((b * w_out, c_in * kw, h))?;
    let w1 = w
        .permute((0, 1, 3, 2))?
        .contiguous()?
        .reshape((c_out, c_in * kw, kh))?;
    let y = conv1d_differentiable(&cols, &w1, 0, stride.0, dilation.0, 1)?;
    let h_out = y.dim(2)?;
    y.reshape((b, w_out, c_out, h_out))?
        .permute((0, 2, 3, 1))?
        .contiguous()
}

/// A conv without padding, reduced to candle's native `conv2d` (one stride and dilation for
/// both axes) wherever a reshape makes the settings symmetric; see the module docs.
fn conv_valid(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<Tensor> {
    let (b, c_in, h, wd) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    if stride.0 == stride.1 && dilation.0 == dilation.1 {
        return native(x, w, stride.0, dilation.0);
    }
    if kw == 1 {
        // Width-1 kernel (the period discriminators): every column is an independent 1-D
        // signal, so fold the (subsampled) columns into the batch; on a width-1 input the
        // width stride and dilation are moot.
        let w_out = (wd - 1) / stride.1 + 1;
        let cols = take_strided(x, 3, 0, w_out, stride.1)?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .reshape((b * w_out, c_in, h, 1))?;
        let y = native(&cols, w, stride.0, dilation.0)?;
        let h_out = y.dim(2)?;
        return y
            .reshape((b, w_out, c_out, h_out))?
            .permute((0, 2, 3, 1))?
            .contiguous();
    }
    if dilation.0 > 1 && stride.0 == 1 {
        // Dilation d along H with stride 1: rows of one residue mod d only meet each other,
        // so fold the d residue classes into the batch and convolve them undilated.
        let d = dilation.0;
        let h_out = h - d * (kh - 1);
        let m = h.div_ceil(d);
        let folded = x
            .pad_with_zeros(2, 0, m * d - h)?
            .reshape((b, c_in, m, d, wd))?
            .permute((0, 3, 1, 2, 4))?
            .reshape((b * d, c_in, m, wd))?;
        let y = conv_valid(&folded, w, (1, stride.1), (1, dilation.1))?;
        let (_, _, m_out, w_out) = y.dims4()?;
        return y
            .reshape((b, d, c_out, m_out, w_out))?
            .permute((0, 2, 3, 1, 4))?
            .reshape((b, c_out, m_out * d, w_out))?
            .narrow(2, 0, h_out);
    }
    if stride.1 > 1 && dilation.1 == 1 {
        // Stride s along W: polyphase. Kernel tap j reads phase j mod s of the input at
        // offset j div s, so the conv is a sum of s stride-1 convs of the phases with the
        // matching sub-kernels.
        let s = stride.1;
        let w_out = (wd - kw) / s + 1;
        let mut y: Option<Tensor> = None;
        for ph in 0..s.min(kw) {
            let x_ph = take_strided(x, 3, ph, (wd - ph).div_ceil(s), s)?;
            let w_ph = take_strided(w, 3, ph, (kw - ph).div_ceil(s), s)?.contiguous()?;
            let part =
                conv_valid(&x_ph, &w_ph, (stride.0, 1), (dilation.0, 1))?.narrow(3, 0, w_out)?;
            y = Some(match y {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
        return y.expect("s, kw >= 1").contiguous();
    }
    conv_taps(x, w, stride, dilation)
}

/// candle's `conv2d` without padding, on the input cut to exactly the samples the output
/// reads: candle 0.11.1's backward derives the `conv_transpose2d` output padding from the
/// height alone, so an unread tail (of either axis) would give the input gradient the wrong
/// shape.
fn native(x: &Tensor, w: &Tensor, stride: usize, dilation: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let used = |len: usize, k: usize| {
        let span = dilation * (k - 1) + 1;
        ((len - span) / stride) * stride + span
    };
    x.narrow(2, 0, used(h, kh))?
        .narrow(3, 0, used(wd, kw))?
        .contiguous()?
        .conv2d(w, 0, stride, dilation, 1)
}

/// The general case: a sum over kernel taps of `[rows, C_in] x [C_in, out]` matmuls on a
/// channels-last view (one input copy per tap; no im2col matrix).
fn conv_taps(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<Tensor> {
    let (b, c_in, h, wd) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    let h_out = out_len(h, 0, kh, stride.0, dilation.0)?;
    let w_out = out_len(wd, 0, kw, stride.1, dilation.1)?;
    let x = x.permute((0, 2, 3, 1))?;
    let rows = b * h_out * w_out;
    let mut y: Option<Tensor> = None;
    for i in 0..kh {
        let band = take_strided(&x, 1, i * dilation.0, h_out, stride.0)?;
        for j in 0..kw {
            let tap = take_strided(&band, 2, j * dilation.1, w_out, stride.1)?
                .contiguous()?
                .reshape((rows, c_in))?;
            let w_ij = w.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((c_out, c_in))?;
            let part = tap.matmul(&w_ij.t()?)?;
            y = Some(match y {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
    }
    let y = y.expect("kh, kw >= 1");
    y.reshape((b, h_out, w_out, c_out))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn seq(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut state = seed;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The tap sum (the fallback every fast path is checked against) agrees with candle's
    /// own conv2d forward in symmetric settings, batch 3.
    #[test]
    fn tap_sum_matches_candle_conv2d_forward() -> Result<()> {
        let x = seq(&[3, 2, 11, 13], 1);
        let w = seq(&[4, 2, 3, 2], 2);
        for (p, s, d) in [(0, 1, 1), (1, 2, 1), (2, 2, 2), (1, 3, 2)] {
            let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            let ours = conv_taps(&padded, &w, (s, s), (d, d))?;
            let theirs = x.conv2d(&w, p, s, d, 1)?;
            assert_eq!(ours.dims(), theirs.dims());
            let err = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(err < 1e-12, "p {p} s {s} d {d}: {err}");
        }
        Ok(())
    }

    /// Input and weight gradients (batch 2) agree with central finite differences of
    /// `sum(y * g)` in f64, for each path: the tap sum, the width-1 fold (MPD), the residue
    /// fold + polyphase (dilated MS-STFT convs), the polyphase alone, candle's own conv2d,
    /// and the CPU's 1-D conv form.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // (weight shape, padding, stride, dilation, input H, W); the strides leave unread
        // tails of different lengths on the two axes.
        let cases = [
            ([3, 2, 3, 2], (2, 1), (2, 3), (1, 2), 7, 9),
            ([3, 2, 5, 1], (2, 0), (3, 1), (1, 1), 7, 3),
            ([3, 2, 5, 1], (2, 0), (3, 1), (1, 1), 8, 2),
            ([3, 2, 3, 5], (2, 2), (1, 2), (2, 1), 7, 10),
            ([3, 2, 3, 4], (1, 1), (1, 3), (1, 1), 6, 9),
            ([3, 2, 3, 3], (1, 1), (1, 1), (1, 1), 5, 6),
            ([3, 2, 3, 3], (1, 1), (2, 2), (1, 1), 8, 7),
        ];
        for (case, (w_shape, pad, stride, dil, h, wd)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(&seq(&[2, 2, h, wd], 3 + case as u64))?;
            let w = Var::from_tensor(&seq(&w_shape, 4))?;
            for path in ["taps", "native", "conv1d"] {
                let conv = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
                    let x = x
                        .pad_with_zeros(2, pad.0, pad.0)?
                        .pad_with_zeros(3, pad.1, pad.1)?;
                    match path {
                        "native" => conv_valid(&x, w, stride, dil),
                        "conv1d" => via_conv1d(&x, w, stride, dil),
                        _ => conv_taps(&x, w, stride, dil),
                    }
                };
                let y = conv(x.as_tensor(), w.as_tensor())?;
                let g = seq(y.dims(), 5);
                let grads = (y * &g)?.sum_all()?.backward()?;
                let objective = |x: &Tensor, w: &Tensor| -> Result<f64> {
                    (conv(x, w)? * &g)?.sum_all()?.to_scalar::<f64>()
                };
                for (var, is_x) in [(&x, true), (&w, false)] {
                    let analytic = grads
                        .get(var.as_tensor())
                        .unwrap()
                        .flatten_all()?
                        .to_vec1::<f64>()?;
                    let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
                    let eps = 1e-6;
                    // Every third entry keeps the test quick; errors are not that periodic.
                    for (i, a) in analytic.iter().enumerate().step_by(3) {
                        let bump = |delta: f64| -> Result<f64> {
                            let mut v = base.clone();
                            v[i] += delta;
                            let t = Tensor::from_vec(v, var.dims(), &Device::Cpu)?;
                            if is_x {
                                objective(&t, w.as_tensor())
                            } else {
                                objective(x.as_tensor(), &t)
                            }
                        };
                        let numeric = (bump(eps)? - bump(-eps)?) / (2.0 * eps);
                        assert!(
                            (numeric - a).abs() < 1e-7,
                            "case {case} ({path}): {} grad {i}: analytic {a}, numeric \
                         {numeric}",
                            if is_x { "input" } else { "weight" }
                        );
                    }
                }
            }
            assert_eq!(x.dtype(), DType::F64);
        }
        Ok(())
    }

    /// Every native path gives the tap sum's values, batch 3, on shapes that do not divide
    /// evenly into strides and dilations.
    #[test]
    fn native_paths_match_the_tap_sum() -> Result<()> {
        let cases = [
            ([4, 3, 5, 1], (2, 0), (3, 1), (1, 1), 23, 5),
            ([4, 3, 5, 1], (4, 0), (2, 2), (2, 1), 23, 5),
            ([4, 3, 3, 9], (4, 4), (1, 2), (4, 1), 13, 33),
            ([4, 3, 3, 9], (1, 4), (1, 2), (1, 1), 13, 34),
            ([4, 3, 3, 9], (2, 8), (1, 1), (2, 2), 13, 33),
            ([4, 3, 2, 4], (0, 0), (1, 3), (3, 1), 11, 17),
        ];
        for (case, (w_shape, pad, stride, dil, h, wd)) in cases.into_iter().enumerate() {
            let x = seq(&[3, 3, h, wd], 10 + case as u64);
            let w = seq(&w_shape, 20 + case as u64);
            let padded = x
                .pad_with_zeros(2, pad.0, pad.0)?
                .pad_with_zeros(3, pad.1, pad.1)?;
            let slow = conv_taps(&padded, &w, stride, dil)?;
            // The CPU path (the 1-D conv form) and the reductions to native convs (the GPU's).
            for (name, fast) in [
                ("cpu", conv2d_differentiable(&x, &w, pad, stride, dil)?),
                ("native", conv_valid(&padded, &w, stride, dil)?),
            ] {
                assert_eq!(fast.dims(), slow.dims(), "case {case} {name}");
                let err = (fast - &slow)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(err < 1e-12, "case {case} {name}: {err}");
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_mismatched_shapes_and_short_inputs() {
        let x = seq(&[1, 2, 4, 4], 6);
        assert!(conv2d_differentiable(&x, &seq(&[3, 1, 3, 3], 7), (0, 0), (1, 1), (1, 1)).is_err());
        assert!(conv2d_differentiable(&x, &seq(&[3, 2, 5, 1], 7), (0, 0), (1, 1), (1, 1)).is_err());
        assert!(conv2d_differentiable(&x, &seq(&[3, 2, 1, 1], 7), (0, 0), (0, 1), (1, 1)).is_err());
    }
}
