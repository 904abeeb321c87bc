//! Vectorised `exp`, `sigmoid`, `tanh` and `elu` over f32 slices, and the gated activation
//! `tanh(a) * sigmoid(b)` of WaveNet-style flows, for CPU inference.
//!
//! candle's CPU unary ops call libm once per element on one thread; in the OpenVoice converter
//! `tanhf` and `expm1f` alone were 19% of a conversion. Here `exp` is 8 lanes at a time (AVX2 +
//! FMA, picked at run time; elsewhere the standard library's), accurate to a few ulp, and
//! `sigmoid`/`tanh` are built on it with an absolute error below 1e-6.

use candle_core::{bail, Result, Tensor};

use crate::cpu::{is_untracked_cpu_f32, with_contiguous_f32};

/// Elements per parallel chunk of the tensor ops (below two chunks they run serially).
const CHUNK: usize = 1 << 14;

/// Largest and smallest arguments whose `exp` stays a finite, normal f32; beyond them `exp`
/// returns the bound's value (`sigmoid` and `tanh` are then saturated to far below 1e-6).
const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.0;

/// `v[i] = exp(v[i])` (inputs outside [-87, 88] are clamped to it).
pub fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let (body, tail) = v.split_at_mut(v.len() - v.len() % LANES);
            for c in body.chunks_exact_mut(LANES) {
                // SAFETY: the features were just detected; `c` has LANES elements.
                unsafe { exp8_avx2(c) };
            }
            if !tail.is_empty() {
                // The tail goes through a padded lane, so every element gets the same arithmetic.
                let mut lane = [0f32; LANES];
                lane[..tail.len()].copy_from_slice(tail);
                // SAFETY: as above.
                unsafe { exp8_avx2(&mut lane) };
                tail.copy_from_slice(&lane[..tail.len()]);
            }
            return;
        }
    }
    v.iter_mut()
        .for_each(|x| *x = x.clamp(EXP_LO, EXP_HI).exp());
}

/// `v[i] = elu(v[i], alpha)`: `v` where its sign is positive, else `(exp(v) - 1) * alpha`
/// (candle's formula, with the vectorised `exp`: within a few ulp of `Tensor::elu`). A SEANet
/// activates every conv input with it; libm's scalar `expf` was 8% of a streaming Mimi frame.
pub fn elu_in_place(v: &mut [f32], alpha: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            let done = unsafe { elu_avx2(v, alpha) };
            let tail = &mut v[done..];
            if !tail.is_empty() {
                // The tail goes through a padded lane, so every element gets the same arithmetic.
                let mut lane = [0f32; LANES];
                lane[..tail.len()].copy_from_slice(tail);
                // SAFETY: as above.
                unsafe { elu_avx2(&mut lane, alpha) };
                tail.copy_from_slice(&lane[..tail.len()]);
            }
            return;
        }
    }
    v.iter_mut().for_each(|x| {
        if !x.is_sign_positive() {
            *x = (x.clamp(EXP_LO, 0.0).exp() - 1.0) * alpha;
        }
    });
}

/// `v[i] = 1 / (1 + exp(-v[i]))`.
pub fn sigmoid_in_place(v: &mut [f32]) {
    for c in v.chunks_mut(LANES * 64) {
        c.iter_mut().for_each(|x| *x = -*x);
        exp_in_place(c);
        c.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
    }
}

/// `v[i] = tanh(v[i])`, as `1 - 2 / (exp(2x) + 1)` (absolute error below 1e-6).
pub fn tanh_in_place(v: &mut [f32]) {
    for c in v.chunks_mut(LANES * 64) {
        c.iter_mut().for_each(|x| *x *= 2.0);
        exp_in_place(c);
        c.iter_mut().for_each(|e| *e = 1.0 - 2.0 / (*e + 1.0));
    }
}

/// `tanh(x[:, :H] + bias[:, :H]) * sigmoid(x[:, H:] + bias[:, H:])` for `x` `[B, 2H, T]` and an
/// optional per-item `bias` `[B, 2H, 1]` (WaveNet's conditioning), as `[B, H, T]`. One pass on
/// an untracked CPU f32 tensor (parallel over rows when big); other tensors go through candle.
pub fn gated_tanh_sigmoid(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, h2, t) = x.dims3()?;
    if h2 % 2 != 0 {
        bail!("gated_tanh_sigmoid: {h2} channels do not split into two halves");
    }
    let h = h2 / 2;
    if let Some(g) = bias {
        if g.dims() != [b, h2, 1] {
            bail!(
                "gated_tanh_sigmoid: bias {:?} for an input {:?}",
                g.dims(),
                x.dims()
            );
        }
    }
    if !(is_untracked_cpu_f32(x) && bias.is_none_or(is_untracked_cpu_f32)) {
        let x = match bias {
            Some(g) => x.broadcast_add(g)?,
            None => x.clone(),
        };
        let a = x.narrow(1, 0, h)?.tanh()?;
        return a * candle_nn::ops::sigmoid(&x.narrow(1, h, h)?)?;
    }
    let x = x.contiguous()?;
    let bias = bias
        .map(|g| g.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let mut out = vec![0f32; b * h * t];
    with_contiguous_f32(&x, "gated_tanh_sigmoid", |src| {
        // Output row `r` = (item i, channel c) reads rows (i, c) and (i, H + c) of `x`.
        let row = |r: usize, o: &mut [f32]| {
            let (i, c) = (r / h, r % h);
            let (ga, gs) = match &bias {
                Some(g) => (g[i * h2 + c], g[i * h2 + h + c]),
                None => (0.0, 0.0),
            };
            let a = &src[(i * h2 + c) * t..][..t];
            let s = &src[(i * h2 + h + c) * t..][..t];
            let mut gate = [0f32; LANES * 64];
            for ((o, a), s) in o
                .chunks_mut(gate.len())
                .zip(a.chunks(gate.len()))
                .zip(s.chunks(gate.len()))
            {
                let g = &mut gate[..o.len()];
                o.iter_mut().zip(a).for_each(|(o, a)| *o = a + ga);
                g.iter_mut().zip(s).for_each(|(g, s)| *g = s + gs);
                tanh_in_place(o);
                sigmoid_in_place(g);
                o.iter_mut().zip(g.iter()).for_each(|(o, g)| *o *= g);
            }
        };
        let rows_per_task = (CHUNK / t.max(1)).max(1);
        if crate::cpu::candle_threads() > 1 && b * h * t >= 2 * CHUNK {
            use rayon::prelude::*;
            out.par_chunks_mut(rows_per_task * t)
                .enumerate()
                .for_each(|(k, o)| {
                    for (j, o) in o.chunks_mut(t).enumerate() {
                        row(k * rows_per_task + j, o);
                    }
                });
        } else {
            for (r, o) in out.chunks_mut(t.max(1)).enumerate() {
                row(r, o);
            }
        }
    })?;
    Tensor::from_vec(out, (b, h, t), x.device())
}

const LANES: usize = 8;

/// `dst[i] = max(src[i], 0) + min(src[i], 0) * slope` (candle's `leaky_relu`), with AVX2 where
/// the CPU has it (the same arithmetic: no contraction into FMAs), else 128-bit vectors.
pub fn leaky_relu_copy(dst: &mut [f32], src: &[f32], slope: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected.
        unsafe { leaky_relu_copy_avx2(dst, src, slope) };
        return;
    }
    leaky_relu_copy_any(dst, src, slope);
}

/// [`leaky_relu_copy`] in place.
pub fn leaky_relu_in_place(v: &mut [f32], slope: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2_fma() {
        // SAFETY: the features were just detected.
        unsafe { leaky_relu_in_place_avx2(v, slope) };
        return;
    }
    leaky_relu_in_place_any(v, slope);
}

#[inline(always)]
fn leaky(x: f32, slope: f32) -> f32 {
    x.max(0.0) + x.min(0.0) * slope
}

#[inline(always)]
fn leaky_relu_copy_any(dst: &mut [f32], src: &[f32], slope: f32) {
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &x)| *d = leaky(x, slope));
}

#[inline(always)]
fn leaky_relu_in_place_any(v: &mut [f32], slope: f32) {
    v.iter_mut().for_each(|x| *x = leaky(*x, slope));
}

/// The portable loop compiled for AVX2 (it vectorises to 256-bit lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn leaky_relu_copy_avx2(dst: &mut [f32], src: &[f32], slope: f32) {
    leaky_relu_copy_any(dst, src, slope);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn leaky_relu_in_place_avx2(v: &mut [f32], slope: f32) {
    leaky_relu_in_place_any(v, slope);
}

/// `exp` of 8 lanes: `x = n ln2 + r` with `|r| <= ln2 / 2`, `exp(r)` by a degree-7 polynomial
/// (the classic single-precision minimax coefficients, relative error ~1e-7), times `2^n` built
/// in the exponent bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8_avx2(v: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(v.len(), LANES);
    let p = v.as_mut_ptr();
    _mm256_storeu_ps(p, exp_ps(_mm256_loadu_ps(p)));
}

/// `exp` of 8 lanes in registers (see [`exp8_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_ps(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
        _mm256_set1_ps(EXP_HI),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 split in two so that `n * LN2_HI` is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    // exp(r) = 1 + r + r^2 * y
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
}

/// [`elu_in_place`] over whole lanes; returns how many leading elements it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn elu_avx2(v: &mut [f32], alpha: f32) -> usize {
    use std::arch::x86_64::*;
    let n = v.len() - v.len() % LANES;
    let (zero, one, a) = (
        _mm256_setzero_ps(),
        _mm256_set1_ps(1.0),
        _mm256_set1_ps(alpha),
    );
    for i in (0..n).step_by(LANES) {
        let p = v.as_mut_ptr().add(i);
        let x = _mm256_loadu_ps(p);
        let neg = _mm256_mul_ps(_mm256_sub_ps(exp_ps(_mm256_min_ps(x, zero)), one), a);
        // The sign bit picks: `x` where it is clear (candle's `is_sign_positive`).
        _mm256_storeu_ps(p, _mm256_blendv_ps(x, neg, x));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn grid() -> Vec<f32> {
        (0..20_001).map(|i| -100.0 + i as f32 * 0.01).collect()
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        let xs: Vec<f32> = grid()
            .into_iter()
            .filter(|x| (-87.0..=88.0).contains(x))
            .collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            let want = (*x as f64).exp();
            let rel = ((*y as f64 - want) / want).abs();
            assert!(
                rel < 4e-7,
                "exp({x}) = {y}, want {want} (relative error {rel:e})"
            );
        }
    }

    #[test]
    fn exp_saturates_instead_of_overflowing() {
        let mut v = vec![f32::MAX, 1000.0, -1000.0, f32::MIN, 0.0];
        exp_in_place(&mut v);
        assert!(v.iter().all(|y| y.is_finite() && *y > 0.0), "{v:?}");
        assert_eq!(v[4], 1.0);
    }

    #[test]
    fn sigmoid_and_tanh_match_f64_to_1e_6() {
        let xs = grid();
        let (mut s, mut t) = (xs.clone(), xs.clone());
        sigmoid_in_place(&mut s);
        tanh_in_place(&mut t);
        for ((x, s), t) in xs.iter().zip(&s).zip(&t) {
            let x = *x as f64;
            assert!(
                (*s as f64 - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6,
                "sigmoid({x})"
            );
            assert!((*t as f64 - x.tanh()).abs() < 1e-6, "tanh({x}) = {t}");
        }
    }

    #[test]
    fn gated_activation_matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Odd T (lane tails), rows enough for the parallel split, with and without bias.
        for (b, h, t) in [(2usize, 3usize, 13usize), (3, 40, 301)] {
            let x = (Tensor::randn(0f32, 1., (b, 2 * h, t), &dev)? * 3.0)?;
            let g = Tensor::randn(0f32, 1., (b, 2 * h, 1), &dev)?;
            for bias in [None, Some(&g)] {
                let want = {
                    let x = bias.map_or(Ok(x.clone()), |g| x.broadcast_add(g))?;
                    (x.narrow(1, 0, h)?.tanh()? * candle_nn::ops::sigmoid(&x.narrow(1, h, h)?)?)?
                };
                let got = gated_tanh_sigmoid(&x, bias)?;
                let diff = (got - want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(diff < 2e-6, "max difference {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn odd_channel_counts_are_refused() {
        let x = Tensor::zeros((1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(gated_tanh_sigmoid(&x, None).is_err());
    }
}
