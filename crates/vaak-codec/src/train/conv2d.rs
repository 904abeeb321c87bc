//! A 2-D convolution with per-axis padding, stride and dilation, written as im2col plus one
//! rank-2 matmul so that its backward comes from ops whose gradients are right in candle
//! 0.11.1 (narrow, pad, reshape, cat, permute, matmul).
//!
//! candle's own `Tensor::conv2d` takes one padding / stride / dilation for both axes, so it
//! cannot express the discriminators' `(3, 9)` kernels with stride `(1, 2)` and dilation
//! `(d, 1)`; and its input gradient goes through `conv_transpose2d`, which shares the CPU
//! batched-matmul path that makes `conv1d`'s input gradient wrong for batch > 1. The gradient
//! parity tests (`tests/disc.rs`, batch 2) cover this function.

use candle_core::{bail, Result, Tensor};

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
    let (b, c_in, h, wd) = x.dims4()?;
    let (c_out, c_w, kh, kw) = w.dims4()?;
    if c_w != c_in || kh == 0 || kw == 0 {
        bail!(
            "conv2d_differentiable: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    let h_out = out_len(h, padding.0, kh, stride.0, dilation.0)?;
    let w_out = out_len(wd, padding.1, kw, stride.1, dilation.1)?;
    let x = x
        .pad_with_zeros(2, padding.0, padding.0)?
        .pad_with_zeros(3, padding.1, padding.1)?;
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        let rows = take_strided(&x, 2, i * dilation.0, h_out, stride.0)?;
        for j in 0..kw {
            taps.push(take_strided(&rows, 3, j * dilation.1, w_out, stride.1)?.unsqueeze(4)?);
        }
    }
    // [B, H_out, W_out, C_in, kh * kw]: one im2col row per output position; the tap index
    // runs i-major like the flattened `[in, kh, kw]` kernel.
    let cols = Tensor::cat(&taps, 4)?
        .permute((0, 2, 3, 1, 4))?
        .contiguous()?
        .reshape((b * h_out * w_out, c_in * kh * kw))?;
    let w2 = w.contiguous()?.reshape((c_out, c_in * kh * kw))?;
    cols.matmul(&w2.t()?)?
        .reshape((b, h_out, w_out, c_out))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}
