//! Few-column kernels that stream a weight matrix from memory once.
//!
//! A streaming step multiplies big weights by a handful of columns (a conv over 2 output
//! steps, a linear over one token). A `gemm` packs the whole weight into its own layout first
//! and then runs a micro-kernel built for many columns, so at such sizes it is bound by that
//! packing. These kernels read each weight row once, in place, and keep all the columns'
//! sums in registers (or in an L1-sized accumulator block): the cost is one pass over the
//! weight at memory bandwidth. AVX2 + FMA when the CPU has them (detected at run time), else
//! portable loops. Both sum in another order than a `gemm`, so they agree with it to float
//! rounding, not bit for bit.

/// Columns one pass keeps in registers; more columns take more passes over the weight.
pub const MAX_COLS: usize = 8;

/// Whether this CPU runs the AVX2 + FMA kernels.
#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[o * out_rs + t] += sum_i w[o * w_rs + i] * x[t * width + i]` for `o < m`, `t < n`:
/// `m` weight rows of `width` (at row stride `w_rs`) against `n` contiguous columns stored
/// row by row (`x` is `[n, width]`), added into an output with row stride `out_rs`.
///
/// # Panics
/// When a slice is shorter than these sizes need.
#[allow(clippy::too_many_arguments)]
pub fn rows_dot_cols(
    w: &[f32],
    w_rs: usize,
    m: usize,
    x: &[f32],
    width: usize,
    n: usize,
    out: &mut [f32],
    out_rs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(w_rs >= width && w.len() >= (m - 1) * w_rs + width);
    assert!(x.len() >= n * width);
    assert!(out_rs >= n && out.len() >= (m - 1) * out_rs + n);
    if width == 0 {
        return;
    }
    let avx = has_avx2_fma();
    // Whole rows, so that a contiguous weight streams from memory in one sequential pass
    // (the columns of `x` are re-read from L1/L2, which keeps up at these column counts).
    let kc = width;
    for t0 in (0..n).step_by(MAX_COLS) {
        let nt = (n - t0).min(MAX_COLS);
        for i0 in (0..width).step_by(kc) {
            let wc = (width - i0).min(kc);
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: AVX2 + FMA were detected; every index stays inside the slices
                // checked above.
                unsafe {
                    let (wp, xp) = (w.as_ptr().add(i0), x.as_ptr().add(t0 * width + i0));
                    let op = out.as_mut_ptr().add(t0);
                    match nt {
                        1 => dot_avx2::<1>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        2 => dot_avx2::<2>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        3 => dot_avx2::<3>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        4 => dot_avx2::<4>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        5 => dot_avx2::<5>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        6 => dot_avx2::<6>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        7 => dot_avx2::<7>(wp, w_rs, m, xp, width, wc, op, out_rs),
                        _ => dot_avx2::<8>(wp, w_rs, m, xp, width, wc, op, out_rs),
                    }
                }
                continue;
            }
            let _ = avx;
            for o in 0..m {
                let wr = &w[o * w_rs + i0..o * w_rs + i0 + wc];
                for t in t0..t0 + nt {
                    let xr = &x[t * width + i0..t * width + i0 + wc];
                    out[o * out_rs + t] += dot_portable(wr, xr);
                }
            }
        }
    }
}

/// A dot product in 8 independent lanes (so the compiler vectorises it).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let split = a.len() - a.len() % 8;
    for (ca, cb) in a[..split].chunks_exact(8).zip(b[..split].chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (p, q) in a[split..].iter().zip(&b[split..]) {
        s += p * q;
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

/// [`rows_dot_cols`] over `wc` weight columns for `N` columns of `x` (row stride `x_rs`).
/// Up to 4 columns keep two accumulators each, so one column alone is not bound by the
/// FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn dot_avx2<const N: usize>(
    w: *const f32,
    w_rs: usize,
    m: usize,
    x: *const f32,
    x_rs: usize,
    wc: usize,
    out: *mut f32,
    out_rs: usize,
) {
    use std::arch::x86_64::*;
    let w16 = if N <= 4 { wc - wc % 16 } else { 0 };
    let w8 = wc - wc % 8;
    for o in 0..m {
        let wp = w.add(o * w_rs);
        let mut a0 = [_mm256_setzero_ps(); N];
        let mut a1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i < w16 {
            let v0 = _mm256_loadu_ps(wp.add(i));
            let v1 = _mm256_loadu_ps(wp.add(i + 8));
            for t in 0..N {
                let xr = x.add(t * x_rs + i);
                a0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), v0, a0[t]);
                a1[t] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), v1, a1[t]);
            }
            i += 16;
        }
        while i < w8 {
            let v0 = _mm256_loadu_ps(wp.add(i));
            for t in 0..N {
                a0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(t * x_rs + i)), v0, a0[t]);
            }
            i += 8;
        }
        for t in 0..N {
            let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
            for j in w8..wc {
                s += *wp.add(j) * *x.add(t * x_rs + j);
            }
            *out.add(o * out_rs + t) += s;
        }
    }
}

/// `acc[t * rows + r] += sum_c w[c * w_rs + r] * x[c * n + t]` for `r < rows`, `t < n`,
/// `c < cn`: the weight `[cn, rows]` (row stride `w_rs`) read row by row, each row scaled by
/// the `n` values of `x` `[cn, n]` and added into `n` accumulator rows. The reduction runs
/// over the weight's rows (a conv-transpose's input channels), so the sums live in an
/// L1-sized block of `acc` rather than in registers.
///
/// # Panics
/// When a slice is shorter than these sizes need.
pub fn cols_axpy(
    w: &[f32],
    w_rs: usize,
    cn: usize,
    rows: usize,
    x: &[f32],
    n: usize,
    acc: &mut [f32],
) {
    if cn == 0 || rows == 0 || n == 0 {
        return;
    }
    assert!(w_rs >= rows && w.len() >= (cn - 1) * w_rs + rows);
    assert!(x.len() >= cn * n && acc.len() >= n * rows);
    let avx = has_avx2_fma();
    // Accumulator block of ~16 KiB (L1) per pass over the channels.
    let rb = ((4096 / n.min(MAX_COLS)) / 8 * 8).max(64);
    for r0 in (0..rows).step_by(rb) {
        let rc = (rows - r0).min(rb);
        #[cfg(target_arch = "x86_64")]
        if avx {
            for t0 in (0..n).step_by(MAX_COLS) {
                let nt = (n - t0).min(MAX_COLS);
                // SAFETY: AVX2 + FMA were detected; indices stay inside the checked slices.
                unsafe {
                    let (wp, ap) = (w.as_ptr().add(r0), acc.as_mut_ptr().add(r0));
                    axpy_avx2(wp, w_rs, cn, rc, x.as_ptr(), n, (t0, nt), ap, rows);
                }
            }
            continue;
        }
        let _ = avx;
        for c in 0..cn {
            let wr = &w[c * w_rs + r0..c * w_rs + r0 + rc];
            for t in 0..n {
                let s = x[c * n + t];
                let ar = &mut acc[t * rows + r0..t * rows + r0 + rc];
                ar.iter_mut().zip(wr).for_each(|(a, &v)| *a += v * s);
            }
        }
    }
}

/// One accumulator block of [`cols_axpy`]: rows `r0 .. r0 + rc` (`w` already offset to `r0`),
/// columns `t0 .. t0 + nt` (`nt <= MAX_COLS`); four weight rows are loaded once per 8 rows
/// and added into every column's accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn axpy_avx2(
    w: *const f32,
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
        let wp = w.add(c * w_rs);
        let mut bx = [[_mm256_setzero_ps(); 4]; MAX_COLS];
        for t in 0..nt {
            for cc in 0..cb {
                bx[t][cc] = _mm256_set1_ps(*x.add((c + cc) * n + t0 + t));
            }
        }
        let mut r = 0;
        if cb == 4 {
            while r < r8 {
                let v0 = _mm256_loadu_ps(wp.add(r));
                let v1 = _mm256_loadu_ps(wp.add(w_rs + r));
                let v2 = _mm256_loadu_ps(wp.add(2 * w_rs + r));
                let v3 = _mm256_loadu_ps(wp.add(3 * w_rs + r));
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
                    a += *wp.add(cc * w_rs + rr) * *x.add((c + cc) * n + t0 + t);
                }
                *at = a;
            }
        }
        c += cb;
    }
}
