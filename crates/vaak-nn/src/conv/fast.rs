//! The inference conv path: `conv1d` and `conv_transpose1d` (grouped, dilated, strided,
//! padded, with a fused bias) as one im2col / col2im pass plus one `gemm` per batch item and
//! group, in the `[batch, channels, time]` layout the models use, with no layout copies.
//!
//! # Why not candle's CPU conv
//!
//! candle 0.11.1's `conv1d` builds its im2col rows time-major (`[L_out, C * k]`, one element
//! at a time), multiplies them by the transposed kernel and then copies the `[L_out, C_out]`
//! product back to `[C_out, L_out]` with a strided copy; a grouped conv runs that per group
//! and concatenates; and the bias is a separate broadcast add. Here the im2col is channel-major
//! (`[C * k, L_out]`, so for stride 1 every row is one `memcpy` of a shifted input window),
//! the product `W [C_out, C * k] x cols` already is the `[C_out, L_out]` output, groups write
//! into their own rows of one output buffer, and the bias is the initial value of the output
//! that the `gemm` accumulates into. A 1x1 conv (stride 1, no padding) multiplies the input
//! directly. The transpose is one `gemm` (`W^T [C_out * k, C_in] x x [C_in, T]`) and one
//! overlap-add pass into the bias-filled output.
//!
//! # Lengths: batching without padding effects
//!
//! Both functions take optional per-item input lengths: input samples at or past
//! `lengths[b]` read as zeros, exactly what a one-item call on the first `lengths[b]` samples
//! would see. So a batch of different-length clips, padded with anything, gives each clip the
//! output it gets alone (on the outputs that clip alone would have).
//!
//! # When it applies
//!
//! On the CPU with f32 tensors and no autograd tracking. Tracked tensors go through the
//! differentiable formulations ([`conv1d_differentiable`](super::conv1d_differentiable),
//! [`conv_transpose1d_differentiable`](super::conv_transpose1d_differentiable)), untracked
//! ones on another device or dtype through candle's native `conv1d` or the differentiable
//! transpose; there the lengths are applied as a mask. So callers need one call for inference
//! and training.

use candle_core::{bail, DType, Layout, Result, Storage, Tensor};
use gemm::Parallelism;

use super::{conv1d_differentiable, conv_transpose1d_differentiable};

/// Options of [`conv1d_inference`]: PyTorch's, except that the zero padding may differ between
/// the two ends (a causal conv pads only on the left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dOpts {
    /// Zeros before the first sample.
    pub pad_left: usize,
    /// Zeros after the last sample.
    pub pad_right: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Conv1dOpts {
    /// Symmetric `padding`, as `torch.nn.functional.conv1d`.
    pub fn new(padding: usize, stride: usize, dilation: usize, groups: usize) -> Self {
        Self {
            pad_left: padding,
            pad_right: padding,
            stride,
            dilation,
            groups,
        }
    }
}

/// Options of [`conv_transpose1d_inference`], as `torch.nn.functional.conv_transpose1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose1dOpts {
    pub stride: usize,
    pub padding: usize,
    pub output_padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// The thread count candle's CPU kernels use, as a `gemm` parallelism.
fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// The f32 data of a CPU tensor with its layout, if that is what `t` is.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => f(v, layout),
        _ => bail!("fast conv: expected a CPU f32 tensor"),
    }
}

/// Whether the fast path applies: CPU, f32 and nothing tracked by autograd.
fn fast_ok(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    let all = [Some(x), Some(w), bias];
    all.iter()
        .flatten()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// Checks `lengths` against the batch.
fn check_lengths(f: &str, lengths: Option<&[usize]>, b: usize) -> Result<()> {
    if let Some(l) = lengths {
        if l.len() != b {
            bail!("{f}: {} lengths for a batch of {b}", l.len());
        }
    }
    Ok(())
}

/// Zeros every input sample at or past its item's length: the fallbacks' form of `lengths`.
fn mask_lengths(x: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
    let Some(lengths) = lengths else {
        return Ok(x.clone());
    };
    let (b, _, t) = x.dims3()?;
    let mut m = vec![0f32; b * t];
    for (i, &l) in lengths.iter().enumerate() {
        m[i * t..i * t + l.min(t)].fill(1.0);
    }
    let m = Tensor::from_vec(m, (b, 1, t), x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&m)
}

/// A `[out]` bias as a plain vector (the output's initial value), or `None`.
fn bias_vec(bias: Option<&Tensor>, out: usize, f: &str) -> Result<Option<Vec<f32>>> {
    let Some(b) = bias else { return Ok(None) };
    if b.dims() != [out] {
        bail!("{f}: bias has shape {:?}, expected [{out}]", b.dims());
    }
    Ok(Some(b.to_vec1::<f32>()?))
}

/// A 3-D weight's contiguous f32 data (copied only when the weight is a strided view).
fn weight_vec(w: &Tensor) -> Result<Tensor> {
    if w.is_contiguous() {
        Ok(w.clone())
    } else {
        w.contiguous()
    }
}

/// `conv1d` for inference, `x` `[B, C_in, L]`, `w` `[C_out, C_in / groups, k]`, optional
/// `bias` `[C_out]` and per-item valid `lengths` (see the [module docs](self)); the result is
/// `[B, C_out, (L + pad_left + pad_right - dilation * (k - 1) - 1) / stride + 1]`,
/// contiguous. Equals [`conv1d_differentiable`] plus the bias to float rounding.
pub fn conv1d_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv1dOpts,
    lengths: Option<&[usize]>,
) -> Result<Tensor> {
    const F: &str = "conv1d_inference";
    let Conv1dOpts {
        pad_left,
        pad_right,
        stride,
        dilation,
        groups,
    } = opts;
    if stride == 0 || dilation == 0 || groups == 0 {
        bail!("{F}: stride ({stride}), dilation ({dilation}) and groups ({groups}) must be >= 1");
    }
    if x.rank() != 3 || w.rank() != 3 {
        bail!(
            "{F}: input must be [batch, in, time] and weight [out, in/groups, kernel], got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    }
    let (b, c_in, l) = x.dims3()?;
    let (c_out, c_in_g, k) = w.dims3()?;
    if c_in_g * groups != c_in || c_out % groups != 0 || k == 0 {
        bail!(
            "{F}: weight {:?} does not fit input {:?} with {groups} groups",
            w.dims(),
            x.dims()
        );
    }
    check_lengths(F, lengths, b)?;
    let k_eff = dilation * (k - 1) + 1;
    let padded = l + pad_left + pad_right;
    if padded < k_eff {
        bail!("{F}: input of length {l} (+ {pad_left} + {pad_right} padding) is shorter than the kernel span {k_eff}");
    }
    let l_out = (padded - k_eff) / stride + 1;
    if !fast_ok(x, w, bias) {
        let x = mask_lengths(x, lengths)?;
        let x = x.pad_with_zeros(2, pad_left, pad_right)?;
        let tracked = [Some(&x), Some(w), bias]
            .iter()
            .flatten()
            .any(|t| t.track_op());
        let y = if tracked {
            conv1d_differentiable(&x, w, 0, stride, dilation, groups)?
        } else {
            // Untracked on another device or dtype: candle's native kernel (its CPU one
            // needs a contiguous kernel, see the module docs of `conv`).
            x.conv1d(&w.contiguous()?, 0, stride, dilation, groups)?
        };
        return match bias {
            Some(bv) => y.broadcast_add(&bv.reshape((1, c_out, 1))?),
            None => Ok(y),
        };
    }
    let bias = bias_vec(bias, c_out, F)?;
    let w = weight_vec(w)?;
    let c_out_g = c_out / groups;
    let width = c_in_g * k;
    let mut out = vec![0f32; b * c_out * l_out];
    if let Some(bv) = &bias {
        for (r, row) in out.chunks_mut(l_out).enumerate() {
            row.fill(bv[r % c_out]);
        }
    }
    let par = parallelism();
    with_cpu_f32(&w, |wv, wl| {
        let wv = &wv[wl.start_offset()..];
        with_cpu_f32(x, |xv, xl| {
            let st = xl.stride();
            let (s0, s1, s2) = (st[0], st[1], st[2]);
            let xv = &xv[xl.start_offset()..];
            // A 1x1 conv over unpadded, whole rows multiplies the input as it lies.
            let direct =
                k == 1 && stride == 1 && pad_left == 0 && pad_right == 0 && lengths.is_none();
            // Output columns per im2col block: the block stays cache-sized however long the
            // input (at least MIN_BLOCK_COLS columns, so the gemm stays wide).
            let threads = candle_core::utils::get_num_threads().max(1);
            let block = if direct {
                l_out
            } else {
                (BLOCK_ELEMS * threads / width)
                    .max(MIN_BLOCK_COLS)
                    .min(l_out)
            };
            let mut cols = if direct {
                Vec::new()
            } else {
                vec![0f32; width * block]
            };
            for bi in 0..b {
                let valid = lengths.map_or(l, |ls| ls[bi].min(l));
                for g in 0..groups {
                    let xg = &xv[bi * s0 + g * c_in_g * s1..];
                    let dst = &mut out[(bi * c_out + g * c_out_g) * l_out..];
                    let lhs = &wv[g * c_out_g * width..];
                    for t_start in (0..l_out).step_by(block) {
                        let n = block.min(l_out - t_start);
                        let (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize) = if direct {
                            (xg.as_ptr(), s1 as isize, s2 as isize)
                        } else {
                            im2col(
                                &mut cols[..width * n],
                                xg,
                                (s1, s2),
                                Geom {
                                    c: c_in_g,
                                    k,
                                    stride,
                                    dilation,
                                    pad_left,
                                    valid,
                                    t_start,
                                    n,
                                },
                            );
                            (cols.as_ptr(), n as isize, 1)
                        };
                        // SAFETY: dst holds c_out_g rows of l_out from which columns
                        // t_start..t_start + n are written; lhs c_out_g rows of `width`; rhs
                        // `width` rows of n columns at the given strides, all inside their
                        // buffers (checked shapes above).
                        unsafe {
                            gemm::gemm(
                                c_out_g,
                                n,
                                width,
                                dst.as_mut_ptr().add(t_start),
                                1,
                                l_out as isize,
                                bias.is_some(),
                                lhs.as_ptr(),
                                1,
                                width as isize,
                                rhs,
                                rhs_cs,
                                rhs_rs,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                par,
                            );
                        }
                    }
                }
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (b, c_out, l_out), x.device())
}

/// im2col blocks hold about this many floats per thread (cache-sized: 512 KiB).
const BLOCK_ELEMS: usize = 1 << 17;
/// The fewest output columns per im2col block.
const MIN_BLOCK_COLS: usize = 128;

/// The sizes of one channel-major unfold of output columns `t_start .. t_start + n`.
#[derive(Clone, Copy, Debug)]
struct Geom {
    c: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad_left: usize,
    /// Input samples that are read; the rest (and the padding) read as zero.
    valid: usize,
    t_start: usize,
    n: usize,
}

/// Fills `cols` `[c * k, n]`: row `(ci, j)`, column `t` is
/// `x[ci, (t_start + t) * stride + j * dilation - pad_left]`, zero outside `0..valid`. `x` is
/// addressed by `(channel stride, time stride)`.
fn im2col(cols: &mut [f32], x: &[f32], (sc, st): (usize, usize), g: Geom) {
    let Geom {
        c,
        k,
        stride,
        dilation,
        pad_left,
        valid,
        t_start,
        n,
    } = g;
    for ci in 0..c {
        let src = &x[ci * sc..];
        for j in 0..k {
            let row = &mut cols[(ci * k + j) * n..(ci * k + j + 1) * n];
            // Input position of output column t: t * stride + off - pad_left.
            let off = j * dilation;
            // First output column that reads at or after sample 0, and the end of those that
            // read before `valid`; then the same range within this block.
            let g0 = pad_left.saturating_sub(off).div_ceil(stride);
            let g1 = if valid + pad_left > off {
                (valid + pad_left - off).div_ceil(stride)
            } else {
                0
            };
            let t0 = g0.saturating_sub(t_start).min(n);
            let t1 = g1.saturating_sub(t_start).min(n).max(t0);
            row[..t0].fill(0.0);
            row[t1..].fill(0.0);
            if t1 > t0 {
                let p0 = (t_start + t0) * stride + off - pad_left;
                let dst = &mut row[t0..t1];
                if stride == 1 && st == 1 {
                    dst.copy_from_slice(&src[p0..p0 + (t1 - t0)]);
                } else {
                    let step = stride * st;
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = src[(p0 * st) + i * step];
                    }
                }
            }
        }
    }
}

/// `conv_transpose1d` for inference, `x` `[B, C_in, T]`, `w` `[C_in, C_out / groups, k]`,
/// optional `bias` `[C_out]` and per-item valid input `lengths` (frames past them read as
/// zero); the result is `[B, C_out, (T - 1) * stride - 2 * padding + dilation * (k - 1) +
/// output_padding + 1]`, contiguous. Equals [`conv_transpose1d_differentiable`] plus the bias
/// to float rounding.
pub fn conv_transpose1d_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    opts: ConvTranspose1dOpts,
    lengths: Option<&[usize]>,
) -> Result<Tensor> {
    const F: &str = "conv_transpose1d_inference";
    let ConvTranspose1dOpts {
        stride,
        padding,
        output_padding,
        dilation,
        groups,
    } = opts;
    if stride == 0 || dilation == 0 || groups == 0 {
        bail!("{F}: stride ({stride}), dilation ({dilation}) and groups ({groups}) must be >= 1");
    }
    if x.rank() != 3 || w.rank() != 3 {
        bail!(
            "{F}: input must be [batch, in, time] and weight [in, out/groups, kernel], got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    }
    let (b, c_in, t) = x.dims3()?;
    let (w_in, c_out_g, k) = w.dims3()?;
    if w_in != c_in || c_in % groups != 0 || k == 0 || c_out_g == 0 || t == 0 {
        bail!(
            "{F}: weight {:?} does not fit input {:?} with {groups} groups",
            w.dims(),
            x.dims()
        );
    }
    check_lengths(F, lengths, b)?;
    let c_out = c_out_g * groups;
    let k_eff = dilation * (k - 1) + 1;
    let full = (t - 1) * stride + k_eff + output_padding;
    if full <= 2 * padding {
        bail!("{F}: padding {padding} leaves no output for T = {t}");
    }
    let l_out = full - 2 * padding;
    if !fast_ok(x, w, bias) {
        let x = mask_lengths(x, lengths)?;
        let y = conv_transpose1d_differentiable(
            &x,
            w,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        )?;
        return match bias {
            Some(bv) => y.broadcast_add(&bv.reshape((1, c_out, 1))?),
            None => Ok(y),
        };
    }
    let bias = bias_vec(bias, c_out, F)?;
    let w = weight_vec(w)?;
    let c_in_g = c_in / groups;
    let rows = c_out_g * k;
    let mut out = vec![0f32; b * c_out * l_out];
    if let Some(bv) = &bias {
        for (r, row) in out.chunks_mut(l_out).enumerate() {
            row.fill(bv[r % c_out]);
        }
    }
    let par = parallelism();
    with_cpu_f32(&w, |wv, wl| {
        let wv = &wv[wl.start_offset()..];
        with_cpu_f32(x, |xv, xl| {
            let st = xl.stride();
            let (s0, s1, s2) = (st[0], st[1], st[2]);
            let xv = &xv[xl.start_offset()..];
            // Input frames per gemm block, so the block's columns stay cache-sized.
            let threads = candle_core::utils::get_num_threads().max(1);
            let block = (BLOCK_ELEMS * threads / rows).max(MIN_BLOCK_COLS).min(t);
            let mut cols = vec![0f32; rows * block];
            for bi in 0..b {
                // Frames past the item's length contribute nothing.
                let tv = lengths.map_or(t, |ls| ls[bi].min(t));
                for g in 0..groups {
                    let xg = &xv[bi * s0 + g * c_in_g * s1..];
                    let lhs = &wv[g * c_in_g * rows..];
                    let dst = &mut out[(bi * c_out + g * c_out_g) * l_out..];
                    for t_start in (0..tv).step_by(block) {
                        let n = block.min(tv - t_start);
                        // cols[(o, j), t] = sum_c w[c, o, j] x[c, t_start + t]: lhs row (o, j)
                        // is at o * k + j (stride 1), its column c at c * rows.
                        // SAFETY: cols holds rows x n; lhs c_in_g blocks of `rows`; rhs c_in_g
                        // rows of n samples from t_start at its strides.
                        unsafe {
                            gemm::gemm(
                                rows,
                                n,
                                c_in_g,
                                cols.as_mut_ptr(),
                                1,
                                n as isize,
                                false,
                                lhs.as_ptr(),
                                rows as isize,
                                1,
                                xg.as_ptr().add(t_start * s2),
                                s2 as isize,
                                s1 as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                par,
                            );
                        }
                        for o in 0..c_out_g {
                            let y = &mut dst[o * l_out..(o + 1) * l_out];
                            for j in 0..k {
                                let src = &cols[(o * k + j) * n..(o * k + j + 1) * n];
                                let off = t_start * stride + j * dilation;
                                overlap_add(y, src, off, stride, padding);
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (b, c_out, l_out), x.device())
}

/// `y[t * stride + off - padding] += src[t]` for every `t` that lands inside `y`.
fn overlap_add(y: &mut [f32], src: &[f32], off: usize, stride: usize, padding: usize) {
    let n = y.len();
    let t0 = padding.saturating_sub(off).div_ceil(stride);
    for (t, v) in src.iter().enumerate().skip(t0) {
        let p = t * stride + off - padding;
        if p >= n {
            break;
        }
        y[p] += v;
    }
}

/// `leaky_relu(x, slope)` (`max(x, 0) + slope * min(x, 0)`) in one pass over a CPU f32
/// tensor; other tensors, or tracked ones, go through candle's composed op.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()) {
        return candle_nn::ops::leaky_relu(x, slope);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let s = slope as f32;
    let out = with_cpu_f32(&x, |v, l| {
        let Some((a, e)) = l.contiguous_offsets() else {
            bail!("leaky_relu: input is not contiguous");
        };
        let src = &v[a..e];
        let mut out = vec![0f32; src.len()];
        // candle's formula, so the values are the same bits: max(x, 0) + min(x, 0) * slope.
        for (o, &v) in out.iter_mut().zip(src) {
            *o = v.max(0.0) + v.min(0.0) * s;
        }
        Ok(out)
    })?;
    Tensor::from_vec(out, x.shape(), x.device())
}
