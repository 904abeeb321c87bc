//! A 2-D convolution with per-axis padding, stride and dilation, written as a sum over kernel
//! taps of rank-2 matmuls (channels-last shifted views times the tap's `[out, in]` slice), so
//! that its backward comes from ops whose gradients are right in candle 0.11.1 (narrow, pad,
//! reshape, permute, matmul, add). Against a single im2col matmul it keeps a third of the
//! activations alive for autograd and ran forward + backward ~1.4x faster on the CPU
//! (`[2, 32, 43, 513]`, kernel `(3, 9)`, stride `(1, 2)`).
//!
//! candle's own `Tensor::conv2d` takes one padding / stride / dilation for both axes, so it
//! cannot express the discriminators' `(3, 9)` kernels with stride `(1, 2)` and dilation
//! `(d, 1)`; and its input gradient goes through `conv_transpose2d`, the analogue of the
//! `conv_transpose1d` that makes `conv1d`'s input gradient wrong for batch > 1 on the CPU.
//! The gradient parity tests (`tests/disc.rs`, batch 2, strides, dilations) cover this
//! function.

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
    // Channels last, so each tap is a [rows, C_in] matrix after one copy; the taps are
    // multiplied and summed one at a time, so autograd keeps one copy of the input per tap
    // rather than also a concatenated im2col matrix and its transpose.
    let x = x
        .pad_with_zeros(2, padding.0, padding.0)?
        .pad_with_zeros(3, padding.1, padding.1)?
        .permute((0, 2, 3, 1))?;
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
