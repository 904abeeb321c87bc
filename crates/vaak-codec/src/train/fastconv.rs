//! A faster differentiable `conv1d` for CPU training: im2col and its adjoint (col2im) as
//! candle custom ops written as single tight loops, with the multiply in one rank-2 candle
//! matmul.
//!
//! `vaak_nn::conv::conv1d_differentiable` builds the same im2col out of `k` narrowed slices,
//! a cat, a 4-D permute and a strided copy, and autograd runs each of those backwards; on the
//! codec's 16 kHz layers that is most of a training step. Here the unfold is one pass over
//! the input and its backward one pass over the gradient (a scatter-add that is exactly the
//! adjoint). Values and gradients equal `conv1d_differentiable`'s (itself checked against
//! PyTorch) to float rounding, tested with batch 2, strides, dilations and groups.
//!
//! Used by the SEANet training path (`Codec::forward_train`) for f32 tensors on the CPU;
//! elsewhere (CUDA, other dtypes) the convs keep `vaak_nn::conv`.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use vaak_nn::conv::CausalConv1d;

/// Unfolds `[B, C, L]` into `[B * L_out, C * k]` rows: row `(b, t)`, column `c * k + j` is
/// `x[b, c, t * stride + j * dilation]`.
#[derive(Clone, Copy, Debug)]
struct Im2col {
    k: usize,
    stride: usize,
    dilation: usize,
    /// Input shape `(B, C, L)` and output frames, fixed when the op is built.
    b: usize,
    c: usize,
    l: usize,
    l_out: usize,
}

/// The adjoint of [`Im2col`]: scatter-adds `[B * L_out, C * k]` back into `[B, C, L]`.
struct Col2im(Im2col);

/// Splits `0..n` over the available cores and runs `f(range)` on each part.
fn par_chunks<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = out.len().div_ceil(chunk.max(1));
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(n)
        .max(1);
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, part) in out.chunks_mut(per * chunk).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, part));
        }
    });
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: f32 only");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{op}: input must be contiguous");
    };
    Ok(&v[a..b])
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "vaak-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Im2col {
            k,
            stride,
            dilation,
            b,
            c,
            l: len,
            l_out,
        } = *self;
        if l.shape().dims() != [b, c, len] {
            bail!("Im2col: input {:?}, expected [{b}, {c}, {len}]", l.shape());
        }
        let x = f32_slice(s, l, "Im2col")?;
        let width = c * k;
        let mut out = vec![0f32; b * l_out * width];
        // One chunk per batch item: rows (bi, 0..l_out).
        par_chunks(&mut out, l_out * width, |first, part| {
            for (i, rows) in part.chunks_mut(l_out * width).enumerate() {
                let bi = first + i;
                for ci in 0..c {
                    let src = &x[(bi * c + ci) * len..(bi * c + ci + 1) * len];
                    for (t, row) in rows.chunks_mut(width).enumerate() {
                        let base = t * stride;
                        let dst = &mut row[ci * k..(ci + 1) * k];
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = src[base + j * dilation];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b * l_out, width))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2im(*self))?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "vaak-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Im2col {
            k,
            stride,
            dilation,
            b,
            c,
            l: len,
            l_out,
        } = self.0;
        let width = c * k;
        if l.shape().dims() != [b * l_out, width] {
            bail!(
                "Col2im: gradient {:?}, expected [{}, {width}]",
                l.shape(),
                b * l_out
            );
        }
        let g = f32_slice(s, l, "Col2im")?;
        let mut out = vec![0f32; b * c * len];
        // One chunk per (batch, channel) row of the output: disjoint writes.
        par_chunks(&mut out, len, |first, part| {
            for (i, dst) in part.chunks_mut(len).enumerate() {
                let bc = first + i;
                let (bi, ci) = (bc / c, bc % c);
                let rows = &g[bi * l_out * width..(bi + 1) * l_out * width];
                for (t, row) in rows.chunks(width).enumerate() {
                    let base = t * stride;
                    for (j, v) in row[ci * k..(ci + 1) * k].iter().enumerate() {
                        dst[base + j * dilation] += v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, len))))
    }
}

/// `conv1d` without padding (PyTorch semantics): `x` `[B, C_in, L]`, `w` `[C_out, C_in /
/// groups, k]`, result `[B, C_out, (L - dilation (k - 1) - 1) / stride + 1]`. f32 on the CPU
/// (else it falls back to `vaak_nn::conv::conv1d_differentiable`).
pub fn conv1d_im2col(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return vaak_nn::conv::conv1d_differentiable(x, w, 0, stride, dilation, groups);
    }
    let (b, c_in, l) = x.dims3()?;
    let (c_out, c_in_g, k) = w.dims3()?;
    if stride == 0 || dilation == 0 || groups == 0 || c_in_g * groups != c_in || c_out % groups != 0
    {
        bail!(
            "conv1d_im2col: weight {:?} does not fit input {:?} (stride {stride}, dilation \
             {dilation}, groups {groups})",
            w.dims(),
            x.dims()
        );
    }
    let span = dilation * (k - 1) + 1;
    if l < span {
        bail!("conv1d_im2col: input length {l} is shorter than the kernel span {span}");
    }
    let l_out = (l - span) / stride + 1;
    let op = Im2col {
        k,
        stride,
        dilation,
        b,
        c: c_in,
        l,
        l_out,
    };
    let cols = x.contiguous()?.apply_op1(op)?; // [B * L_out, C_in * k]
    let c_out_g = c_out / groups;
    let y = if groups == 1 {
        cols.matmul(&w.reshape((c_out, c_in * k))?.t()?)?
    } else {
        let parts = (0..groups)
            .map(|g| {
                let cg = cols.narrow(1, g * c_in_g * k, c_in_g * k)?.contiguous()?;
                let wg = w
                    .narrow(0, g * c_out_g, c_out_g)?
                    .reshape((c_out_g, c_in_g * k))?;
                cg.matmul(&wg.t()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?
    };
    y.reshape((b, l_out, c_out))?.transpose(1, 2)?.contiguous()
}

/// The whole-clip forward of a [`CausalConv1d`] (left zero padding, `T / stride` frames)
/// through [`conv1d_im2col`]: the same function as `CausalConv1d::forward`.
pub fn causal_conv1d_train(conv: &CausalConv1d, x: &Tensor) -> Result<Tensor> {
    let cfg = conv.config();
    let (_, _, t) = x.dims3()?;
    let frames = conv.output_len(t);
    let k_eff = cfg.effective_kernel();
    if frames == 0 {
        return conv.forward(x);
    }
    let padded = x.pad_with_zeros(2, conv.left_padding(), 0)?;
    let offset = cfg.stride.saturating_sub(k_eff);
    let span = (frames - 1) * cfg.stride + k_eff;
    let window = padded.narrow(2, offset, span)?;
    let y = conv1d_im2col(&window, conv.weight(), cfg.stride, cfg.dilation, cfg.groups)?;
    match conv.bias() {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1))?),
        None => Ok(y),
    }
}
