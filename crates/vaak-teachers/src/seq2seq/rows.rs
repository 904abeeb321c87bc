//! `x @ W^T (+ b)` for the few rows of a decoder step, on a CPU with AVX-512, read straight from
//! the `[in, out]` weight that [`super::layers::Linear`] keeps.
//!
//! A greedy step at batch 32 is 32 rows against every projection and the output head; there
//! candle's gemm (8-lane kernels, a 16 x 6 tile that leaves a 16 x 2 edge at 8 or 32 rows) ran at
//! about 52 GFLOP/s on one core where PyTorch's ran at 60 to 80, and the gemm was three quarters
//! of a generation. Here each task takes a panel of 64 output columns and runs every block of up
//! to 6 rows over it: 24 accumulators of 16 lanes, one broadcast of `x` and four loads of the
//! weight row per step of the sum, so the panel (`in x 64` floats) stays in L2 while the row
//! blocks reuse it. The last panel's missing columns are masked, never read or written. Sums run
//! over `in` in order, so results equal the gemm's to float rounding.

/// Rows up to which [`rows_times`] is used (decoder steps; encoder passes go to the gemm).
pub const MAX_ROWS: usize = 64;

/// Output columns per panel (four 16-lane registers).
const NR: usize = 64;

/// Multiply-adds below which a product runs on the calling thread alone.
const PARALLEL_MIN: usize = 1 << 18;

/// Whether this CPU runs [`rows_times`].
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The output pointer, shared by the panel tasks (each writes its own columns).
struct Out(*mut f32);
// SAFETY: tasks write disjoint columns of the buffer, which outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `out[r, j] = sum_i x[r, i] * w_t[i, j] (+ bias[j])` for `x` `[rows, k]`, `w_t` `[k, n]` and
/// `out` `[rows, n]`, row-major. Panics when [`available`] is false or the lengths disagree.
pub fn rows_times(x: &[f32], w_t: &[f32], k: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    assert!(available(), "rows_times needs AVX-512");
    assert!(k > 0 && x.len().is_multiple_of(k) && w_t.len().is_multiple_of(k));
    let (rows, n) = (x.len() / k, w_t.len() / k);
    assert_eq!(out.len(), rows * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    if rows == 0 || n == 0 {
        return;
    }
    let dst = Out(out.as_mut_ptr());
    let panel = |p: usize| {
        let j0 = p * NR;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 was checked; every pointer stays inside its slice for the `cols`
        // columns read or written (the rest are masked off), and panels write disjoint columns.
        unsafe {
            avx512::panel(
                x.as_ptr(),
                (rows, k, n),
                w_t.as_ptr().add(j0),
                (n - j0).min(NR),
                bias.map_or(std::ptr::null(), |b| b.as_ptr().add(j0)),
                dst.get().add(j0),
            )
        }
    };
    let panels = n.div_ceil(NR);
    if rayon::current_num_threads() > 1 && rows * k * n >= PARALLEL_MIN {
        use rayon::prelude::*;
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows per register block.
    const MR: usize = 6;

    /// One panel of `cols <= 64` columns starting at `w` / `bias` / `out` (already offset to
    /// the panel), for all `rows` of `x`; `n` is the row stride of `w` and `out`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel(
        x: *const f32,
        (rows, k, n): (usize, usize, usize),
        w: *const f32,
        cols: usize,
        bias: *const f32,
        out: *mut f32,
    ) {
        let mask = |g: usize| -> __mmask16 {
            let lanes = cols.saturating_sub(16 * g).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        };
        let m = [mask(0), mask(1), mask(2), mask(3)];
        let mut r0 = 0;
        while r0 < rows {
            let mr = (rows - r0).min(MR);
            let (xr, or) = (x.add(r0 * k), out.add(r0 * n));
            match mr {
                6 => block::<6>(xr, k, w, n, m, bias, or),
                5 => block::<5>(xr, k, w, n, m, bias, or),
                4 => block::<4>(xr, k, w, n, m, bias, or),
                3 => block::<3>(xr, k, w, n, m, bias, or),
                2 => block::<2>(xr, k, w, n, m, bias, or),
                _ => block::<1>(xr, k, w, n, m, bias, or),
            }
            r0 += mr;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const M: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        n: usize,
        m: [__mmask16; 4],
        bias: *const f32,
        out: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        for i in 0..k {
            let wr = w.add(i * n);
            let b = [
                _mm512_maskz_loadu_ps(m[0], wr),
                _mm512_maskz_loadu_ps(m[1], wr.add(16)),
                _mm512_maskz_loadu_ps(m[2], wr.add(32)),
                _mm512_maskz_loadu_ps(m[3], wr.add(48)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * k + i));
                for (c, b) in b.iter().enumerate() {
                    acc[c] = _mm512_fmadd_ps(a, *b, acc[c]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, &v) in acc.iter().enumerate() {
                // The bias after the sum, as a matmul followed by a bias add rounds.
                let v = if bias.is_null() {
                    v
                } else {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(m[c], bias.add(16 * c)))
                };
                _mm512_mask_storeu_ps(out.add(r * n + 16 * c), m[c], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rows_times_equals_the_matmul_on_awkward_shapes() {
        if !available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let dev = Device::Cpu;
        for (rows, k, n) in [
            (1, 1, 1),
            (5, 3, 15),
            (6, 37, 16),
            (7, 256, 17),
            (13, 64, 63),
            (32, 256, 200),
            (64, 100, 65),
            (2, 1024, 256),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            let w_t = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let wv = w_t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bv = b.to_vec1::<f32>().unwrap();
            for with_bias in [false, true] {
                let mut got = vec![f32::NAN; rows * n];
                rows_times(&xv, &wv, k, with_bias.then_some(&bv[..]), &mut got);
                let mut want = x.matmul(&w_t).unwrap();
                if with_bias {
                    want = want.broadcast_add(&b).unwrap();
                }
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let tol = 1e-6 * (k as f32).sqrt() * 8.0;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol * w.abs().max(1.0),
                        "{rows}x{k}x{n} bias {with_bias} at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
