//! Few-column kernels that stream a weight matrix from memory once.
//!
//! A streaming step multiplies big weights by a handful of columns (a conv over 2 output
//! steps, a linear over one token). A `gemm` packs the whole weight into its own layout first
//! and then runs a micro-kernel built for many columns, so at such sizes it is bound by that
//! packing. These kernels read each weight row once, in place, and keep all the columns'
//! sums in registers (or in an L1-sized accumulator block): the cost is one pass over the
//! weight at memory bandwidth. AVX2 + FMA (+ F16C) when the CPU has them (detected at run
//! time), else portable loops. Both sum in another order than a `gemm`, so they agree with it
//! to float rounding, not bit for bit. The same kernels serve `vaak_nn::transformer`'s
//! few-row projections and `vaak_nn::conv`'s few-column paths, on f32 weights or on the
//! half-precision copies a streaming step may read instead ([`StepWeights`], [`HalfWeight`]).

/// Columns one pass keeps in registers; more columns take more passes over the weight.
pub const MAX_COLS: usize = 8;

/// Storage of the weights a streaming step reads (see [`HalfWeight`]).
///
/// A step of a few rows or columns is bound by reading the weights, so half-precision storage
/// halves its cost; products still accumulate in f32 and activations stay f32. Only the
/// few-rows / few-columns CPU paths read a half copy: whole-sequence forwards, training and
/// other devices keep the f32 weights, which stay loaded.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StepWeights {
    /// The loaded f32 weights (exact; the default).
    #[default]
    F32,
    /// bfloat16 copies (8-bit mantissa, f32's range).
    Bf16,
    /// IEEE half copies (11-bit mantissa, range up to 65504): closer to f32 for weights of
    /// ordinary magnitude.
    F16,
}

impl StepWeights {
    pub const ALL: [StepWeights; 3] = [Self::F32, Self::Bf16, Self::F16];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for StepWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StepWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown step weights {s:?}; expected f32, bf16 or f16"))
    }
}

/// Weight columns per block of a [`HalfWeight`] stored in row blocks
/// ([`HalfWeight::new_row_blocks`]): two columns of `x` that long (16 KiB) stay in L1 while a
/// block streams.
pub const ROW_BLOCK: usize = 2048;

/// A half-precision copy of a weight, as raw 16-bit patterns: what a streaming step reads
/// instead of the f32 weight ([`StepWeights`]). Row-major (the weight's own layout), or, for
/// rows wider than [`ROW_BLOCK`], block by block ([`HalfWeight::new_row_blocks`]).
#[derive(Debug)]
pub struct HalfWeight {
    bits: Vec<u16>,
    f16: bool,
    /// `(rows, width)` when stored in row blocks: columns `i0 .. i0 + ROW_BLOCK` of every row,
    /// one row after the other, then the next block (the last block may be narrower).
    blocks: Option<(usize, usize)>,
}

impl HalfWeight {
    /// The copy of `w` for `kind`; `None` for [`StepWeights::F32`].
    pub fn new(w: &candle_core::Tensor, kind: StepWeights) -> candle_core::Result<Option<Self>> {
        if kind == StepWeights::F32 {
            return Ok(None);
        }
        let v = w
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let f16 = kind == StepWeights::F16;
        let bits = if f16 {
            v.iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect()
        } else {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect()
        };
        Ok(Some(Self {
            bits,
            f16,
            blocks: None,
        }))
    }

    /// The copy of `w` (`[rows, ...]`, each row the rest of the dims flattened) for `kind`,
    /// stored in row blocks when its rows are wider than [`ROW_BLOCK`]. A few-column pass over
    /// wide rows must split them so that its columns of `x` stay in L1; in the weight's own
    /// layout each block is then a strided read (4 KiB of every row), where the hardware
    /// prefetcher restarts at every row, so two columns read a 1024 x 8192 bf16 weight from
    /// memory at 9-10 GB/s; block by block it is one sequential stream (15-20 GB/s). The
    /// blocks are fixed here, so a column's sums do not depend on how many columns a call has.
    /// Read through [`HalfWeight::rows_dot_cols`].
    pub fn new_row_blocks(
        w: &candle_core::Tensor,
        kind: StepWeights,
    ) -> candle_core::Result<Option<Self>> {
        let Some(mut h) = Self::new(w, kind)? else {
            return Ok(None);
        };
        let rows = w.dims().first().copied().unwrap_or(1);
        if rows == 0 {
            return Ok(Some(h));
        }
        let width = h.bits.len() / rows;
        if width > ROW_BLOCK {
            let mut bits = Vec::with_capacity(h.bits.len());
            for i0 in (0..width).step_by(ROW_BLOCK) {
                let wc = (width - i0).min(ROW_BLOCK);
                for r in 0..rows {
                    bits.extend_from_slice(&h.bits[r * width + i0..r * width + i0 + wc]);
                }
            }
            h.bits = bits;
            h.blocks = Some((rows, width));
        }
        Ok(Some(h))
    }

    /// Values held (the weight's element count).
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// `out[o * out_rs + t] += sum_i w[row0 + o, i] * x[t * width + i]` for `o < m`, `t < n`:
    /// [`rows_dot_cols`] over rows `row0 .. row0 + m` of this weight (rows of `width`), in
    /// either layout.
    ///
    /// # Panics
    /// When the rows or a slice are out of range, or `width` is not this weight's row width.
    #[allow(clippy::too_many_arguments)]
    pub fn rows_dot_cols(
        &self,
        row0: usize,
        m: usize,
        x: &[f32],
        width: usize,
        n: usize,
        out: &mut [f32],
        out_rs: usize,
    ) {
        let Some((rows, w)) = self.blocks else {
            let data = self.data().offset(row0 * width);
            return rows_dot_cols(data, width, m, x, width, n, out, out_rs);
        };
        assert_eq!(w, width, "row width of a blocked half weight");
        if m == 0 || n == 0 {
            return;
        }
        assert!(row0 + m <= rows && out_rs >= n);
        assert!(x.len() >= n * width && out.len() > (m - 1) * out_rs + n - 1);
        let wp = self.bits.as_ptr().cast::<u8>();
        let pass = (MAX_COLS, (out_rs, 1));
        let layout = Some((rows, row0));
        // SAFETY: the block layout holds rows x width values (made so by new_row_blocks); the
        // rows and slices were checked above.
        unsafe {
            if self.f16 {
                dot_raw::<W_F16>(wp, width, m, x, width, n, out, pass, layout);
            } else {
                dot_raw::<W_BF16>(wp, width, m, x, width, n, out, pass, layout);
            }
        }
    }

    /// The weights as the kernels read them, in the weight's own layout.
    ///
    /// # Panics
    /// For a copy stored in row blocks (read those through [`HalfWeight::rows_dot_cols`]).
    pub fn data(&self) -> WeightData<'_> {
        assert!(
            self.blocks.is_none(),
            "a half weight in row blocks is read through rows_dot_cols"
        );
        if self.f16 {
            WeightData::F16(&self.bits)
        } else {
            WeightData::Bf16(&self.bits)
        }
    }
}

/// A weight buffer the kernels stream: f32, or bf16 / IEEE half bit patterns that are widened
/// to f32 exactly as they are read.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
}

impl<'a> From<&'a [f32]> for WeightData<'a> {
    fn from(w: &'a [f32]) -> Self {
        Self::F32(w)
    }
}

impl<'a> WeightData<'a> {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::Bf16(w) | Self::F16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same storage from element `i` on.
    pub fn offset(self, i: usize) -> Self {
        match self {
            Self::F32(w) => Self::F32(&w[i..]),
            Self::Bf16(w) => Self::Bf16(&w[i..]),
            Self::F16(w) => Self::F16(&w[i..]),
        }
    }

    /// The raw pointer and its storage code (`W_F32`, `W_BF16` or `W_F16`).
    pub(crate) fn raw(self) -> (*const u8, u8) {
        match self {
            Self::F32(w) => (w.as_ptr().cast(), W_F32),
            Self::Bf16(w) => (w.as_ptr().cast(), W_BF16),
            Self::F16(w) => (w.as_ptr().cast(), W_F16),
        }
    }
}

/// Weight storages as a const parameter, so each kernel gets its own loop per storage.
pub(crate) const W_F32: u8 = 0;
pub(crate) const W_BF16: u8 = 1;
pub(crate) const W_F16: u8 = 2;

/// Weight `i` of a `W`-stored buffer as f32.
///
/// # Safety
/// `w` points to at least `i + 1` elements of the storage `W` names.
#[inline(always)]
pub(crate) unsafe fn weight_at<const W: u8>(w: *const u8, i: usize) -> f32 {
    match W {
        W_F32 => *w.cast::<f32>().add(i),
        W_BF16 => half::bf16::from_bits(*w.cast::<u16>().add(i)).to_f32(),
        _ => half::f16::from_bits(*w.cast::<u16>().add(i)).to_f32(),
    }
}

/// Eight weights from `w + i` of storage `W`, widened to f32.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds at least `i + 8` elements of storage `W`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn load8<const W: u8>(w: *const u8, i: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    match W {
        W_F32 => _mm256_loadu_ps(w.cast::<f32>().add(i)),
        W_BF16 => {
            // bf16 is the top half of an f32: widen and shift.
            let h = _mm_loadu_si128(w.cast::<u16>().add(i).cast());
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
        _ => _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<u16>().add(i).cast())),
    }
}

/// Whether this CPU runs the AVX2 + FMA (+ F16C, for half weights) kernels.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[o * out_rs + t] += sum_i w[o * w_rs + i] * x[t * width + i]` for `o < m`, `t < n`:
/// `m` weight rows of `width` (at row stride `w_rs`) against `n` contiguous columns stored
/// row by row (`x` is `[n, width]`), added into an output with row stride `out_rs`. The
/// weight may be f32 or a half copy ([`WeightData`]); the sums are f32 either way.
///
/// # Panics
/// When a slice is shorter than these sizes need.
#[allow(clippy::too_many_arguments)]
pub fn rows_dot_cols<'a>(
    w: impl Into<WeightData<'a>>,
    w_rs: usize,
    m: usize,
    x: &[f32],
    width: usize,
    n: usize,
    out: &mut [f32],
    out_rs: usize,
) {
    assert!(m == 0 || n == 0 || out_rs >= n);
    dot_strided(w.into(), w_rs, m, x, width, n, out, (out_rs, 1), MAX_COLS);
}

/// `out[o * os + t * ts] += sum_i w[o * w_rs + i] * x[t * width + i]`: [`rows_dot_cols`] with
/// any output strides, `cols_per_pass` (at most [`MAX_COLS`]) columns of `x` per pass over
/// the weight. With 4 or fewer per pass every column gets the same arithmetic however many
/// there are, so a row of a batch sums to the bits it gets alone.
///
/// # Panics
/// When a slice is shorter than these sizes need.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_strided(
    w: WeightData<'_>,
    w_rs: usize,
    m: usize,
    x: &[f32],
    width: usize,
    n: usize,
    out: &mut [f32],
    (os, ts): (usize, usize),
    cols_per_pass: usize,
) {
    if m == 0 || n == 0 || width == 0 {
        return;
    }
    assert!(w_rs >= width && w.len() >= (m - 1) * w_rs + width);
    assert!(x.len() >= n * width);
    assert!(out.len() > (m - 1) * os + (n - 1) * ts);
    assert!((1..=MAX_COLS).contains(&cols_per_pass));
    let (wp, kind) = w.raw();
    let pass = (cols_per_pass, (os, ts));
    // SAFETY (all three): the sizes were checked above against the slices.
    unsafe {
        match kind {
            W_F32 => dot_raw::<W_F32>(wp, w_rs, m, x, width, n, out, pass, None),
            W_BF16 => dot_raw::<W_BF16>(wp, w_rs, m, x, width, n, out, pass, None),
            _ => dot_raw::<W_F16>(wp, w_rs, m, x, width, n, out, pass, None),
        }
    }
}

thread_local! {
    /// Per-thread copy of `x` in the order the bf16 kernel reads it ([`deinterleave16`]).
    static X_PAIRS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `x` (`n` rows of `width`) with each whole 16-block's even elements first, then its odd
/// ones, the tail as it is: the order in which [`load16`] widens 16 bf16 weights at once
/// (even ones by a shift, odd ones by a mask, with no shuffle).
fn deinterleave16(x: &[f32], width: usize, n: usize, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(&x[..n * width]);
    let w16 = width - width % 16;
    for t in 0..n {
        for b in (0..w16).step_by(16) {
            let src = &x[t * width + b..t * width + b + 16];
            let dst = &mut out[t * width + b..t * width + b + 16];
            for j in 0..8 {
                dst[j] = src[2 * j];
                dst[8 + j] = src[2 * j + 1];
            }
        }
    }
}

/// [`dot_strided`] on a checked weight of storage `W`; `(cols_per_pass, (os, ts))`.
/// `blocks`: `Some((rows, row0))` when `w` is a whole weight of `rows` rows stored in row
/// blocks ([`HalfWeight::new_row_blocks`]) and the pass is over its rows `row0 ..`; `w_rs`
/// is then unused.
///
/// # Safety
/// `w` holds `(m - 1) * w_rs + width` elements of storage `W` (in row blocks: `rows * width`,
/// with `row0 + m <= rows`); the slices are sized as [`dot_strided`] checks.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_raw<const W: u8>(
    w: *const u8,
    w_rs: usize,
    m: usize,
    x: &[f32],
    width: usize,
    n: usize,
    out: &mut [f32],
    (per_pass, (os, ts)): (usize, (usize, usize)),
    blocks: Option<(usize, usize)>,
) {
    let avx = has_avx2_fma();
    // bf16 weights read `x` in pairs order, 4 columns per pass at most (the kernel's 16-wide
    // loop, the one that reads that order, runs for up to 4 columns).
    let pairs = W == W_BF16;
    let per_pass = if pairs { per_pass.min(4) } else { per_pass };
    // Half weights: slices of the rows whose columns of `x` stay in L1 (rows up to that
    // width whole): with wide rows (Mimi's 512 -> 1024, k 16 conv: 8192) the columns were
    // re-read from L2 for every weight row, which bound the half weights' pass. f32 weights
    // stream whole rows, in one sequential pass (slicing them was slower).
    let kc = if blocks.is_some() {
        ROW_BLOCK
    } else if W == W_F32 || width * n.min(per_pass) <= L1_COL_FLOATS {
        width
    } else {
        (L1_COL_FLOATS / n.min(per_pass)).max(256) / 16 * 16
    };
    let elem = if W == W_F32 { 4 } else { 2 };
    // Where the rows of columns i0 .. i0 + wc start, and their stride.
    let rows_at = |i0: usize, wc: usize| match blocks {
        Some((rows, row0)) => (w.add((rows * i0 + row0 * wc) * elem), 0, wc),
        None => (w, i0, w_rs),
    };
    #[cfg(target_arch = "x86_64")]
    if avx {
        let xs = pairs.then(|| {
            let mut v = X_PAIRS.with(|c| c.take());
            deinterleave16(x, width, n, &mut v);
            v
        });
        let xv = xs.as_deref().unwrap_or(x);
        for t0 in (0..n).step_by(per_pass) {
            let nt = (n - t0).min(per_pass);
            for i0 in (0..width).step_by(kc) {
                let wc = (width - i0).min(kc);
                let xp = xv.as_ptr().add(t0 * width + i0);
                let op = out.as_mut_ptr().add(t0 * ts);
                let (wb, ib, rs) = rows_at(i0, wc);
                let a = (wb, ib, rs, m);
                let o = (op, os, ts);
                match nt {
                    1 => dot_avx2::<W, 1>(a, xp, width, wc, o),
                    2 => dot_avx2::<W, 2>(a, xp, width, wc, o),
                    3 => dot_avx2::<W, 3>(a, xp, width, wc, o),
                    4 => dot_avx2::<W, 4>(a, xp, width, wc, o),
                    5 => dot_avx2::<W, 5>(a, xp, width, wc, o),
                    6 => dot_avx2::<W, 6>(a, xp, width, wc, o),
                    7 => dot_avx2::<W, 7>(a, xp, width, wc, o),
                    _ => dot_avx2::<W, 8>(a, xp, width, wc, o),
                }
            }
        }
        if let Some(v) = xs {
            X_PAIRS.with(|c| c.set(v));
        }
        return;
    }
    let _ = (avx, pairs);
    for i0 in (0..width).step_by(kc) {
        let wc = (width - i0).min(kc);
        let (wb, ib, rs) = rows_at(i0, wc);
        for o in 0..m {
            for t in 0..n {
                let xr = &x[t * width + i0..t * width + i0 + wc];
                out[o * os + t * ts] += dot_portable::<W>(wb, o * rs + ib, xr);
            }
        }
    }
}

/// A dot product of `b` with the weights from element `at` on, in 8 independent lanes (so
/// the compiler vectorises it).
///
/// # Safety
/// `w` holds `at + b.len()` elements of storage `W`.
unsafe fn dot_portable<const W: u8>(w: *const u8, at: usize, b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let split = b.len() - b.len() % 8;
    for i in (0..split).step_by(8) {
        for j in 0..8 {
            acc[j] += weight_at::<W>(w, at + i + j) * b[i + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (i, q) in b.iter().enumerate().skip(split) {
        s += weight_at::<W>(w, at + i) * q;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Floats of `x`'s columns one pass of [`dot_raw`] keeps in L1 (16 KiB).
const L1_COL_FLOATS: usize = 4096;

/// [`dot_raw`] over weight columns `i0 .. i0 + wc` (`(w, i0, w_rs, m)`: `m` rows at stride
/// `w_rs`) for `N` columns of `x` (row stride `x_rs`, already offset to `i0`), into `(out,
/// os, ts)`. Up to 4 columns go through [`row_cols_avx2`] two at a time, each weight row read
/// from memory once (the second pair re-reads it from L1); more columns keep one accumulator
/// each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn dot_avx2<const W: u8, const N: usize>(
    (w, i0, w_rs, m): (*const u8, usize, usize, usize),
    x: *const f32,
    x_rs: usize,
    wc: usize,
    (out, os, ts): (*mut f32, usize, usize),
) {
    use std::arch::x86_64::*;
    // The 16-wide loops read bf16 weights in pairs order; the 8-wide one in plain order.
    debug_assert!(W != W_BF16 || N <= 4);
    if N <= 4 {
        for o in 0..m {
            let base = o * w_rs + i0;
            let mut t = 0;
            while t < N {
                let (xt, ot) = (x.add(t * x_rs), out.add(o * os + t * ts));
                if N - t >= 2 {
                    row_cols_avx2::<W, 2>(w, base, xt, x_rs, wc, (ot, ts));
                    t += 2;
                } else {
                    row_cols_avx2::<W, 1>(w, base, xt, x_rs, wc, (ot, ts));
                    t += 1;
                }
            }
        }
        return;
    }
    let w8 = wc - wc % 8;
    for o in 0..m {
        let base = o * w_rs + i0;
        let mut a0 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i < w8 {
            let v0 = load8::<W>(w, base + i);
            for t in 0..N {
                a0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(t * x_rs + i)), v0, a0[t]);
            }
            i += 8;
        }
        for t in 0..N {
            let mut s = hsum(a0[t]);
            for j in w8..wc {
                s += weight_at::<W>(w, base + j) * *x.add(t * x_rs + j);
            }
            *out.add(o * os + t * ts) += s;
        }
    }
}

/// Sixteen weights from `w + i` of storage `W` as two vectors: for bf16 the even-indexed ones
/// (a shift) and the odd-indexed ones (a mask), the order [`deinterleave16`] gives `x`; for
/// the other storages the first eight and the next eight.
///
/// # Safety
/// As [`load8`], for 16 elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load16<const W: u8>(
    w: *const u8,
    i: usize,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    if W == W_BF16 {
        let v = _mm256_loadu_si256(w.cast::<u16>().add(i).cast());
        let odd = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)),
            _mm256_castsi256_ps(_mm256_and_si256(v, odd)),
        )
    } else {
        (load8::<W>(w, i), load8::<W>(w, i + 8))
    }
}

/// How far ahead of the kernel [`row_cols_avx2`] prefetches half weights (into L2). A
/// half-weight stream does twice the arithmetic per cache line of an f32 one, and the
/// core's own prefetch did not keep enough lines in flight: over 128 MB of 512-wide bf16
/// rows against two columns, 12.6 -> 20.8 GB/s (1536 rows: 14.9 -> 26.0); 64 KiB was the
/// best of 2-128 KiB, and T0 hints a few KiB ahead gained little. f32 weights read at
/// 23-27 GB/s without it, and lost 5-10% with it.
const HALF_PREFETCH_BYTES: usize = 64 << 10;

/// One weight row (from `base`, `wc` long) against `P` (1 or 2) columns of `x`, added into
/// `out[t * ts]`. Each column keeps four accumulators over 32 weights a step, so the sums are
/// not bound by the FMA latency and one row streams at memory speed (two had held a bf16 row
/// to about 14 GB/s, where one core reads 27 GB/s here). Every column gets this arithmetic
/// whatever `P` and whatever the other columns: a row of a batch sums to the bits it gets
/// alone.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `base + wc` elements of storage `W`; `x` holds
/// `P` rows of `wc` floats at stride `x_rs`; `out` holds `(P - 1) * ts + 1` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn row_cols_avx2<const W: u8, const P: usize>(
    w: *const u8,
    base: usize,
    x: *const f32,
    x_rs: usize,
    wc: usize,
    (out, ts): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    let (w32, w16, w8) = (wc - wc % 32, wc - wc % 16, wc - wc % 8);
    let mut a = [[_mm256_setzero_ps(); 4]; P];
    let mut i = 0;
    while i < w32 {
        if W != W_F32 {
            // One line of half weights per step: ask for the line HALF_PREFETCH_BYTES on (past
            // the weight's end it is a harmless hint; hence the wrapping pointer arithmetic).
            let ahead = w.wrapping_add((base + i) * 2 + HALF_PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
        }
        let (v0, v1) = load16::<W>(w, base + i);
        let (v2, v3) = load16::<W>(w, base + i + 16);
        for t in 0..P {
            let xr = x.add(t * x_rs + i);
            a[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), v0, a[t][0]);
            a[t][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), v1, a[t][1]);
            a[t][2] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(16)), v2, a[t][2]);
            a[t][3] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(24)), v3, a[t][3]);
        }
        i += 32;
    }
    if i < w16 {
        let (v0, v1) = load16::<W>(w, base + i);
        for t in 0..P {
            let xr = x.add(t * x_rs + i);
            a[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), v0, a[t][0]);
            a[t][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), v1, a[t][1]);
        }
        i += 16;
    }
    while i < w8 {
        let v0 = load8::<W>(w, base + i);
        for t in 0..P {
            a[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(t * x_rs + i)), v0, a[t][0]);
        }
        i += 8;
    }
    for t in 0..P {
        let [a0, a1, a2, a3] = a[t];
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for j in w8..wc {
            s += weight_at::<W>(w, base + j) * *x.add(t * x_rs + j);
        }
        *out.add(t * ts) += s;
    }
}

/// `acc[t * rows + r] += sum_c w[c * w_rs + r] * x[c * n + t]` for `r < rows`, `t < n`,
/// `c < cn`: the weight `[cn, rows]` (row stride `w_rs`; f32 or a half copy) read row by row,
/// each row scaled by the `n` values of `x` `[cn, n]` and added into `n` accumulator rows. The
/// reduction runs over the weight's rows (a conv-transpose's input channels), so the sums live
/// in an L1-sized block of `acc` rather than in registers.
///
/// # Panics
/// When a slice is shorter than these sizes need.
pub fn cols_axpy<'a>(
    w: impl Into<WeightData<'a>>,
    w_rs: usize,
    cn: usize,
    rows: usize,
    x: &[f32],
    n: usize,
    acc: &mut [f32],
) {
    let w = w.into();
    if cn == 0 || rows == 0 || n == 0 {
        return;
    }
    assert!(w_rs >= rows && w.len() >= (cn - 1) * w_rs + rows);
    assert!(x.len() >= cn * n && acc.len() >= n * rows);
    let (wp, kind) = w.raw();
    // SAFETY: the sizes were checked above against the slices.
    unsafe {
        match kind {
            W_F32 => cols_axpy_raw::<W_F32>(wp, w_rs, cn, rows, x, n, acc),
            W_BF16 => cols_axpy_raw::<W_BF16>(wp, w_rs, cn, rows, x, n, acc),
            _ => cols_axpy_raw::<W_F16>(wp, w_rs, cn, rows, x, n, acc),
        }
    }
}

/// [`cols_axpy`] on a checked weight of storage `W`.
///
/// # Safety
/// `w` holds `(cn - 1) * w_rs + rows` elements of storage `W`; `x` and `acc` are sized as
/// [`cols_axpy`] checks.
unsafe fn cols_axpy_raw<const W: u8>(
    w: *const u8,
    w_rs: usize,
    cn: usize,
    rows: usize,
    x: &[f32],
    n: usize,
    acc: &mut [f32],
) {
    let avx = has_avx2_fma();
    // Accumulator block of ~16 KiB (L1) per pass over the channels.
    let rb = ((4096 / n.min(MAX_COLS)) / 8 * 8).max(64);
    for r0 in (0..rows).step_by(rb) {
        let rc = (rows - r0).min(rb);
        #[cfg(target_arch = "x86_64")]
        if avx {
            for t0 in (0..n).step_by(MAX_COLS) {
                let nt = (n - t0).min(MAX_COLS);
                let ap = acc.as_mut_ptr().add(r0);
                axpy_avx2::<W>(w, r0, w_rs, cn, rc, x.as_ptr(), n, (t0, nt), ap, rows);
            }
            continue;
        }
        let _ = avx;
        for c in 0..cn {
            for t in 0..n {
                let s = x[c * n + t];
                let ar = &mut acc[t * rows + r0..t * rows + r0 + rc];
                for (j, a) in ar.iter_mut().enumerate() {
                    *a += weight_at::<W>(w, c * w_rs + r0 + j) * s;
                }
            }
        }
    }
}

/// One accumulator block of [`cols_axpy`]: rows `r0 .. r0 + rc`, columns `t0 .. t0 + nt`
/// (`nt <= MAX_COLS`); four weight rows are loaded once per 8 rows and added into every
/// column's accumulators (`acc` already offset to `r0`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn axpy_avx2<const W: u8>(
    w: *const u8,
    r0: usize,
    w_rs: usize,
    cn: usize,
    rc: usize,
    x: *const f32,
    n: usize,
    (t0, nt): (usize, usize),
    acc: *mut f32,
    rows: usize,
) {
    use std::arch::x86_64::*;
    let r8 = rc - rc % 8;
    let mut c = 0;
    while c < cn {
        let cb = (cn - c).min(4);
        let base = c * w_rs + r0;
        let mut bx = [[_mm256_setzero_ps(); 4]; MAX_COLS];
        for t in 0..nt {
            for cc in 0..cb {
                bx[t][cc] = _mm256_set1_ps(*x.add((c + cc) * n + t0 + t));
            }
        }
        let mut r = 0;
        if cb == 4 {
            while r < r8 {
                if W != W_F32 && r % 32 == 0 {
                    // Half weights: the same line of the rows two channel blocks on (see
                    // HALF_PREFETCH_BYTES).
                    for cc in 8..12 {
                        let ahead = w.wrapping_add((base + cc * w_rs + r) * 2);
                        _mm_prefetch::<_MM_HINT_T1>(ahead.cast());
                    }
                }
                let v0 = load8::<W>(w, base + r);
                let v1 = load8::<W>(w, base + w_rs + r);
                let v2 = load8::<W>(w, base + 2 * w_rs + r);
                let v3 = load8::<W>(w, base + 3 * w_rs + r);
                for t in 0..nt {
                    let at = acc.add((t0 + t) * rows + r);
                    let mut a = _mm256_loadu_ps(at);
                    a = _mm256_fmadd_ps(v0, bx[t][0], a);
                    a = _mm256_fmadd_ps(v1, bx[t][1], a);
                    a = _mm256_fmadd_ps(v2, bx[t][2], a);
                    a = _mm256_fmadd_ps(v3, bx[t][3], a);
                    _mm256_storeu_ps(at, a);
                }
                r += 8;
            }
        }
        // The last rows, or all of them for a last block of fewer than 4 channels.
        for rr in r..rc {
            for t in 0..nt {
                let at = acc.add((t0 + t) * rows + rr);
                let mut a = *at;
                for cc in 0..cb {
                    a += weight_at::<W>(w, base + cc * w_rs + rr) * *x.add((c + cc) * n + t0 + t);
                }
                *at = a;
            }
        }
        c += cb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Half weights give the f32 kernel's result on the rounded weights (f16 bit for bit up
    /// to an L1 slice of a row, bf16 and wider f16 rows to rounding: bf16 blocks and wide
    /// half rows sum in another order), for every column count
    /// (passes of 1..8 columns), awkward widths, row strides wider than the rows, and the
    /// L1-sized slices of wide rows; `cols_axpy` likewise.
    #[test]
    fn half_weights_equal_f32_on_rounded_weights() {
        for &(m, width, w_rs) in &[
            (5, 7, 7),
            (3, 16, 20),
            (9, 37, 40),
            (4, 300, 300),
            (3, 5000, 5003),
        ] {
            let w = values((m - 1) * w_rs + width, 7 + width as u32);
            for n in 1..=9 {
                let x = values(n * width, 11 + n as u32);
                for bf in [true, false] {
                    let kind = if bf {
                        StepWeights::Bf16
                    } else {
                        StepWeights::F16
                    };
                    let t = candle_core::Tensor::from_slice(&w, w.len(), &candle_core::Device::Cpu);
                    let h = HalfWeight::new(&t.unwrap(), kind).unwrap().unwrap();
                    let data = h.data();
                    // What the kernel widens: each weight rounded to the half storage.
                    let rounded: Vec<f32> = w
                        .iter()
                        .map(|&v| match bf {
                            true => half::bf16::from_f32(v).to_f32(),
                            false => half::f16::from_f32(v).to_f32(),
                        })
                        .collect();
                    let mut got = vec![0.5f32; m * n];
                    rows_dot_cols(data, w_rs, m, &x, width, n, &mut got, n);
                    let mut want = vec![0.5f32; m * n];
                    rows_dot_cols(rounded.as_slice(), w_rs, m, &x, width, n, &mut want, n);
                    // Half rows wider than an L1 slice sum slice by slice (f32 rows whole).
                    let sliced = width * n.min(MAX_COLS) > L1_COL_FLOATS;
                    let tol = if bf || sliced {
                        width as f32 * 2.0 * f32::EPSILON
                    } else {
                        0.0
                    };
                    for (g, e) in got.iter().zip(&want) {
                        assert!(
                            (g - e).abs() <= tol,
                            "bf16 {bf} m {m} width {width} n {n}: {g} vs {e}"
                        );
                    }
                    // The transpose-side kernel over the same weight as [m, width] rows.
                    let xc = values(m * n, 5);
                    let (mut ga, mut wa) = (vec![0.25f32; n * width], vec![0.25f32; n * width]);
                    cols_axpy(data, w_rs, m, width, &xc, n, &mut ga);
                    cols_axpy(rounded.as_slice(), w_rs, m, width, &xc, n, &mut wa);
                    assert_eq!(ga, wa, "cols_axpy bf16 {bf} m {m} width {width} n {n}");
                }
            }
        }
    }

    /// A half weight stored in row blocks gives the row-major copy's sums to rounding, and
    /// each column's bits do not depend on how many columns a call has or which of the rows
    /// it asks for.
    #[test]
    fn row_blocks_match_row_major_and_ignore_the_column_count() {
        let (rows, width) = (7, 2 * ROW_BLOCK + 37);
        let w = values(rows * width, 21);
        let t = candle_core::Tensor::from_slice(&w, (rows, width), &candle_core::Device::Cpu);
        let t = t.unwrap();
        for kind in [StepWeights::Bf16, StepWeights::F16] {
            let blocked = HalfWeight::new_row_blocks(&t, kind).unwrap().unwrap();
            let plain = HalfWeight::new(&t, kind).unwrap().unwrap();
            assert!(blocked.blocks.is_some() && plain.blocks.is_none());
            assert_eq!(blocked.len(), rows * width);
            let x = values(4 * width, 22);
            let alone: Vec<Vec<f32>> = (0..4)
                .map(|c| {
                    let mut o = vec![0.0f32; rows];
                    let xc = &x[c * width..(c + 1) * width];
                    blocked.rows_dot_cols(0, rows, xc, width, 1, &mut o, 1);
                    o
                })
                .collect();
            for n in 1..=4 {
                let mut got = vec![0.0f32; rows * n];
                blocked.rows_dot_cols(0, rows, &x, width, n, &mut got, n);
                let mut want = vec![0.0f32; rows * n];
                plain.rows_dot_cols(0, rows, &x, width, n, &mut want, n);
                for r in 0..rows {
                    for c in 0..n {
                        assert_eq!(got[r * n + c], alone[c][r], "{kind} n {n} row {r} col {c}");
                        let (g, e) = (got[r * n + c], want[r * n + c]);
                        assert!(
                            (g - e).abs() <= width as f32 * 2.0 * f32::EPSILON,
                            "{g} {e}"
                        );
                    }
                }
                // Rows 2..5 alone: the same bits as in the whole pass.
                let mut part = vec![0.0f32; 3 * n];
                blocked.rows_dot_cols(2, 3, &x, width, n, &mut part, n);
                assert_eq!(part, got[2 * n..5 * n].to_vec(), "{kind} n {n} rows 2..5");
            }
        }
    }

    /// A sum of products against a plain f64 reference, for f32 weights.
    #[test]
    fn rows_dot_cols_sums_rows_against_columns() {
        let (m, width, n) = (6, 53, 5);
        let w = values(m * width, 3);
        let x = values(n * width, 4);
        let mut out = vec![1f32; m * n];
        rows_dot_cols(w.as_slice(), width, m, &x, width, n, &mut out, n);
        for o in 0..m {
            for t in 0..n {
                let want: f64 = 1.0
                    + (0..width)
                        .map(|i| w[o * width + i] as f64 * x[t * width + i] as f64)
                        .sum::<f64>();
                assert!((out[o * n + t] as f64 - want).abs() < 1e-5, "{o} {t}");
            }
        }
    }
}
