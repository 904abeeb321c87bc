//! The CPU fast path of [`conv1d_differentiable`](super::conv1d_differentiable): im2col and
//! its adjoint (col2im) as candle custom ops written as single tight loops, with the multiply
//! in one rank-2 candle matmul per group.
//!
//! The portable formulation ([`conv1d_composed`](super::conv1d_composed)) builds the same
//! im2col out of `k` narrowed slices, a cat, a 4-D permute and a strided copy, and autograd
//! runs each of those backwards; on a 16 kHz codec's layers that is most of a training step.
//! Here the unfold is one pass over the input and its backward one pass over the gradient (a
//! scatter-add that is exactly the adjoint). Values and gradients equal the composed ones to
//! float rounding (tested with batch 2, strides, dilations and groups).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The sizes of one unfold: input `(b, c, l)`, `l_out` output frames of a `k`-tap kernel.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    k: usize,
    stride: usize,
    dilation: usize,
    b: usize,
    c: usize,
    l: usize,
    l_out: usize,
}

impl Geometry {
    /// Width of an im2col row, `c * k`.
    fn width(&self) -> usize {
        self.c * self.k
    }

    /// Input position of tap `j` of output frame `t`.
    fn at(&self, t: usize, j: usize) -> usize {
        t * self.stride + j * self.dilation
    }
}

/// Unfolds `[B, C, L]` into `[B * L_out, C * k]` rows: row `(b, t)`, column `c * k + j` is
/// `x[b, c, t * stride + j * dilation]`.
#[derive(Clone, Copy, Debug)]
struct Im2col(Geometry);

/// The adjoint of [`Im2col`]: scatter-adds `[B * L_out, C * k]` back into `[B, C, L]`.
struct Col2im(Geometry);

/// Splits `out` into whole `chunk`s over the available cores and runs `f(first chunk, part)`.
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

/// The contiguous f32 data of a `dims`-shaped input of `op`.
fn f32_input<'a>(s: &'a CpuStorage, l: &Layout, dims: &[usize], op: &str) -> Result<&'a [f32]> {
    if l.shape().dims() != dims {
        bail!("{op}: input {:?}, expected {dims:?}", l.shape());
    }
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
        let g = self.0;
        let x = f32_input(s, l, &[g.b, g.c, g.l], "Im2col")?;
        let (width, len, k) = (g.width(), g.l, g.k);
        let mut out = vec![0f32; g.b * g.l_out * width];
        // One chunk per batch item: rows (bi, 0..l_out).
        par_chunks(&mut out, g.l_out * width, |first, part| {
            for (i, rows) in part.chunks_mut(g.l_out * width).enumerate() {
                let bi = first + i;
                for ci in 0..g.c {
                    let src = &x[(bi * g.c + ci) * len..(bi * g.c + ci + 1) * len];
                    for (t, row) in rows.chunks_mut(width).enumerate() {
                        for (j, d) in row[ci * k..(ci + 1) * k].iter_mut().enumerate() {
                            *d = src[g.at(t, j)];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b * g.l_out, width))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2im(self.0))?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "vaak-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (width, len, k) = (g.width(), g.l, g.k);
        let grad = f32_input(s, l, &[g.b * g.l_out, width], "Col2im")?;
        let mut out = vec![0f32; g.b * g.c * len];
        // One chunk per (batch, channel) row of the output: disjoint writes.
        par_chunks(&mut out, len, |first, part| {
            for (i, dst) in part.chunks_mut(len).enumerate() {
                let bc = first + i;
                let (bi, ci) = (bc / g.c, bc % g.c);
                let rows = &grad[bi * g.l_out * width..(bi + 1) * g.l_out * width];
                for (t, row) in rows.chunks(width).enumerate() {
                    for (j, v) in row[ci * k..(ci + 1) * k].iter().enumerate() {
                        dst[g.at(t, j)] += v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c, len))))
    }
}

/// The im2col rows `[B * L_out, C * k]` of a CPU f32 input `[B, C, L]` for a `k`-tap kernel
/// (`L >= dilation (k - 1) + 1`, checked by the caller), differentiable through [`Col2im`].
pub(super) fn im2col_cpu_f32(
    x: &Tensor,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let l_out = (l - (dilation * (k - 1) + 1)) / stride + 1;
    let op = Im2col(Geometry {
        k,
        stride,
        dilation,
        b,
        c,
        l,
        l_out,
    });
    x.contiguous()?.apply_op1(op)
}
