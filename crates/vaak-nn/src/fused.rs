//! Differentiable fused kernels for training: the linear layer, softmax over the last axis,
//! LayerNorm, RMSNorm, rotary embeddings, per-row cross-entropy and the GELU (erf), SiLU and
//! sigmoid activations.
//!
//! candle's fused softmax, norms and RoPE have no backward, so a model that trains builds them
//! from primitive ops: a LayerNorm is then six broadcast passes forward and about fifteen
//! backward, each allocating a full tensor. On CPU f32 tensors these functions run one pass
//! forward and one pass backward (a custom op whose backward is itself one fused pass, parallel
//! over rows). Any other device or dtype takes the primitive-op path (device-generic and
//! differentiable), so the CUDA trainer never sees a CPU-only op. Gradients are checked against
//! PyTorch in `tests/fused_grad.rs`.
//!
//! The linear layer and the activations take the fused kernel only when a gradient is needed (the input is tracked):
//! their vectorised erf and exp differ from libm's by up to a few 1e-7, and inference keeps
//! candle's exact ops so codes and parity fixtures stay bit-stable.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use crate::activation::exp_in_place;
use crate::cpu::contiguous_f32 as f32_data;

/// Elements per parallel task: below about this much work per task rayon costs more than it gives.
const PAR_ELEMS: usize = 1 << 14;

/// Whether `t` is a CPU f32 tensor, the case these kernels compute directly.
pub(crate) fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Rows per parallel task for rows of `n` elements.
fn rows_per_task(n: usize) -> usize {
    (PAR_ELEMS / n.max(1)).max(1)
}

/// Runs `f(row_in, row_out)` over matching rows of `n`, in parallel when the data is large.
fn map_rows(x: &[f32], out: &mut [f32], n: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if x.len() < 2 * PAR_ELEMS {
        x.chunks(n)
            .zip(out.chunks_mut(n))
            .for_each(|(a, o)| f(a, o));
    } else {
        let c = rows_per_task(n) * n;
        x.par_chunks(c)
            .zip(out.par_chunks_mut(c))
            .for_each(|(a, o)| a.chunks(n).zip(o.chunks_mut(n)).for_each(|(a, o)| f(a, o)));
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax

/// Softmax over the last axis. Keys at `-inf` get exactly 0.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !cpu_f32(x) {
        // The max is a constant shift for stability; it carries no gradient.
        let m = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&m)?.exp()?;
        return e.broadcast_div(&e.sum_keepdim(D::Minus1)?);
    }
    x.contiguous()?.apply_op1(Softmax)
}

/// `out = softmax(x)` for one row (`out` may hold anything on entry).
fn softmax_row(x: &[f32], out: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v - m;
    }
    exp_in_place(out);
    // The vector exp clamps its input, so a masked (-inf) key would keep a tiny weight.
    for (o, &v) in out.iter_mut().zip(x) {
        if v == f32::NEG_INFINITY {
            *o = 0.0;
        }
    }
    let inv = 1.0 / out.iter().sum::<f32>();
    out.iter_mut().for_each(|o| *o *= inv);
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "vaak-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        if n > 0 {
            map_rows(x, &mut out, n, softmax_row);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `dx = y * (dy - sum(dy * y))` per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "vaak-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, self.name())?;
        let dy = f32_data(s2, l2, self.name())?;
        let n = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.len()];
        if n > 0 {
            // Rows of `y` and `dy` side by side: the pair goes in as one interleaved chunk.
            let c = rows_per_task(n) * n;
            let work = |(yc, (dc, oc)): (&[f32], (&[f32], &mut [f32]))| {
                for ((yr, dr), or) in yc.chunks(n).zip(dc.chunks(n)).zip(oc.chunks_mut(n)) {
                    let dot: f32 = yr.iter().zip(dr).map(|(a, b)| a * b).sum();
                    for ((o, &a), &b) in or.iter_mut().zip(yr).zip(dr) {
                        *o = a * (b - dot);
                    }
                }
            };
            if y.len() < 2 * PAR_ELEMS {
                work((y, (dy, &mut out)));
            } else {
                y.par_chunks(c)
                    .zip(dy.par_chunks(c).zip(out.par_chunks_mut(c)))
                    .for_each(work);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm

/// LayerNorm over the last axis with weight and bias `[d]`. Statistics are computed in f32
/// for half-precision inputs.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if cpu_f32(x) && cpu_f32(w) && cpu_f32(b) {
        return x.contiguous()?.apply_op3(w, b, NormOp { eps, rms: false });
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let xc = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// RMSNorm over the last axis with weight `[d]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if cpu_f32(x) && cpu_f32(w) {
        // The op takes three inputs; RMSNorm's "bias" is the weight again and gets no gradient.
        return x.contiguous()?.apply_op3(w, w, NormOp { eps, rms: true });
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    xf.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(w)
}

/// Mean (0 for RMSNorm) and `1 / sqrt(var + eps)` of one row.
fn norm_stats(x: &[f32], eps: f64, rms: bool) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = if rms {
        0.0
    } else {
        x.iter().map(|&v| v as f64).sum::<f64>() / n
    };
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

#[derive(Clone, Copy)]
struct NormOp {
    eps: f64,
    rms: bool,
}

fn check_norm_dims(op: &str, x: &Layout, w: &Layout) -> Result<usize> {
    let d = x.dims().last().copied().unwrap_or(0);
    if w.dims() != [d] {
        bail!(
            "{op}: weight {:?} for an input {:?} (expected [{d}])",
            w.dims(),
            x.dims()
        );
    }
    Ok(d)
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        if self.rms {
            "vaak-rms-norm"
        } else {
            "vaak-layer-norm"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = check_norm_dims(self.name(), l1, l2)?;
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let b = f32_data(s3, l3, self.name())?;
        let mut out = vec![0f32; x.len()];
        if d > 0 {
            let (eps, rms) = (self.eps, self.rms);
            map_rows(x, &mut out, d, |xr, or| {
                let (mean, rstd) = norm_stats(xr, eps, rms);
                if rms {
                    for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                        *o = v * rstd * g;
                    }
                } else {
                    for (((o, &v), &g), &c) in or.iter_mut().zip(xr).zip(w).zip(b) {
                        *o = (v - mean) * rstd * g + c;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d.max(1);
        // One pass gives dx and the weight (and bias) gradients, packed as extra rows.
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &NormBwd(*self))?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.get(rows)?;
        let db = if self.rms {
            None
        } else {
            Some(packed.get(rows + 1)?)
        };
        Ok((Some(dx), Some(dw), db))
    }
}

/// Backward of [`NormOp`]: `[rows + 2, d]` (`[rows + 1, d]` for RMSNorm) holding dx, then dw,
/// then db. With `xh = (x - mean) * rstd` and `g = dy * w`:
/// `dx = rstd * (g - mean(g) - xh * mean(g * xh))` (RMSNorm: without `mean(g)`),
/// `dw = sum over rows of dy * xh`, `db = sum over rows of dy`.
struct NormBwd(NormOp);

impl CustomOp3 for NormBwd {
    fn name(&self) -> &'static str {
        "vaak-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = check_norm_dims(self.name(), l1, l2)?;
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let dy = f32_data(s3, l3, self.name())?;
        if dy.len() != x.len() {
            bail!(
                "{}: gradient {:?} for an input {:?}",
                self.name(),
                l3.dims(),
                l1.dims()
            );
        }
        let NormOp { eps, rms } = self.0;
        let extra = if rms { 1 } else { 2 };
        let rows = x.len() / d.max(1);
        let mut out = vec![0f32; (rows + extra) * d];
        if d == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((rows + extra, d))));
        }
        let (dx, sums) = out.split_at_mut(rows * d);
        // Each task writes its rows of dx and returns its partial dw (then db) sums.
        let task = |xc: &[f32], dc: &[f32], oc: &mut [f32]| -> Vec<f32> {
            let mut acc = vec![0f32; extra * d];
            let mut g = vec![0f32; d];
            for ((xr, dr), or) in xc.chunks(d).zip(dc.chunks(d)).zip(oc.chunks_mut(d)) {
                let (mean, rstd) = norm_stats(xr, eps, rms);
                let (mut g_mean, mut gx_mean) = (0f32, 0f32);
                for (((gi, &dv), &wv), &xv) in g.iter_mut().zip(dr).zip(w).zip(xr) {
                    *gi = dv * wv;
                    g_mean += *gi;
                    gx_mean += *gi * (xv - mean) * rstd;
                }
                let inv_d = 1.0 / d as f32;
                let (g_mean, gx_mean) = (if rms { 0.0 } else { g_mean * inv_d }, gx_mean * inv_d);
                for (i, ((o, &gi), &xv)) in or.iter_mut().zip(&g).zip(xr).enumerate() {
                    let xh = (xv - mean) * rstd;
                    *o = rstd * (gi - g_mean - xh * gx_mean);
                    acc[i] += dr[i] * xh;
                    if !rms {
                        acc[d + i] += dr[i];
                    }
                }
            }
            acc
        };
        let c = rows_per_task(d) * d;
        let total = if x.len() < 2 * PAR_ELEMS {
            task(x, dy, dx)
        } else {
            x.par_chunks(c)
                .zip(dy.par_chunks(c).zip(dx.par_chunks_mut(c)))
                .map(|(xc, (dc, oc))| task(xc, dc, oc))
                .reduce(
                    || vec![0f32; extra * d],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(p, q)| *p += q);
                        a
                    },
                )
        };
        sums.copy_from_slice(&total);
        Ok((CpuStorage::F32(out), Shape::from((rows + extra, d))))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

/// Rotates `x: [B, H, T, head_dim]` by the angles whose `cos`, `sin` are `[T, head_dim / 2]`
/// (shared by every row) or `[B, T, head_dim / 2]`. `interleaved`: the rotated pairs are
/// `(x[2i], x[2i+1])` (GPT-J); otherwise `(x[i], x[i + head_dim/2])` (rotate-half, Llama).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (b, _, t, hd) = x.dims4()?;
    let h = hd / 2;
    if cpu_f32(x) && cpu_f32(cos) && cpu_f32(sin) {
        let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
        return x.contiguous()?.apply_op3(&cos, &sin, Rope { interleaved });
    }
    let (c, s) = match cos.rank() {
        2 => (cos.reshape((1, 1, t, h))?, sin.reshape((1, 1, t, h))?),
        _ => (cos.reshape((b, 1, t, h))?, sin.reshape((b, 1, t, h))?),
    };
    let rotate = |x1: &Tensor, x2: &Tensor| -> Result<(Tensor, Tensor)> {
        let y1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
        let y2 = (x1.broadcast_mul(&s)? + x2.broadcast_mul(&c)?)?;
        Ok((y1, y2))
    };
    if interleaved {
        let dims = x.dims().to_vec();
        let xr = x.reshape((dims[0], dims[1], t, h, 2))?;
        let x1 = xr.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let x2 = xr.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        let (y1, y2) = rotate(&x1, &x2)?;
        Tensor::stack(&[y1, y2], D::Minus1)?.reshape(dims)
    } else {
        let (y1, y2) = rotate(&x.narrow(D::Minus1, 0, h)?, &x.narrow(D::Minus1, h, h)?)?;
        Tensor::cat(&[y1, y2], D::Minus1)
    }
}

struct Rope {
    interleaved: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "vaak-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Ok(&[b, nh, t, hd]) = <&[usize; 4]>::try_from(l1.dims()) else {
            bail!(
                "{}: expected x [B, H, T, head_dim], got {:?}",
                self.name(),
                l1.dims()
            );
        };
        let h = hd / 2;
        let per_row = match l2.dims() {
            [tt, hh] if *tt == t && *hh == h => false,
            [bb, tt, hh] if *bb == b && *tt == t && *hh == h => true,
            other => bail!(
                "{}: cos/sin {other:?} for x {:?} (expected [{t}, {h}] or [{b}, {t}, {h}])",
                self.name(),
                l1.dims()
            ),
        };
        if hd % 2 != 0 || l3.dims() != l2.dims() {
            bail!(
                "{}: odd head_dim {hd} or sin {:?} unlike cos {:?}",
                self.name(),
                l3.dims(),
                l2.dims()
            );
        }
        let x = f32_data(s1, l1, self.name())?;
        let cos = f32_data(s2, l2, self.name())?;
        let sin = f32_data(s3, l3, self.name())?;
        let mut out = vec![0f32; x.len()];
        let interleaved = self.interleaved;
        // One task per (batch row, head): `t * hd` elements.
        let work = |(bh, (xc, oc)): (usize, (&[f32], &mut [f32]))| {
            let tab = if per_row { (bh / nh) * t * h } else { 0 };
            for (ti, (xr, or)) in xc.chunks(hd).zip(oc.chunks_mut(hd)).enumerate() {
                let c = &cos[tab + ti * h..tab + (ti + 1) * h];
                let s = &sin[tab + ti * h..tab + (ti + 1) * h];
                for i in 0..h {
                    let (a, bb) = if interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + h)
                    };
                    let (x1, x2) = (xr[a], xr[bb]);
                    or[a] = x1 * c[i] - x2 * s[i];
                    or[bb] = x1 * s[i] + x2 * c[i];
                }
            }
        };
        let block = (t * hd).max(1);
        if x.len() < 2 * PAR_ELEMS {
            x.chunks(block)
                .zip(out.chunks_mut(block))
                .enumerate()
                .for_each(work);
        } else {
            x.par_chunks(block)
                .zip(out.par_chunks_mut(block))
                .enumerate()
                .for_each(work);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A rotation's transpose is the rotation by the opposite angle.
        let dx = dy.contiguous()?.apply_op3_no_bwd(
            cos,
            &sin.neg()?,
            &Rope {
                interleaved: self.interleaved,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Per-row negative log-likelihood `[N]` of `targets: [N]` (u32) under `logits: [N, V]`,
/// computed in f32. Targets must be valid indices (masked rows may use any valid id).
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if v == 0 {
        bail!(
            "cross_entropy_rows: logits {:?} have no classes",
            logits.dims()
        );
    }
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        bail!(
            "cross_entropy_rows: targets {:?} {:?} for logits {:?} (expected [{n}] u32)",
            targets.dims(),
            targets.dtype(),
            logits.dims()
        );
    }
    let logits = logits.to_dtype(DType::F32)?;
    if logits.device().is_cpu() {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy { vocab: v });
    }
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &m)?;
    let picked = logits.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?;
    (lse - picked)?.squeeze(1)
}

struct CrossEntropy {
    vocab: usize,
}

fn u32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        bail!("{op}: expected u32 targets");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: targets are not contiguous"),
    }
}

fn check_targets(op: &str, t: &[u32], vocab: usize) -> Result<()> {
    if let Some(bad) = t.iter().find(|&&i| i as usize >= vocab) {
        bail!("{op}: target {bad} outside the vocabulary of {vocab}");
    }
    Ok(())
}

/// `log(sum(exp(row)))`, with `scratch` the row's length.
fn log_sum_exp(row: &[f32], scratch: &mut [f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (s, &v) in scratch.iter_mut().zip(row) {
        *s = v - m;
    }
    exp_in_place(scratch);
    m + scratch.iter().sum::<f32>().ln()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "vaak-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let t = u32_data(s2, l2, self.name())?;
        let v = self.vocab;
        check_targets(self.name(), t, v)?;
        let per = rows_per_task(v);
        let out: Vec<f32> = x
            .par_chunks(per * v)
            .zip(t.par_chunks(per))
            .flat_map_iter(|(xc, tc)| {
                let mut scratch = vec![0f32; v];
                xc.chunks(v)
                    .zip(tc)
                    .map(|(row, &ti)| log_sum_exp(row, &mut scratch) - row[ti as usize])
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(t.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = logits.apply_op3_no_bwd(
            targets,
            &dy.contiguous()?,
            &CrossEntropyBwd { vocab: self.vocab },
        )?;
        Ok((Some(dx), None))
    }
}

/// `dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dy[n]`.
struct CrossEntropyBwd {
    vocab: usize,
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "vaak-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let t = u32_data(s2, l2, self.name())?;
        let dy = f32_data(s3, l3, self.name())?;
        let v = self.vocab;
        if dy.len() != t.len() {
            bail!(
                "{}: {} gradients for {} rows",
                self.name(),
                dy.len(),
                t.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(v);
        x.par_chunks(per * v)
            .zip(out.par_chunks_mut(per * v))
            .zip(t.par_chunks(per).zip(dy.par_chunks(per)))
            .for_each(|((xc, oc), (tc, gc))| {
                for (((row, or), &ti), &g) in xc.chunks(v).zip(oc.chunks_mut(v)).zip(tc).zip(gc) {
                    softmax_row(row, or);
                    or[ti as usize] -= 1.0;
                    or.iter_mut().for_each(|o| *o *= g);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Activations

/// A pointwise activation with a fused backward.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// `x * Phi(x)`, the exact (erf) GELU.
    GeluErf,
    /// `x * sigmoid(x)`.
    Silu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x` for `x > 0`, else `alpha * (exp(x) - 1)`.
    Elu(f32),
}

/// The exact GELU `0.5 x (1 + erf(x / sqrt 2))` (one vectorised pass for CPU f32 inputs, with
/// a fused backward when tracked; candle's `gelu_erf` otherwise).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    activation(x, Act::GeluErf)
}

/// SiLU `x * sigmoid(x)` (one pass for CPU f32 inputs, with a fused backward when tracked).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    activation(x, Act::Silu)
}

/// Sigmoid `1 / (1 + exp(-x))` (one pass for CPU f32 inputs, with a fused backward when
/// tracked).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    activation(x, Act::Sigmoid)
}

/// ELU, `x` for `x > 0` and `alpha (exp(x) - 1)` below (one pass for CPU f32 inputs, with a
/// fused backward when tracked: candle's ELU is a scalar libm `expf` per element forward and
/// about ten passes backward, in every SEANet training step).
pub fn elu(x: &Tensor, alpha: f64) -> Result<Tensor> {
    activation(x, Act::Elu(alpha as f32))
}

fn activation(x: &Tensor, act: Act) -> Result<Tensor> {
    // Inference too: candle's CPU GELU calls libm's scalar `erff` per element (9% of a
    // batch-128 S2S decoder step).
    if cpu_f32(x) {
        return x.contiguous()?.apply_op1(ActOp(act));
    }
    match act {
        Act::GeluErf => x.gelu_erf(),
        Act::Silu => x.silu(),
        Act::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
        Act::Elu(a) => x.elu(a as f64),
    }
}

/// Elements per block of the activation loops (the `exp` scratch stays in L1).
const ACT_BLOCK: usize = 512;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `erf(u)` given `e = exp(-u^2)`: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7),
/// branch-free so the loop vectorises.
#[inline(always)]
fn erf_with_exp(u: f32, e: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = u.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let r = 1.0 - poly * e;
    r.copysign(u)
}

/// The activation (`dy = None`) or its input gradient `dy * f'(x)` over one block.
fn act_block(act: Act, x: &[f32], dy: Option<&[f32]>, out: &mut [f32]) {
    let mut e = [0f32; ACT_BLOCK];
    let e = &mut e[..x.len()];
    // The one exp each element needs: exp(-x^2/2) for GELU, exp(-x) for the sigmoids.
    match act {
        Act::GeluErf => e.iter_mut().zip(x).for_each(|(e, &v)| *e = -0.5 * v * v),
        Act::Silu | Act::Sigmoid => e.iter_mut().zip(x).for_each(|(e, &v)| *e = -v),
        // exp(min(x, 0)): the positive side needs none (and must not overflow).
        Act::Elu(_) => e.iter_mut().zip(x).for_each(|(e, &v)| *e = v.min(0.0)),
    }
    exp_in_place(e);
    match (act, dy) {
        (Act::GeluErf, None) => {
            for ((o, &v), &ev) in out.iter_mut().zip(x).zip(e.iter()) {
                *o = 0.5 * v * (1.0 + erf_with_exp(v * FRAC_1_SQRT_2, ev));
            }
        }
        (Act::GeluErf, Some(dy)) => {
            for (((o, &v), &ev), &g) in out.iter_mut().zip(x).zip(e.iter()).zip(dy) {
                let cdf = 0.5 * (1.0 + erf_with_exp(v * FRAC_1_SQRT_2, ev));
                *o = g * (cdf + v * INV_SQRT_2PI * ev);
            }
        }
        (Act::Silu, None) => {
            for ((o, &v), &ev) in out.iter_mut().zip(x).zip(e.iter()) {
                *o = v / (1.0 + ev);
            }
        }
        (Act::Silu, Some(dy)) => {
            for (((o, &v), &ev), &g) in out.iter_mut().zip(x).zip(e.iter()).zip(dy) {
                let s = 1.0 / (1.0 + ev);
                *o = g * s * (1.0 + v * (1.0 - s));
            }
        }
        (Act::Sigmoid, None) => {
            for (o, &ev) in out.iter_mut().zip(e.iter()) {
                *o = 1.0 / (1.0 + ev);
            }
        }
        (Act::Sigmoid, Some(dy)) => {
            for ((o, &ev), &g) in out.iter_mut().zip(e.iter()).zip(dy) {
                let s = 1.0 / (1.0 + ev);
                *o = g * s * (1.0 - s);
            }
        }
        (Act::Elu(a), None) => {
            for ((o, &v), &ev) in out.iter_mut().zip(x).zip(e.iter()) {
                *o = if v > 0.0 { v } else { a * (ev - 1.0) };
            }
        }
        (Act::Elu(a), Some(dy)) => {
            for (((o, &v), &ev), &g) in out.iter_mut().zip(x).zip(e.iter()).zip(dy) {
                *o = if v > 0.0 { g } else { g * a * ev };
            }
        }
    }
}

/// Runs [`act_block`] over `x` (and `dy`) in blocks, in parallel when the data is large.
fn act_map(act: Act, x: &[f32], dy: Option<&[f32]>, out: &mut [f32]) {
    let run = |xc: &[f32], dc: Option<&[f32]>, oc: &mut [f32]| {
        for (i, (xb, ob)) in xc
            .chunks(ACT_BLOCK)
            .zip(oc.chunks_mut(ACT_BLOCK))
            .enumerate()
        {
            let db = dc.map(|d| &d[i * ACT_BLOCK..i * ACT_BLOCK + xb.len()]);
            act_block(act, xb, db, ob);
        }
    };
    if x.len() < 2 * PAR_ELEMS {
        run(x, dy, out);
        return;
    }
    x.par_chunks(PAR_ELEMS)
        .zip(out.par_chunks_mut(PAR_ELEMS))
        .enumerate()
        .for_each(|(i, (xc, oc))| {
            let dc = dy.map(|d| &d[i * PAR_ELEMS..i * PAR_ELEMS + xc.len()]);
            run(xc, dc, oc)
        });
}

struct ActOp(Act);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        match self.0 {
            Act::GeluErf => "vaak-gelu-erf",
            Act::Silu => "vaak-silu",
            Act::Sigmoid => "vaak-sigmoid",
            Act::Elu(_) => "vaak-elu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        act_map(self.0, x, None, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&dy.contiguous()?, &ActBwd(self.0))?,
        ))
    }
}

/// `dx = dy * f'(x)` of [`ActOp`].
struct ActBwd(Act);

impl CustomOp2 for ActBwd {
    fn name(&self) -> &'static str {
        "vaak-activation-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let dy = f32_data(s2, l2, self.name())?;
        if dy.len() != x.len() {
            bail!(
                "{}: gradient {:?} for an input {:?}",
                self.name(),
                l2.dims(),
                l1.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        act_map(self.0, x, Some(dy), &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Per-channel bias

/// `y + bias` for `y: [B, C, T]` and `bias: [C]` (a conv's bias): one pass, and one node in
/// the graph whose backward passes `dy` through and sums it over batch and time for the bias.
/// candle's `broadcast_add` differentiates into a strided reduction over two axes of a
/// full-size gradient, in every conv of a training step. Other devices and dtypes go through
/// `broadcast_add`.
pub fn add_channel_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, c, _) = y.dims3()?;
    if bias.dims() != [c] {
        bail!(
            "add_channel_bias: bias {:?} for {c} channels of {:?}",
            bias.dims(),
            y.dims()
        );
    }
    if cpu_f32(y) && cpu_f32(bias) {
        return y.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias);
    }
    y.broadcast_add(&bias.reshape((1, c, 1))?)
}

struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "vaak-channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, self.name())?;
        let bias = f32_data(s2, l2, self.name())?;
        let (_, c, t) = l1.shape().dims3()?;
        let mut out = y.to_vec();
        let rows = rows_per_task(t);
        out.par_chunks_mut(rows * t.max(1))
            .enumerate()
            .for_each(|(i, part)| {
                for (r, row) in part.chunks_mut(t.max(1)).enumerate() {
                    let b = bias[(i * rows + r) % c];
                    row.iter_mut().for_each(|v| *v += b);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = dy.contiguous()?.apply_op1_no_bwd(&ChannelSum)?;
        Ok((Some(dy.clone()), Some(db)))
    }
}

/// `[B, C, T] -> [C]`: the sum over batch and time (f32 per row, f64 across rows).
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "vaak-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_data(s, l, self.name())?;
        let (b, c, t) = l.shape().dims3()?;
        let row_sums: Vec<f32> = if t == 0 {
            vec![0.0; b * c]
        } else {
            dy.par_chunks(t)
                .map(|row| {
                    let mut lanes = [0f32; 8];
                    let whole = row.len() / 8 * 8;
                    for chunk in row[..whole].chunks_exact(8) {
                        for (a, v) in lanes.iter_mut().zip(chunk) {
                            *a += v;
                        }
                    }
                    lanes.iter().sum::<f32>() + row[whole..].iter().sum::<f32>()
                })
                .collect()
        };
        let mut sums = vec![0f64; c];
        for (i, s) in row_sums.iter().enumerate() {
            sums[i % c] += *s as f64;
        }
        let out = sums.into_iter().map(|v| v as f32).collect();
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layer

/// `x W^T + b` for `x: [..., in]`, `W: [out, in]`: one node in the graph whose backward gives
/// `dx = dy W`, `dW = dy^T x` and `db = sum(dy)` directly. candle's `Linear` is six nodes
/// (reshapes, a transpose, the matmul, a broadcast and an add), and every node's backward adds
/// into a fresh zero tensor: about eight extra full passes per layer. The fused op runs when a
/// gradient is tracked on CPU f32 tensors; everything else goes through `candle_nn::Linear`.
///
/// In CPU f32 inference with several threads and up to [`SPLIT_MAX_ROWS`] rows (a batched
/// decoder step) the same op runs one single-threaded `gemm` per thread, each on its own
/// slice of the output features: a multi-threaded `gemm` packs the whole weight on the calling
/// thread first, which at such row counts held a 2-thread batch-32 S2S step near the speed of
/// one thread.
pub fn linear(l: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    linear_in_parts(l, x, crate::cpu::threads())
}

/// [`linear`] with inference split into `threads` parts (when it splits at all).
fn linear_in_parts(l: &candle_nn::Linear, x: &Tensor, threads: usize) -> Result<Tensor> {
    use candle_nn::Module;
    let w = l.weight();
    let tracked = x.track_op() || w.track_op() || l.bias().is_some_and(|b| b.track_op());
    let all_f32 = cpu_f32(x) && cpu_f32(w) && l.bias().is_none_or(cpu_f32);
    if !all_f32 || w.rank() != 2 || x.dim(D::Minus1)? != w.dim(1)? {
        return l.forward(x);
    }
    let rows = x.elem_count() / w.dim(1)?.max(1);
    let split = !tracked && rows <= SPLIT_MAX_ROWS && threads > 1;
    if !(tracked || split) {
        return l.forward(x);
    }
    let w = w.contiguous()?;
    let x = x.contiguous()?;
    let bias = l.bias().map(|b| b.contiguous()).transpose()?;
    let op = LinearOp {
        bias: bias.is_some(),
        parts: if split { threads } else { 1 },
    };
    // Without a bias the third input is the weight again and gets no gradient.
    let b = bias.as_ref().unwrap_or(&w);
    if tracked {
        x.apply_op3(&w, b, op)
    } else {
        x.apply_op3_no_bwd(&w, b, &op)
    }
}

/// Rows up to which CPU inference splits a linear layer's output features over the threads.
pub const SPLIT_MAX_ROWS: usize = 256;

struct LinearOp {
    bias: bool,
    /// 1: one `gemm` with candle's threads; more: that many single-threaded `gemm`s on the
    /// pool, each over its own output features.
    parts: usize,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "vaak-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Ok(&[o, i]) = <&[usize; 2]>::try_from(l2.dims()) else {
            bail!("{}: weight {:?} is not [out, in]", self.name(), l2.dims());
        };
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        if l1.dims().last() != Some(&i) || (self.bias && l3.dims() != [o]) {
            bail!(
                "{}: input {:?}, weight {:?}, bias {:?}",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let n = x.len() / i.max(1);
        let mut out = vec![0f32; n * o];
        if self.bias {
            let b = f32_data(s3, l3, self.name())?;
            out.chunks_mut(o.max(1)).for_each(|r| r.copy_from_slice(b));
        }
        if n > 0 && o > 0 && i > 0 {
            // Slices of whole 16-column micro-tiles, one per part.
            let slice = o.div_ceil(self.parts).next_multiple_of(16).min(o);
            let dst = crate::cpu::OutPtr(out.as_mut_ptr());
            let part = |o0: usize, par: gemm::Parallelism| {
                let oc = slice.min(o - o0);
                // SAFETY: `out` is `[n, o]` row-major, `x` `[n, i]` row-major and `w` `[o, i]`
                // row-major, its rows `o0 .. o0 + oc` read as their transpose `[i, oc]`
                // (column stride i, row stride 1), written to columns `o0 .. o0 + oc` of
                // `out`, which no other part writes; all sized from these dimensions above.
                unsafe {
                    crate::cpu::gemm(
                        (n, oc, i),
                        (dst.at(o0), o as isize, 1),
                        self.bias,
                        (x.as_ptr(), i as isize, 1),
                        (w.as_ptr().add(o0 * i), 1, i as isize),
                        par,
                    );
                }
            };
            if slice < o {
                (0..o.div_ceil(slice))
                    .into_par_iter()
                    .for_each(|p| part(p * slice, gemm::Parallelism::None));
            } else {
                part(0, crate::cpu::parallelism());
            }
        }
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = o;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (o, i) = w.dims2()?;
        let n = x.elem_count() / i.max(1);
        let dy = dy.contiguous()?.reshape((n, o))?;
        let dx = dy.matmul(&w.detach())?.reshape(x.shape())?;
        let dw = dy.t()?.matmul(&x.detach().reshape((n, i))?)?;
        let db = if self.bias { Some(dy.sum(0)?) } else { None };
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The split inference path (forced to 3 parts, whatever this machine's thread count)
    /// equals candle's `Linear` to float rounding, for output widths that are and are not
    /// multiples of the 16-column slices, with and without a bias, up to the row limit.
    #[test]
    fn split_inference_linear_equals_candle_linear() -> Result<()> {
        use candle_nn::Module;
        let dev = Device::Cpu;
        for (rows, i, o, bias) in [
            (9, 64, 37, true),
            (32, 256, 1000, false),
            (SPLIT_MAX_ROWS, 48, 100, true),
            (5, 16, 16, true),
        ] {
            let w = Tensor::randn(0f32, 1.0, (o, i), &dev)?;
            let b = bias
                .then(|| Tensor::randn(0f32, 1.0, o, &dev))
                .transpose()?;
            let l = candle_nn::Linear::new(w, b);
            let x = Tensor::randn(0f32, 1.0, (1, rows, i), &dev)?;
            let want = l.forward(&x)?;
            for parts in [1, 2, 3] {
                let got = linear_in_parts(&l, &x, parts)?;
                assert_eq!(got.dims(), want.dims());
                let err = (&got - &want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(err < 1e-4, "rows {rows}, {i} -> {o}, {parts} parts: {err}");
            }
        }
        Ok(())
    }
}
