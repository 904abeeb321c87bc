//! The training conv on the CPU: one graph node for a padded, strided, dilated `conv1d`
//! (groups 1) whose backward computes `dx` and `dW` directly.
//!
//! The composed form (zero padding by a `cat`, the im2col op, a matmul, a reshape, a
//! transpose and a contiguous copy) is six nodes, and candle's autograd adds every node's
//! gradient into a fresh zero tensor: for a codec's audio-rate layers those zero-fills and
//! adds were most of a training step. Here the forward unfolds each item into channel-major
//! columns (`[C_in k, L_out]`, the padding read as zeros) and runs one `gemm` into the item's
//! output; the backward unfolds again for `dW = sum_b dy_b cols_b^T` and scatters `W^T dy_b`
//! back into `dx` (the exact adjoint of the unfold). Items run in parallel.
//!
//! A conv-transpose is the same geometry with the roles swapped: its forward scatters `W^T
//! x_b` through the fold (the padding trimmed, the output padding left zero), its backward
//! unfolds `dy_b` for `dx_b = W dy_cols` and `dW = sum_b x_b dy_cols^T`.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, with_contiguous_f32};

/// The sizes of one training conv.
#[derive(Clone, Copy, Debug)]
struct ConvTrain {
    b: usize,
    c_in: usize,
    l: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad_left: usize,
    l_out: usize,
}

impl ConvTrain {
    fn width(&self) -> usize {
        self.c_in * self.k
    }

    /// The output frames `t0 .. t1` whose tap `j` reads an input sample (the others read the
    /// padding), and the input position of frame `t0`'s tap.
    #[inline]
    fn valid(&self, j: usize) -> (usize, usize, usize) {
        let (s, off) = (self.stride, j * self.dilation);
        // Frame t reads position t * s + off - pad_left, inside [0, l).
        let t0 = self
            .pad_left
            .saturating_sub(off)
            .div_ceil(s)
            .min(self.l_out);
        let t1 = (self.l + self.pad_left)
            .saturating_sub(off)
            .div_ceil(s)
            .clamp(t0, self.l_out);
        (t0, t1, t0 * s + off - self.pad_left.min(t0 * s + off))
    }

    /// Item `x` (`[C_in, L]`) unfolded into `cols` (`[C_in k, L_out]`).
    fn unfold(&self, x: &[f32], cols: &mut [f32]) {
        for ci in 0..self.c_in {
            let src = &x[ci * self.l..(ci + 1) * self.l];
            for j in 0..self.k {
                let row = &mut cols[(ci * self.k + j) * self.l_out..][..self.l_out];
                let (t0, t1, p0) = self.valid(j);
                row[..t0].fill(0.0);
                row[t1..].fill(0.0);
                let inner = &mut row[t0..t1];
                if self.stride == 1 {
                    inner.copy_from_slice(&src[p0..p0 + inner.len()]);
                } else {
                    for (i, d) in inner.iter_mut().enumerate() {
                        *d = src[p0 + i * self.stride];
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::unfold`]: `cols` scatter-added into `dx` (`[C_in, L]`).
    fn fold(&self, cols: &[f32], dx: &mut [f32]) {
        for ci in 0..self.c_in {
            let dst = &mut dx[ci * self.l..(ci + 1) * self.l];
            for j in 0..self.k {
                let row = &cols[(ci * self.k + j) * self.l_out..][..self.l_out];
                let (t0, t1, p0) = self.valid(j);
                let inner = &row[t0..t1];
                if self.stride == 1 {
                    let d = &mut dst[p0..p0 + inner.len()];
                    d.iter_mut().zip(inner).for_each(|(d, v)| *d += v);
                } else {
                    for (i, v) in inner.iter().enumerate() {
                        dst[p0 + i * self.stride] += v;
                    }
                }
            }
        }
    }
}

/// [`crate::cpu::gemm`] on slices, one thread: `dst (m x n, row stride dst_rs) = [dst +] lhs
/// (m x k) * rhs (k x n)`, the operands as (data, row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
) {
    let d = (dst.as_mut_ptr(), dst_rs as isize, 1);
    let (l, r) = (
        (lhs.0.as_ptr(), lhs.1, lhs.2),
        (rhs.0.as_ptr(), rhs.1, rhs.2),
    );
    // SAFETY: the callers size every buffer for these shapes and strides.
    unsafe { crate::cpu::gemm((m, n, k), d, accumulate, l, r, gemm::Parallelism::None) };
}

/// Runs `f` on the f32 data of a backward's input, weight and output gradient, read in place
/// (copied only where one is not contiguous).
fn with_backward_inputs<R>(
    (x, w, dy): (&Tensor, &Tensor, &Tensor),
    f: impl FnOnce(&[f32], &[f32], &[f32]) -> R,
) -> Result<R> {
    const OP: &str = "training conv backward";
    let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
    with_contiguous_f32(&x, OP, |xv| {
        with_contiguous_f32(&w, OP, |wv| {
            with_contiguous_f32(&dy, OP, |dyv| f(xv, wv, dyv))
        })
    })??
}

/// Runs `item(bi, dx_b)` for the `b` items in parallel, each writing its `per_dx` input
/// gradient values and returning its `dw_len` share of the weight gradient, and sums the
/// shares: `(dx, dw)`.
fn item_grads(
    b: usize,
    per_dx: usize,
    dw_len: usize,
    item: impl Fn(usize, &mut [f32]) -> Vec<f32> + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; b * per_dx];
    let shares: Vec<Vec<f32>> = if per_dx == 0 {
        Vec::new()
    } else {
        dx.par_chunks_mut(per_dx)
            .enumerate()
            .map(|(bi, dxb)| item(bi, dxb))
            .collect()
    };
    let mut dw = vec![0f32; dw_len];
    for share in &shares {
        dw.iter_mut().zip(share).for_each(|(a, b)| *a += b);
    }
    (dx, dw)
}

impl CustomOp2 for ConvTrain {
    fn name(&self) -> &'static str {
        "vaak-conv1d-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = *self;
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let (width, per_in, per_out) = (g.width(), g.c_in * g.l, g.c_out * g.l_out);
        let mut y = vec![0f32; g.b * per_out];
        if per_out > 0 {
            y.par_chunks_mut(per_out).enumerate().for_each(|(bi, yb)| {
                let mut cols = vec![0f32; width * g.l_out];
                g.unfold(&x[bi * per_in..(bi + 1) * per_in], &mut cols);
                let w_op = (w, width as isize, 1);
                let c_op = (cols.as_slice(), g.l_out as isize, 1);
                gemm_into((g.c_out, g.l_out, width), yb, g.l_out, false, w_op, c_op);
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.c_out, g.l_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = *self;
        let (width, per_in, per_out) = (g.width(), g.c_in * g.l, g.c_out * g.l_out);
        let (dx, dw) = with_backward_inputs((x, w, dy), |xv, wv, dyv| {
            item_grads(g.b, per_in, g.c_out * width, |bi, dxb| {
                let dyb = &dyv[bi * per_out..(bi + 1) * per_out];
                let mut cols = vec![0f32; width * g.l_out];
                g.unfold(&xv[bi * per_in..(bi + 1) * per_in], &mut cols);
                // dW_b [C_out, C_in k] = dy_b [C_out, L_out] x cols^T [L_out, C_in k].
                let mut dw = vec![0f32; g.c_out * width];
                let dy_op = (dyb, g.l_out as isize, 1);
                let ct_op = (cols.as_slice(), 1, g.l_out as isize);
                gemm_into(
                    (g.c_out, width, g.l_out),
                    &mut dw,
                    width,
                    false,
                    dy_op,
                    ct_op,
                );
                // dcols [C_in k, L_out] = W^T [C_in k, C_out] x dy_b [C_out, L_out].
                let wt_op = (wv, 1, width as isize);
                gemm_into(
                    (width, g.l_out, g.c_out),
                    &mut cols,
                    g.l_out,
                    false,
                    wt_op,
                    dy_op,
                );
                g.fold(&cols, dxb);
                dw
            })
        })?;
        let dx = Tensor::from_vec(dx, (g.b, g.c_in, g.l), x.device())?;
        let dw = Tensor::from_vec(dw, (g.c_out, g.c_in, g.k), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `conv1d` of CPU f32 `x` (`[B, C_in, L]`) with `w` (`[C_out, C_in, k]`, groups 1), zero
/// padding `pad_left` / `pad_right` read in place, as one differentiable node (see the module
/// docs). The caller checks the device, the dtype and the groups.
pub(super) fn conv1d_train_cpu_f32(
    x: &Tensor,
    w: &Tensor,
    (pad_left, pad_right): (usize, usize),
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (b, c_in, l) = x.dims3()?;
    let (c_out, c_in_w, k) = w.dims3()?;
    let span = dilation * (k.max(1) - 1) + 1;
    let padded = l + pad_left + pad_right;
    if c_in_w != c_in || k == 0 || stride == 0 || dilation == 0 || padded < span {
        bail!(
            "conv1d_train: input {:?} (padding {pad_left} + {pad_right}) and weight {:?} \
             do not make a conv (stride {stride}, dilation {dilation})",
            x.dims(),
            w.dims()
        );
    }
    let op = ConvTrain {
        b,
        c_in,
        l,
        c_out,
        k,
        stride,
        dilation,
        pad_left,
        l_out: (padded - span) / stride + 1,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The conv-transpose of a [`ConvTrain`] geometry `g`: input `[B, g.c_out, g.l_out]`, weight
/// `[g.c_out, g.c_in, k]`, output `[B, g.c_in, g.l]`.
#[derive(Clone, Copy, Debug)]
struct ConvTransposeTrain(ConvTrain);

impl CustomOp2 for ConvTransposeTrain {
    fn name(&self) -> &'static str {
        "vaak-conv-transpose1d-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let (width, per_in, per_out) = (g.width(), g.c_out * g.l_out, g.c_in * g.l);
        let mut y = vec![0f32; g.b * per_out];
        if per_out > 0 {
            y.par_chunks_mut(per_out).enumerate().for_each(|(bi, yb)| {
                // cols [c_in k, T] = W^T [c_in k, c_out] x x_b [c_out, T], folded into y_b.
                let mut cols = vec![0f32; width * g.l_out];
                let wt_op = (w, 1, width as isize);
                let x_op = (&x[bi * per_in..(bi + 1) * per_in], g.l_out as isize, 1);
                gemm_into(
                    (width, g.l_out, g.c_out),
                    &mut cols,
                    g.l_out,
                    false,
                    wt_op,
                    x_op,
                );
                g.fold(&cols, yb);
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.c_in, g.l))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        let (width, per_in, per_out) = (g.width(), g.c_out * g.l_out, g.c_in * g.l);
        let (dx, dw) = with_backward_inputs((x, w, dy), |xv, wv, dyv| {
            item_grads(g.b, per_in, g.c_out * width, |bi, dxb| {
                let mut cols = vec![0f32; width * g.l_out];
                g.unfold(&dyv[bi * per_out..(bi + 1) * per_out], &mut cols);
                // dx_b [c_out, T] = W [c_out, c_in k] x cols [c_in k, T].
                let w_op = (wv, width as isize, 1);
                let c_op = (cols.as_slice(), g.l_out as isize, 1);
                gemm_into((g.c_out, g.l_out, width), dxb, g.l_out, false, w_op, c_op);
                // dW_b [c_out, c_in k] = x_b [c_out, T] x cols^T [T, c_in k].
                let mut dw = vec![0f32; g.c_out * width];
                let x_op = (&xv[bi * per_in..(bi + 1) * per_in], g.l_out as isize, 1);
                let ct_op = (cols.as_slice(), 1, g.l_out as isize);
                gemm_into(
                    (g.c_out, width, g.l_out),
                    &mut dw,
                    width,
                    false,
                    x_op,
                    ct_op,
                );
                dw
            })
        })?;
        let dx = Tensor::from_vec(dx, (g.b, g.c_out, g.l_out), x.device())?;
        let dw = Tensor::from_vec(dw, (g.c_out, g.c_in, g.k), w.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `conv_transpose1d` of CPU f32 `x` (`[B, C_in, T]`) with `w` (`[C_in, C_out, k]`, groups 1)
/// to `[B, C_out, l_out]`, output sample `n` being full-length sample `n + padding` (zero past
/// the full length), as one differentiable node. The caller checks the arguments.
pub(super) fn conv_transpose1d_train_cpu_f32(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
    l_out: usize,
) -> Result<Tensor> {
    let (b, c_in, t) = x.dims3()?;
    let (w_in, c_out, k) = w.dims3()?;
    if w_in != c_in || k == 0 || stride == 0 || dilation == 0 {
        bail!(
            "conv_transpose1d_train: input {:?} and weight {:?} do not make a transpose",
            x.dims(),
            w.dims()
        );
    }
    // The conv this transposes: c_out -> c_in channels, l_out -> t frames.
    let op = ConvTransposeTrain(ConvTrain {
        b,
        c_in: c_out,
        l: l_out,
        c_out: c_in,
        k,
        stride,
        dilation,
        pad_left: padding,
        l_out: t,
    });
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}
