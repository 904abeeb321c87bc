//! The inference conv path: `conv1d` and `conv_transpose1d` (grouped, dilated, strided,
//! padded, with a fused bias) as cache-sized im2col / col2im blocks, each with one `gemm`, in
//! the `[batch, channels, time]` layout the models use, with no layout copies.
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
//! directly. The transpose is a `gemm` (`W^T [C_out * k, C_in] x x [C_in, T]`) and an
//! overlap-add into the bias-filled output.
//!
//! # Threads
//!
//! The work is cut into tasks of (item, group, block of output columns): each unfolds its own
//! input columns (zeros outside the item's valid samples) into a per-thread scratch buffer
//! that stays in cache (straight from the input, or through a copied window when the input
//! activation is an ELU, too costly to run once per tap), and runs a single-threaded `gemm`
//! into its own columns of the output. The tasks run on the rayon pool with candle's thread
//! count, so the copies scale with the threads as well as the multiply (with a `gemm` per
//! call, only the multiply did). A call with fewer tasks than threads runs them in turn with
//! a multi-threaded `gemm`. The
//! transpose's tasks own blocks of output samples and recompute the few input frames whose
//! taps straddle two blocks, so no two tasks add into the same sample.
//!
//! # Fusion
//!
//! [`conv1d_fused`] also applies an activation to the input while unfolding it (each
//! has `act(0) = 0`, so padding stays zero) and adds a residual as part of the output's
//! initial value: HiFi-GAN's `x + conv(lrelu(conv(lrelu(x))))` costs the two convs and
//! nothing else. [`elu`] and [`leaky_relu`] are single parallel passes for what is not fused.
//!
//! # Winograd
//!
//! A caller whose output tolerates a few more float roundings (a vocoder making audio, not a
//! codec whose output is quantized) sets [`Fused::winograd`]: wide stride-1 convs then run
//! Winograd's F(4, 3) ([`super::winograd`]), six gemms over transformed tiles that do 6 / 4 *
//! ceil(k / 3) multiply-adds per output and input channel instead of `k` (11 -> 6 for
//! HiFi-GAN's widest kernel), with the same fusions and lengths.
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

use candle_core::{bail, DType, Layout, Result, Tensor};
use gemm::Parallelism;

use super::{conv1d_differentiable, conv_transpose1d_differentiable};
use crate::cpu::{
    is_untracked_cpu_f32, parallelism, storage_f32, threads, with_contiguous_f32, OutPtr,
};
use crate::simd::{HalfWeight, WeightData};

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

/// The f32 data of a CPU tensor with its layout, if that is what `t` is.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    f(storage_f32(&storage, "fast conv")?, layout)
}

/// Whether the fast path applies: CPU, f32 and nothing tracked by autograd.
fn fast_ok(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    let all = [Some(x), Some(w), bias];
    all.iter().flatten().all(|t| is_untracked_cpu_f32(t))
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

/// Rejects a half copy whose size differs from the weight's.
fn check_step_weight(f: &str, half: Option<&HalfWeight>, w: &Tensor) -> Result<()> {
    match half {
        Some(h) if h.len() != w.elem_count() => bail!(
            "{f}: the step weight holds {} values, the weight {:?} {}",
            h.len(),
            w.dims(),
            w.elem_count()
        ),
        _ => Ok(()),
    }
}

/// A 3-D weight's contiguous f32 data (copied only when the weight is a strided view).
fn weight_vec(w: &Tensor) -> Result<Tensor> {
    if w.is_contiguous() {
        Ok(w.clone())
    } else {
        w.contiguous()
    }
}

/// An activation applied to the conv's input as it is read, so that `conv(act(x))` needs no
/// pass of its own. Each has `act(0) = 0`: the zero padding and the samples past `lengths`
/// stay zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum InputAct {
    #[default]
    None,
    /// `leaky_relu` with this slope (candle's formula, `max(x, 0) + min(x, 0) * slope`).
    LeakyRelu(f32),
    /// `elu` with this alpha (candle's formula: `x` when its sign is positive, else
    /// `(exp(x) - 1) * alpha`).
    Elu(f32),
}

impl InputAct {
    /// The activation over a slice, in place (ELU with the vectorised `exp`).
    pub(super) fn apply_in_place(self, v: &mut [f32]) {
        match self {
            Self::None => {}
            Self::LeakyRelu(s) => crate::activation::leaky_relu_in_place(v, s),
            Self::Elu(a) => crate::activation::elu_in_place(v, a),
        }
    }

    /// The activation as candle ops (the fallback paths).
    fn apply_tensor(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::None => Ok(x.clone()),
            Self::LeakyRelu(s) => leaky_relu(x, s as f64),
            Self::Elu(a) => elu(x, a as f64),
        }
    }
}

/// What [`conv1d_fused`] does besides the conv: an activation of its input and a residual
/// added to its output, each fused into the pass that already touches the data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fused<'a> {
    /// Applied to every input sample as the conv reads it.
    pub input_act: InputAct,
    /// Added to the output (`[B, C_out, L_out]`, any layout): `conv(..) + residual`.
    pub residual: Option<&'a Tensor>,
    /// A half-precision copy of the weight (same layout) that the few-column path (a
    /// streaming step, at most [`FEW_CONV_COLS`] output columns) reads instead of the f32
    /// weight; other paths ignore it. See [`StepWeights`](crate::simd::StepWeights).
    pub step_weight: Option<&'a HalfWeight>,
    /// Allow Winograd's F(4, 3) where it applies (stride 1, one group, at least 3 taps and 32
    /// channels each side; see [`super::winograd`]): up to 1.8x fewer multiply-adds, with
    /// outputs a few float roundings further from the direct conv's.
    pub winograd: bool,
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
    conv1d_fused(x, w, bias, opts, lengths, Fused::default())
}

/// [`conv1d_inference`] of `fused.input_act(x)`, plus `fused.residual`: on the fast path the
/// activation is applied while the input window is copied and the residual is the initial
/// value of the output (with the bias) that the `gemm` accumulates into.
pub fn conv1d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv1dOpts,
    lengths: Option<&[usize]>,
    fused: Fused<'_>,
) -> Result<Tensor> {
    const F: &str = "conv1d_inference";
    let Conv1dOpts {
        pad_left,
        pad_right,
        stride,
        dilation,
        groups,
    } = opts;
    super::check_conv_args(
        F,
        x,
        w,
        "[out, in/groups, kernel]",
        (stride, dilation, groups),
    )?;
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
    if let Some(r) = fused.residual {
        if r.dims() != [b, c_out, l_out] {
            bail!(
                "{F}: residual has shape {:?}, expected [{b}, {c_out}, {l_out}]",
                r.dims()
            );
        }
    }
    check_step_weight(F, fused.step_weight, w)?;
    let res_ok = fused.residual.is_none_or(|r| fast_ok(r, w, None));
    if !fast_ok(x, w, bias) || !res_ok {
        // act(0) = 0, so masking before the activation is masking after it.
        let x = fused.input_act.apply_tensor(&mask_lengths(x, lengths)?)?;
        let tracked = [Some(&x), Some(w), bias]
            .iter()
            .flatten()
            .any(|t| t.track_op());
        let train_cpu = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
        let y = if tracked && train_cpu && groups == 1 {
            // The padding read in place by the one-node training conv (no padded copy).
            let pads = (pad_left, pad_right);
            super::train::conv1d_train_cpu_f32(&x, w, pads, stride, dilation)?
        } else if tracked {
            let x = x.pad_with_zeros(2, pad_left, pad_right)?;
            conv1d_differentiable(&x, w, 0, stride, dilation, groups)?
        } else {
            let x = x.pad_with_zeros(2, pad_left, pad_right)?;
            // Untracked on another device or dtype: candle's native kernel (its CPU one
            // needs a contiguous kernel, see the module docs of `conv`).
            x.conv1d(&w.contiguous()?, 0, stride, dilation, groups)?
        };
        let y = match bias {
            Some(bv) => crate::fused::add_channel_bias(&y, bv)?,
            None => y,
        };
        return match fused.residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let bias = bias_vec(bias, c_out, F)?;
    let w = weight_vec(w)?;
    let geom = ConvGeom {
        b,
        c_in_g,
        c_out,
        c_out_g: c_out / groups,
        groups,
        l,
        l_out,
        k,
        stride,
        dilation,
        pad_left,
        act: fused.input_act,
        winograd: fused.winograd,
    };
    // Not zero-filled here: every task writes its own block's start value (bias, residual, or
    // the gemm's overwrite) in parallel, where a zero-fill of the whole output ran on the
    // calling thread alone (at two threads, OpenVoice's HiFi-GAN outputs).
    let len = b * c_out * l_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    with_cpu_f32(&w, |wv, wl| {
        let wv = &wv[wl.start_offset()..];
        with_cpu_f32(x, |xv, xl| {
            let xs = Strided::new(xv, xl);
            match fused.residual {
                Some(r) => with_cpu_f32(r, |rv, rl| {
                    let rs = Strided::new(rv, rl);
                    let res = Some(rs);
                    let (b, half) = (bias.as_deref(), fused.step_weight);
                    conv1d_blocks(&geom, wv, half, xs, b, res, lengths, dst);
                    Ok(())
                }),
                None => {
                    let (b, half) = (bias.as_deref(), fused.step_weight);
                    conv1d_blocks(&geom, wv, half, xs, b, None, lengths, dst);
                    Ok(())
                }
            }
        })
    })?;
    // SAFETY: conv1d_blocks wrote all `len` values (see its contract).
    unsafe { out.set_len(len) };
    Tensor::from_vec(out, (b, c_out, l_out), x.device())
}

/// A 3-D f32 view: data from the layout's start offset, and its strides.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub(super) v: &'a [f32],
    pub(super) s: [usize; 3],
}

impl<'a> Strided<'a> {
    fn new(v: &'a [f32], l: &Layout) -> Self {
        let st = l.stride();
        Self {
            v: &v[l.start_offset()..],
            s: [st[0], st[1], st[2]],
        }
    }
}

/// The sizes of one (checked) fast-path conv.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvGeom {
    pub(super) b: usize,
    pub(super) c_in_g: usize,
    pub(super) c_out: usize,
    pub(super) c_out_g: usize,
    pub(super) groups: usize,
    pub(super) l: usize,
    pub(super) l_out: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) dilation: usize,
    pub(super) pad_left: usize,
    pub(super) act: InputAct,
    /// The caller allows [`super::winograd`] (see [`Fused::winograd`]).
    pub(super) winograd: bool,
}

/// How a call's output columns are cut into its tasks' blocks: `n` blocks of about
/// `len / n` columns, each at most cache-sized (`BLOCK_ELEMS / rows` columns, at least
/// `MIN_BLOCK_COLS`), with boundaries on multiples of 16 columns (whole gemm micro-tiles
/// along time). With several threads there are enough blocks for every thread to get a few
/// tasks, and `items x n` is a multiple of the thread count where the blocks can stay at
/// least `MIN_SPLIT_COLS` wide: equal shares, so that no thread ends a call waiting for
/// another's extra block (9 blocks on 2 threads had left one idle for a ninth of the call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ColumnBlocks {
    len: usize,
    pub(super) n: usize,
    /// Block boundaries fall on multiples of this (16, or a caller's larger multiple of 16).
    align: usize,
}

impl ColumnBlocks {
    fn new(rows: usize, len: usize, items: usize, threads: usize) -> Self {
        Self::new_with((BLOCK_ELEMS, 16), rows, len, items, threads)
    }

    /// [`Self::new`] for blocks of about `block_elems` floats whose boundaries fall on
    /// multiples of `align` (a multiple of 16) where the blocks are at least twice that wide,
    /// else on multiples of 16.
    pub(super) fn new_with(
        (block_elems, align): (usize, usize),
        rows: usize,
        len: usize,
        items: usize,
        threads: usize,
    ) -> Self {
        let max_block = (block_elems / rows.max(1)).max(MIN_BLOCK_COLS);
        let max_block = (max_block / align).max(1) * align;
        let mut n = len.div_ceil(max_block).max(1);
        if threads > 1 {
            let per_item = (TASKS_PER_THREAD * threads).div_ceil(items.max(1));
            n = n.max(per_item.min(len / MIN_BLOCK_COLS));
            while !(items * n).is_multiple_of(threads) && len / (n + 1) >= MIN_SPLIT_COLS {
                n += 1;
            }
        }
        let align = if len / n >= 2 * align { align } else { 16 };
        Self { len, n, align }
    }

    /// The first column of block `i` (`len` for `i == n`).
    fn start(&self, i: usize) -> usize {
        if i >= self.n {
            self.len
        } else {
            i * self.len / self.n / self.align * self.align
        }
    }

    /// Block `i`'s first column and width (maybe 0 for tiny calls).
    pub(super) fn range(&self, i: usize) -> (usize, usize) {
        let s = self.start(i);
        (s, self.start(i + 1) - s)
    }
}

/// Runs `task(i)` for `i in 0..n`: over the rayon pool when `parallel`, else in order.
pub(super) fn run_tasks(n: usize, parallel: bool, task: impl Fn(usize) + Sync + Send) {
    if parallel {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

thread_local! {
    /// Per-thread im2col scratch (window and columns), reused across calls.
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's scratch buffers, grown to `a` and `b` floats. The buffers are
/// taken out while `f` runs, so a re-entrant call (work stealing) gets fresh ones.
pub(super) fn with_scratch<R>(
    a: usize,
    b: usize,
    f: impl FnOnce(&mut [f32], &mut [f32]) -> R,
) -> R {
    let (mut va, mut vb) = SCRATCH.with(|s| s.take());
    if va.len() < a {
        va.resize(a, 0.0);
    }
    if vb.len() < b {
        vb.resize(b, 0.0);
    }
    let r = f(&mut va[..a], &mut vb[..b]);
    SCRATCH.with(|s| s.set((va, vb)));
    r
}

/// The fast conv: tasks over (item, group, block of output columns), each filling its block's
/// initial value (bias plus residual), copying its input window (activation applied, zeros
/// outside the item's valid samples), unfolding it and running one `gemm` into its block.
/// `out` (`[b, c_out, l_out]`) need not be initialised: every value of it is written, each
/// before it is read.
#[allow(clippy::too_many_arguments)]
fn conv1d_blocks(
    g: &ConvGeom,
    wv: &[f32],
    half: Option<&HalfWeight>,
    x: Strided<'_>,
    bias: Option<&[f32]>,
    residual: Option<Strided<'_>>,
    lengths: Option<&[usize]>,
    out: OutPtr,
) {
    let ConvGeom {
        b,
        c_in_g,
        c_out,
        c_out_g,
        groups,
        l,
        l_out,
        k,
        stride,
        dilation,
        pad_left,
        act,
        ..
    } = *g;
    if l_out <= FEW_CONV_COLS {
        return conv1d_few(g, (wv, half), x, bias, residual, lengths, out);
    }
    if g.winograd && super::winograd::applies(g) {
        return super::winograd::conv1d_winograd(g, wv, x, bias, residual, lengths, out);
    }
    let width = c_in_g * k;
    let k_eff = dilation * (k - 1) + 1;
    // A 1x1 conv over unpadded, whole rows without activation multiplies the input as it lies.
    let direct = k == 1
        && stride == 1
        && pad_left == 0
        && l_out == l
        && lengths.is_none()
        && act == InputAct::None;
    let threads = threads();
    let blocks = ColumnBlocks::new(width, l_out, b * groups, threads);
    let n_blocks = blocks.n;
    let tasks = b * groups * n_blocks;
    // Fewer tasks than threads: run them in turn and let the gemm use the threads.
    let parallel = threads > 1 && tasks >= threads;
    let par = if parallel {
        Parallelism::None
    } else {
        parallelism()
    };
    // A stride-1 conv with one or two outputs per group (a vocoder's last conv to audio) adds
    // each tap's shifted input row into its rows: a gemm of one or two rows would write and
    // read k im2col rows per input channel for one multiply-add each.
    let narrow = c_out_g <= NARROW_OUT && stride == 1 && k > 1;
    // Without a start value the gemm overwrites its block (it never reads it); with no input
    // channels there is no product, and the start value (zero) is the output.
    let read_dst = bias.is_some() || residual.is_some() || width == 0 || narrow;
    let [s0, s1, s2] = x.s;
    run_tasks(tasks, parallel, |task| {
        let blk = task % n_blocks;
        let (bi, gi) = (task / n_blocks / groups, task / n_blocks % groups);
        let (t_start, n) = blocks.range(blk);
        if n == 0 {
            return;
        }
        let row0 = bi * c_out + gi * c_out_g;
        // SAFETY: this task alone writes rows row0 .. row0 + c_out_g, columns t_start .. +n.
        let dst = unsafe { out.at(row0 * l_out + t_start) };
        if read_dst {
            for o in 0..c_out_g {
                // SAFETY: as above, one row of this task's block.
                let start = RowStart {
                    bias,
                    residual,
                    bi,
                    ch: gi * c_out_g + o,
                    t_start,
                };
                unsafe { init_row(dst.add(o * l_out), n, start) };
            }
        }
        let xg = &x.v[bi * s0 + gi * c_in_g * s1..];
        let lhs = &wv[gi * c_out_g * width..];
        let valid = lengths.map_or(l, |ls| ls[bi].min(l));
        let span = (n - 1) * stride + k_eff;
        if narrow {
            let first = t_start as isize - pad_left as isize;
            return with_scratch(c_in_g * span, 0, |win, _| {
                fill_window(win, xg, (s1, s2), c_in_g, span, first, valid, act);
                for o in 0..c_out_g {
                    // SAFETY: row o of this task's block, initialised above.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.add(o * l_out), n) };
                    let taps = (&lhs[o * width..(o + 1) * width], k, dilation);
                    add_taps(row, taps, win, span);
                }
            });
        }
        // Cheap activations are applied once per tap, straight into the columns: one pass over
        // the input instead of a window copy and then the unfold's.
        let no_window = k > 1 && !matches!(act, InputAct::Elu(_));
        let (win_len, cols_len) = if direct {
            (0, 0)
        } else if no_window {
            (0, width * n)
        } else if k == 1 {
            (c_in_g * span, 0)
        } else {
            (c_in_g * span, width * n)
        };
        with_scratch(win_len, cols_len, |win, cols| {
            let (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize) = if direct {
                (xg[t_start * s2..].as_ptr(), s1 as isize, s2 as isize)
            } else {
                // Input sample of window position q: q + t_start * stride - pad_left.
                let first = (t_start * stride) as isize - pad_left as isize;
                if no_window {
                    let taps = (k, stride, dilation);
                    unfold_input(cols, xg, (s1, s2), c_in_g, first, valid, taps, n, act);
                    (cols.as_ptr(), n as isize, 1)
                } else if k == 1 {
                    fill_window(win, xg, (s1, s2), c_in_g, span, first, valid, act);
                    (win.as_ptr(), span as isize, stride as isize)
                } else {
                    fill_window(win, xg, (s1, s2), c_in_g, span, first, valid, act);
                    unfold(cols, win, c_in_g, span, k, stride, dilation, n);
                    (cols.as_ptr(), n as isize, 1)
                }
            };
            // SAFETY: dst holds c_out_g rows (stride l_out) of which this task owns columns
            // 0..n; lhs c_out_g rows of `width`; rhs `width` rows of n columns at the given
            // strides, all inside their buffers (shapes checked by the caller).
            unsafe {
                crate::cpu::gemm(
                    (c_out_g, n, width),
                    (dst, l_out as isize, 1),
                    read_dst,
                    (lhs.as_ptr(), width as isize, 1),
                    (rhs, rhs_rs, rhs_cs),
                    par,
                );
            }
        });
    });
}

/// Output channels per group up to which a stride-1 conv adds shifted input rows instead of
/// running a gemm (see `conv1d_blocks`).
const NARROW_OUT: usize = 2;

/// `row[t] += sum over (c, j) of w[c * k + j] * win[c * span + t + j * dilation]`, in that
/// order of (c, j), for `t < row.len()`: one output row of a narrow conv from its window.
fn add_taps(row: &mut [f32], (w, k, dilation): (&[f32], usize, usize), win: &[f32], span: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { add_taps_avx2(row, (w, k, dilation), win, span) };
    }
    add_taps_any(row, (w, k, dilation), win, span)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_taps_avx2(row: &mut [f32], taps: (&[f32], usize, usize), win: &[f32], span: usize) {
    add_taps_any(row, taps, win, span)
}

#[inline(always)]
fn add_taps_any(
    row: &mut [f32],
    (w, k, dilation): (&[f32], usize, usize),
    win: &[f32],
    span: usize,
) {
    let n = row.len();
    for (c, wc) in w.chunks_exact(k).enumerate() {
        let src = &win[c * span..(c + 1) * span];
        for (j, &wj) in wc.iter().enumerate() {
            let x = &src[j * dilation..j * dilation + n];
            row.iter_mut().zip(x).for_each(|(r, &v)| *r += wj * v);
        }
    }
}

/// Where an output row's initial value comes from: the bias (or zero) of output channel `ch`
/// plus, when there is one, the residual's row `ch` of item `bi` from column `t_start` on.
#[derive(Clone, Copy)]
pub(super) struct RowStart<'a> {
    pub(super) bias: Option<&'a [f32]>,
    pub(super) residual: Option<Strided<'a>>,
    pub(super) bi: usize,
    pub(super) ch: usize,
    pub(super) t_start: usize,
}

impl<'a> RowStart<'a> {
    /// The row's bias value and its `n` residual values from `t_start` on (when there is a
    /// residual), or `None` when the residual is strided in time.
    pub(super) fn contiguous(self, n: usize) -> Option<(f32, Option<&'a [f32]>)> {
        let b = self.bias.map_or(0.0, |bv| bv[self.ch]);
        match self.residual {
            None => Some((b, None)),
            Some(r) if r.s[2] == 1 => {
                let at = self.bi * r.s[0] + self.ch * r.s[1] + self.t_start;
                Some((b, Some(&r.v[at..at + n])))
            }
            Some(_) => None,
        }
    }
}

/// Sets the `n` values at `row` (maybe uninitialised) to their initial value (`start`).
///
/// # Safety
/// `row` is valid for `n` writes and no other reference to those values is alive.
pub(super) unsafe fn init_row(row: *mut f32, n: usize, start: RowStart<'_>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected; the caller's contract.
        return unsafe { init_row_avx2(row, n, start) };
    }
    // SAFETY: the caller's contract.
    unsafe { init_row_any(row, n, start) }
}

/// [`init_row`] compiled for AVX2 (the baseline build's loops run 128-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn init_row_avx2(row: *mut f32, n: usize, start: RowStart<'_>) {
    // SAFETY: the caller's contract.
    unsafe { init_row_any(row, n, start) }
}

/// [`init_row`]'s one pass: `bias + residual` written once per value.
#[inline(always)]
unsafe fn init_row_any(row: *mut f32, n: usize, start: RowStart<'_>) {
    let RowStart {
        bias,
        residual,
        bi,
        ch,
        t_start,
    } = start;
    let b = bias.map_or(0.0, |bv| bv[ch]);
    // SAFETY (all writes): the caller's contract, t < n.
    match residual {
        Some(r) => {
            let [r0, r1, r2] = r.s;
            let src = &r.v[bi * r0 + ch * r1 + t_start * r2..];
            if r2 == 1 {
                for (t, &v) in src[..n].iter().enumerate() {
                    unsafe { row.add(t).write(b + v) };
                }
            } else {
                for t in 0..n {
                    unsafe { row.add(t).write(b + src[t * r2]) };
                }
            }
        }
        None => {
            for t in 0..n {
                unsafe { row.add(t).write(b) };
            }
        }
    }
}

/// Input frames up to which a transpose streams its weight once through
/// [`crate::simd::cols_axpy`] instead of running a `gemm` over the transposed weight, whose
/// packing dominates at such sizes (a streaming step). Measured on Mimi's decoder (one
/// thread): 1024 -> 512, k 16 on 2 frames took 13.5 ms of CPU through the gemm and 2.7 ms
/// here; at 16 frames the gemm is ahead again (1.3-1.6 ms against 2.2 ms for 512 -> 256, k 12).
const FEW_FRAMES: usize = 8;
/// Output columns up to which a conv streams its weight rows through
/// [`crate::simd::rows_dot_cols`]. At 2 columns (Mimi's 25 Hz convs in a streaming step) the
/// gemm runs its 8-row micro-kernel on 2 useful rows: on a quiet machine, one thread, 512 ->
/// 1024 k 16 took 3.7 ms through the gemm and 3.0 ms here, 1024 -> 512 k 3 0.44 and 0.18 ms,
/// 512 -> 1024 k 7 1.15 and 0.64 ms. At 16 columns the gemm is ahead.
const FEW_CONV_COLS: usize = 2;
/// Weight floats per task of the few-column paths: enough that a task outweighs its
/// scheduling, few enough that a big layer splits over every thread.
const FEW_TASK_ELEMS: usize = 1 << 16;

/// Splits `c_out_g` output channels into chunks for `items` (item, group) pairs of
/// `elems_per_ch` weight floats each: `(chunk size, chunks)`.
fn few_chunks(c_out_g: usize, elems_per_ch: usize, items: usize, threads: usize) -> (usize, usize) {
    if threads <= 1 {
        return (c_out_g, 1);
    }
    let want = (TASKS_PER_THREAD * threads).div_ceil(items);
    let by_size = (c_out_g * elems_per_ch / FEW_TASK_ELEMS).max(1);
    let per = want.min(by_size).clamp(1, c_out_g);
    let chunk = c_out_g.div_ceil(per);
    (chunk, c_out_g.div_ceil(chunk))
}

/// The few-column conv: tasks over (item, group, block of output channels), each unfolding
/// the item's whole (short) input time-major (`[l_out, c_in_g * k]`) and streaming its
/// channels' weight rows once against all the columns ([`crate::simd::rows_dot_cols`]), from
/// the half copy when there is one.
fn conv1d_few(
    g: &ConvGeom,
    (wv, half): (&[f32], Option<&HalfWeight>),
    x: Strided<'_>,
    bias: Option<&[f32]>,
    residual: Option<Strided<'_>>,
    lengths: Option<&[usize]>,
    out: OutPtr,
) {
    let ConvGeom {
        b,
        c_in_g,
        c_out,
        c_out_g,
        groups,
        l,
        l_out,
        k,
        stride,
        dilation,
        pad_left,
        act,
        ..
    } = *g;
    let width = c_in_g * k;
    let span = (l_out - 1) * stride + dilation * (k - 1) + 1;
    let threads = threads();
    let (chunk, per) = few_chunks(c_out_g, width, b * groups, threads);
    let tasks = b * groups * per;
    let [s0, s1, s2] = x.s;
    run_tasks(tasks, threads > 1 && tasks > 1, |task| {
        let (bi, gi, ci) = (task / per / groups, task / per % groups, task % per);
        let o0 = ci * chunk;
        let m = chunk.min(c_out_g - o0);
        let ch0 = gi * c_out_g + o0;
        // SAFETY: this task alone writes the m whole rows from channel ch0 of item bi, each
        // initialised (the kernel adds into them) before the slice over them is made.
        let dst = unsafe {
            let first = out.at((bi * c_out + ch0) * l_out);
            for o in 0..m {
                let start = RowStart {
                    bias,
                    residual,
                    bi,
                    ch: ch0 + o,
                    t_start: 0,
                };
                init_row(first.add(o * l_out), l_out, start);
            }
            std::slice::from_raw_parts_mut(first, m * l_out)
        };
        let xg = &x.v[bi * s0 + gi * c_in_g * s1..];
        let valid = lengths.map_or(l, |ls| ls[bi].min(l));
        with_scratch(c_in_g * span, l_out * width, |win, cols| {
            fill_window(
                win,
                xg,
                (s1, s2),
                c_in_g,
                span,
                -(pad_left as isize),
                valid,
                act,
            );
            for t in 0..l_out {
                let row = &mut cols[t * width..(t + 1) * width];
                for ci in 0..c_in_g {
                    let src = &win[ci * span + t * stride..];
                    for j in 0..k {
                        row[ci * k + j] = src[j * dilation];
                    }
                }
            }
            match half {
                Some(h) => h.rows_dot_cols(ch0, m, cols, width, l_out, dst, l_out),
                None => crate::simd::rows_dot_cols(
                    &wv[ch0 * width..],
                    width,
                    m,
                    cols,
                    width,
                    l_out,
                    dst,
                    l_out,
                ),
            }
        });
    });
}

/// The few-frame transpose: tasks over (item, group, block of output channels), each
/// streaming its channels' columns of the weight once ([`crate::simd::cols_axpy`]) into
/// `[frames, channels * k]` sums and overlap-adding those into its own bias-filled rows.
fn transpose_few(
    g: &TrGeom,
    wv: WeightData<'_>,
    x: Strided<'_>,
    bias: Option<&[f32]>,
    lengths: Option<&[usize]>,
    out: &mut [f32],
) {
    let TrGeom {
        b,
        t,
        c_in_g,
        c_out_g,
        groups,
        l_out,
        k,
        stride,
        padding,
        dilation,
    } = *g;
    let rows = c_out_g * k;
    let c_out = c_out_g * groups;
    let threads = threads();
    let (chunk, per) = few_chunks(c_out_g, c_in_g * k, b * groups, threads);
    let tasks = b * groups * per;
    let out = OutPtr(out.as_mut_ptr());
    let [s0, s1, s2] = x.s;
    run_tasks(tasks, threads > 1 && tasks > 1, |task| {
        let (bi, gi, ci) = (task / per / groups, task / per % groups, task % per);
        let o0 = ci * chunk;
        let m = chunk.min(c_out_g - o0);
        let ch0 = gi * c_out_g + o0;
        // SAFETY: this task alone writes the m whole rows from channel ch0 of item bi.
        let y = unsafe {
            std::slice::from_raw_parts_mut(out.at((bi * c_out + ch0) * l_out), m * l_out)
        };
        if let Some(bv) = bias {
            for (o, row) in y.chunks_mut(l_out).enumerate() {
                row.fill(bv[ch0 + o]);
            }
        }
        let tv = lengths.map_or(t, |ls| ls[bi].min(t));
        if tv == 0 {
            return;
        }
        let rc = m * k;
        let xg = &x.v[bi * s0 + gi * c_in_g * s1..];
        with_scratch(c_in_g * tv, tv * rc, |xc, acc| {
            for (c, row) in xc.chunks_mut(tv).enumerate() {
                for (f, v) in row.iter_mut().enumerate() {
                    *v = xg[c * s1 + f * s2];
                }
            }
            acc.fill(0.0);
            let w = wv.offset(gi * c_in_g * rows + o0 * k);
            crate::simd::cols_axpy(w, rows, c_in_g, rc, xc, tv, acc);
            // Frame f, tap j lands on output sample f * stride + j * dilation - padding.
            for (o, yr) in y.chunks_mut(l_out).enumerate() {
                for f in 0..tv {
                    let sums = &acc[f * rc + o * k..f * rc + (o + 1) * k];
                    for (j, &v) in sums.iter().enumerate() {
                        let p = f * stride + j * dilation;
                        if p >= padding && p - padding < l_out {
                            yr[p - padding] += v;
                        }
                    }
                }
            }
        });
    });
}

/// Fills `win` `[c, span]` with `act(x[ci, first + q])`, zero where `first + q` lies outside
/// `0..valid`. `x` is addressed by `(channel stride, time stride)`.
#[allow(clippy::too_many_arguments)]
fn fill_window(
    win: &mut [f32],
    x: &[f32],
    (sc, st): (usize, usize),
    c: usize,
    span: usize,
    first: isize,
    valid: usize,
    act: InputAct,
) {
    // Window positions q0 .. q1 read samples inside 0..valid.
    let q0 = (-first).clamp(0, span as isize) as usize;
    let q1 = (valid as isize - first).clamp(q0 as isize, span as isize) as usize;
    for ci in 0..c {
        let row = &mut win[ci * span..(ci + 1) * span];
        row[..q0].fill(0.0);
        row[q1..].fill(0.0);
        if q1 > q0 {
            let p0 = (first + q0 as isize) as usize;
            let src = &x[ci * sc + p0 * st..];
            let dst = &mut row[q0..q1];
            if st == 1 {
                dst.copy_from_slice(&src[..q1 - q0]);
            } else {
                dst.iter_mut()
                    .enumerate()
                    .for_each(|(i, d)| *d = src[i * st]);
            }
            act.apply_in_place(dst);
        }
    }
}

/// Channel-major im2col straight from the input, for activations cheap enough to run once
/// per tap: `cols` `[c * k, n]`, row `(ci, j)`, column `t` is `act(x[ci, first + t * stride +
/// j * dilation])`, zero where that sample lies outside `0..valid`. `x` is addressed by
/// `(channel stride, time stride)`; `taps` is `(k, stride, dilation)`.
#[allow(clippy::too_many_arguments)]
fn unfold_input(
    cols: &mut [f32],
    x: &[f32],
    (sc, st): (usize, usize),
    c: usize,
    first: isize,
    valid: usize,
    (k, stride, dilation): (usize, usize, usize),
    n: usize,
    act: InputAct,
) {
    for ci in 0..c {
        for j in 0..k {
            let row = &mut cols[(ci * k + j) * n..(ci * k + j + 1) * n];
            // Sample of column 0; column t reads off + t * stride.
            let off = first + (j * dilation) as isize;
            let t0 = if off >= 0 {
                0
            } else {
                off.unsigned_abs().div_ceil(stride).min(n)
            };
            let t1 = (valid as isize - off)
                .max(0)
                .unsigned_abs()
                .div_ceil(stride)
                .clamp(t0, n);
            row[..t0].fill(0.0);
            row[t1..].fill(0.0);
            if t1 > t0 {
                let p0 = (off + (t0 * stride) as isize) as usize;
                let src = &x[ci * sc + p0 * st..];
                let dst = &mut row[t0..t1];
                let step = stride * st;
                match (act, step) {
                    // The common case in one pass: copy and activate.
                    (InputAct::LeakyRelu(slope), 1) => {
                        crate::activation::leaky_relu_copy(dst, &src[..t1 - t0], slope)
                    }
                    (_, 1) => {
                        dst.copy_from_slice(&src[..t1 - t0]);
                        act.apply_in_place(dst);
                    }
                    _ => {
                        dst.iter_mut()
                            .enumerate()
                            .for_each(|(i, d)| *d = src[i * step]);
                        act.apply_in_place(dst);
                    }
                }
            }
        }
    }
}

/// Channel-major im2col of a window: `cols` `[c * k, n]`, row `(ci, j)`, column `t` is
/// `win[ci, t * stride + j * dilation]`.
#[allow(clippy::too_many_arguments)]
fn unfold(
    cols: &mut [f32],
    win: &[f32],
    c: usize,
    span: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    n: usize,
) {
    for ci in 0..c {
        let src = &win[ci * span..(ci + 1) * span];
        for j in 0..k {
            let row = &mut cols[(ci * k + j) * n..(ci * k + j + 1) * n];
            let s = &src[j * dilation..];
            if stride == 1 {
                row.copy_from_slice(&s[..n]);
            } else {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(t, d)| *d = s[t * stride]);
            }
        }
    }
}

/// Column blocks hold about this many floats (512 KiB: half a core's L2 here).
const BLOCK_ELEMS: usize = 1 << 17;
/// The fewest output columns per block (so the gemm stays wide and packing its weights
/// stays a small share).
const MIN_BLOCK_COLS: usize = 128;
/// Tasks per thread wanted for load balance when a call has few (item, group) pairs.
const TASKS_PER_THREAD: usize = 4;
/// The narrowest blocks that [`ColumnBlocks`] makes to even out the threads' shares.
const MIN_SPLIT_COLS: usize = 32;

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
    conv_transpose1d_step(x, w, None, bias, opts, lengths)
}

/// [`conv_transpose1d_inference`] whose few-frame path (a streaming step, at most
/// [`FEW_FRAMES`] input frames) reads `step_weight`, a half-precision copy of `w` in the same
/// layout, when there is one (see [`StepWeights`](crate::simd::StepWeights)).
pub fn conv_transpose1d_step(
    x: &Tensor,
    w: &Tensor,
    step_weight: Option<&HalfWeight>,
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
    super::check_conv_args(
        F,
        x,
        w,
        "[in, out/groups, kernel]",
        (stride, dilation, groups),
    )?;
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
    check_step_weight(F, step_weight, w)?;
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
    let mut out = vec![0f32; b * c_out * l_out];
    with_cpu_f32(&w, |wv, wl| {
        let wv = &wv[wl.start_offset()..];
        with_cpu_f32(x, |xv, xl| {
            let g = TrGeom {
                b,
                t,
                c_in_g,
                c_out_g,
                groups,
                l_out,
                k,
                stride,
                padding,
                dilation,
            };
            transpose_blocks(
                &g,
                wv,
                step_weight,
                Strided::new(xv, xl),
                bias.as_deref(),
                lengths,
                &mut out,
            );
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (b, c_out, l_out), x.device())
}

/// The sizes of one (checked) fast-path transpose.
#[derive(Clone, Copy, Debug)]
struct TrGeom {
    b: usize,
    t: usize,
    c_in_g: usize,
    c_out_g: usize,
    groups: usize,
    l_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

/// The fast transpose: tasks over (item, group, block of output samples), each running one
/// `gemm` over the input frames that reach its block (`W^T x`, `[C_out_g * k, frames]`) and
/// overlap-adding the products into its own block, bias-filled. Neighbouring blocks share
/// the few frames whose taps straddle their border and compute those twice.
fn transpose_blocks(
    g: &TrGeom,
    wv: &[f32],
    half: Option<&HalfWeight>,
    x: Strided<'_>,
    bias: Option<&[f32]>,
    lengths: Option<&[usize]>,
    out: &mut [f32],
) {
    let TrGeom {
        b,
        t,
        c_in_g,
        c_out_g,
        groups,
        l_out,
        k,
        stride,
        padding,
        dilation,
    } = *g;
    if t <= FEW_FRAMES {
        let w = half.map_or(WeightData::F32(wv), HalfWeight::data);
        return transpose_few(g, w, x, bias, lengths, out);
    }
    let rows = c_out_g * k;
    let c_out = c_out_g * groups;
    let k_eff = dilation * (k - 1) + 1;
    let threads = threads();
    // Blocks of output samples, cut as blocks of `stride` samples (one input frame each).
    let blocks = ColumnBlocks::new(rows, l_out.div_ceil(stride), b * groups, threads);
    let n_blocks = blocks.n;
    let tasks = b * groups * n_blocks;
    let parallel = threads > 1 && tasks >= threads;
    let par = if parallel {
        Parallelism::None
    } else {
        parallelism()
    };
    let out = OutPtr(out.as_mut_ptr());
    let [_, s1, s2] = x.s;
    run_tasks(tasks, parallel, |task| {
        let blk = task % n_blocks;
        let (bi, gi) = (task / n_blocks / groups, task / n_blocks % groups);
        let p0 = blocks.start(blk) * stride;
        let p1 = (blocks.start(blk + 1) * stride).min(l_out);
        if p1 <= p0 {
            return;
        }
        let row0 = bi * c_out + gi * c_out_g;
        let ys = |o: usize| {
            // SAFETY: this task alone writes rows row0 .. row0 + c_out_g, samples p0 .. p1.
            unsafe { std::slice::from_raw_parts_mut(out.at((row0 + o) * l_out + p0), p1 - p0) }
        };
        if let Some(bv) = bias {
            for o in 0..c_out_g {
                ys(o).fill(bv[gi * c_out_g + o]);
            }
        }
        // Frame f writes samples f * stride + j * dilation - padding, j < k: the frames
        // that reach p0 .. p1 (frames past the item's length contribute nothing).
        let tv = lengths.map_or(t, |ls| ls[bi].min(t));
        let f0 = (p0 + padding).saturating_sub(k_eff - 1).div_ceil(stride);
        let f1 = ((p1 - 1 + padding) / stride + 1).min(tv);
        if f1 <= f0 {
            return;
        }
        let nt = f1 - f0;
        let xg = &x.v[bi * x.s[0] + gi * c_in_g * s1..];
        let lhs = &wv[gi * c_in_g * rows..];
        with_scratch(0, rows * nt, |_, cols| {
            // cols[(o, j), f] = sum_c w[c, o, j] x[c, f0 + f]: lhs row (o, j) is at o * k + j
            // (stride 1), its column c at c * rows.
            // SAFETY: cols holds rows x nt; lhs c_in_g blocks of `rows`; rhs c_in_g rows of
            // nt frames from f0 at its strides, all inside their buffers.
            unsafe {
                crate::cpu::gemm(
                    (rows, nt, c_in_g),
                    (cols.as_mut_ptr(), nt as isize, 1),
                    false,
                    (lhs.as_ptr(), 1, rows as isize),
                    (xg.as_ptr().add(f0 * s2), s1 as isize, s2 as isize),
                    par,
                );
            }
            for o in 0..c_out_g {
                let y = ys(o);
                for j in 0..k {
                    let src = &cols[(o * k + j) * nt..(o * k + j + 1) * nt];
                    let off = f0 * stride + j * dilation;
                    overlap_add(y, src, off, stride, padding + p0);
                }
            }
        });
    });
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

/// Elements per parallel chunk of the elementwise ops (below two chunks they run serially).
const MAP_CHUNK: usize = 1 << 15;

/// `act` over every element of an untracked CPU f32 tensor into a new contiguous one, in
/// parallel chunks when the tensor is big; `None` for any other tensor.
fn map_f32(x: &Tensor, act: InputAct) -> Result<Option<Tensor>> {
    if !is_untracked_cpu_f32(x) {
        return Ok(None);
    }
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let out = with_contiguous_f32(&x, "elementwise", |src| {
        if threads() > 1 && src.len() >= 2 * MAP_CHUNK {
            use rayon::prelude::*;
            let mut out = vec![0f32; src.len()];
            out.par_chunks_mut(MAP_CHUNK)
                .zip(src.par_chunks(MAP_CHUNK))
                .for_each(|(o, s)| {
                    o.copy_from_slice(s);
                    act.apply_in_place(o);
                });
            out
        } else {
            // One thread: a copy, not a zero fill and then a copy.
            let mut out = src.to_vec();
            act.apply_in_place(&mut out);
            out
        }
    })?;
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

/// `leaky_relu(x, slope)` (`max(x, 0) + slope * min(x, 0)`) in one (parallel) pass over a CPU
/// f32 tensor; other tensors, or tracked ones, go through candle's composed op.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    match map_f32(x, InputAct::LeakyRelu(slope as f32))? {
        Some(y) => Ok(y),
        None => candle_nn::ops::leaky_relu(x, slope),
    }
}

/// `elu(x, alpha)` with candle's formula (vectorised `exp`: within a few ulp of `Tensor::elu`), in one parallel
/// pass over a big CPU f32 tensor (candle's CPU unary ops run on one thread); other tensors,
/// or tracked ones, go through `Tensor::elu`.
pub fn elu(x: &Tensor, alpha: f64) -> Result<Tensor> {
    match map_f32(x, InputAct::Elu(alpha as f32))? {
        Some(y) => Ok(y),
        // Tracked (training) or another device: the one-pass ELU with its fused backward.
        None => crate::fused::elu(x, alpha),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column in exactly one block, boundaries on whole micro-tiles, no block over the
    /// cache budget (unless a single block must be), and equal shares where they are possible.
    #[test]
    fn column_blocks_cover_the_columns_in_even_shares() {
        for threads in [1, 2, 3, 4, 8] {
            for items in [1, 2, 3, 7] {
                for rows in [1, 64, 768, 2816, 1 << 15] {
                    for len in [1, 15, 16, 17, 40, 127, 128, 129, 1378, 11025, 44100] {
                        let cb = ColumnBlocks::new(rows, len, items, threads);
                        let case = format!(
                            "threads {threads} items {items} rows {rows} len {len}: {cb:?}"
                        );
                        assert!(cb.n >= 1, "{case}");
                        assert_eq!(cb.start(0), 0, "{case}");
                        assert_eq!(cb.start(cb.n), len, "{case}");
                        let max_block = (BLOCK_ELEMS / rows / 16 * 16).max(MIN_BLOCK_COLS);
                        let mut widths = Vec::new();
                        for i in 0..cb.n {
                            let (s, w) = cb.range(i);
                            assert!(i == 0 || s % 16 == 0, "{case}: block {i} starts at {s}");
                            assert!(w <= max_block + 16, "{case}: block {i} is {w} wide");
                            widths.push(w);
                        }
                        assert_eq!(widths.iter().sum::<usize>(), len, "{case}");
                        let (lo, hi) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
                        if len >= 16 * cb.n {
                            assert!(hi - lo < 32, "{case}: widths {lo}..{hi}");
                        }
                        if threads > 1 && len / 2 >= MIN_BLOCK_COLS * threads {
                            assert!((items * cb.n).is_multiple_of(threads), "{case}");
                            assert!(items * cb.n >= threads, "{case}");
                        }
                    }
                }
            }
        }
    }
}
