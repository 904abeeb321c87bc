//! Attention of a few queries over cached keys and values on the CPU: the decoder step of
//! every vaak transformer (`vaak_nn::transformer`'s streaming steps, the M2M-100 / NLLB
//! decoder in `vaak-teachers`).
//!
//! A decoder step has one query (or a few) per row and head. candle's batched `matmul` runs
//! one tiny gemm per (row, head) for `q k^T` and again for `p v`, one after another on the
//! calling thread, and the keys are transposed and copied first: at batch 128 that serial
//! part held a 2-thread S2S step to the speed of one thread. Here one pass per (item, head)
//! does the scores, the masked softmax and the weighted sum with `vaak_nn::simd`'s
//! few-column kernels, reading keys and values in place, and the (item, head) blocks are
//! split over rayon's pool when there is enough work.
//!
//! Masks are structural ([`KeyLimits`]: each item's key length, causality for several new
//! positions after a cache) and/or an additive `[R, M, S]` tensor shared by all heads (`R`
//! is 1 or the item count), so a ring cache's arbitrary visibility fits too.
//!
//! The arithmetic is the matmul path's: scores `scale * (q . k)` summed in f32, softmax as
//! `exp(s - max) / sum`, the output `sum_j p_j v_j`; the summation order differs and `exp` is
//! the vectorised one of [`crate::activation`], so the two agree to float rounding (checked
//! in the tests). Every (item, head) block gets the same arithmetic however many there are:
//! a row of a batch gets the bits it gets alone.

use candle_core::{bail, Layout, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::{is_untracked_cpu_f32, storage_f32};

/// The name errors give.
const OP: &str = "attention";

/// Query rows per (item, head) up to which [`attention`] is the better path; beyond it (a
/// whole-sequence forward) the gemms are.
pub const FEW_QUERIES: usize = 16;

/// Multiply-adds of one call below which it stays on the calling thread (waking the pool
/// costs more than it saves).
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// The structural mask of one attention call.
#[derive(Clone, Debug, Default)]
pub struct KeyLimits {
    /// Per item: its real number of keys; `None`: all.
    pub lens: Option<Vec<usize>>,
    /// Causal self-attention: `(t, start)` — the query rows of an item are `g * t` rows of `t`
    /// positions after `start` cached ones; row `r` sees keys `0 ..= start + r % t`.
    pub causal: Option<(usize, usize)>,
}

impl KeyLimits {
    /// Keys `0..limit` that query row `row` of item `item` may see, of `s`.
    pub fn limit(&self, item: usize, row: usize, s: usize) -> usize {
        let mut lim = s;
        if let Some(lens) = &self.lens {
            lim = lim.min(lens[item]);
        }
        if let Some((t, start)) = self.causal {
            lim = lim.min(start + row % t + 1);
        }
        lim
    }
}

/// Whether [`attention`] takes these inputs: CPU f32 tensors outside autograd, with at most
/// [`FEW_QUERIES`] query rows per (item, head) in `q` `[N, H, M, Dh]`.
pub fn is_fusable(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    q.rank() == 4 && q.dims()[2] <= FEW_QUERIES && [q, k, v].iter().all(|t| is_untracked_cpu_f32(t))
}

/// Attention of `q` `[N, H, M, Dh]` over keys and values `[N, Hkv, S, Dh]` (`H` a multiple of
/// `Hkv`: query head `h` reads key head `h / (H / Hkv)`), all CPU f32, to `[N, H, M, Dh]`.
/// Scores are `scale * (q . k)`, plus `mask[i or 0, r, j]` when an additive mask `[R, M, S]`
/// (`R` = 1 or `N`) is given; keys beyond `limits` are not seen. A query row that sees no key
/// gets NaN, as the matmul path's softmax gives. Keys and values are read in place when each
/// (item, head) block of `S * Dh` is contiguous, as in the first `S` entries of a longer
/// cache buffer.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    limits: &KeyLimits,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, h, m, dh) = q.dims4()?;
    let (kn, hkv, s, kdh) = k.dims4()?;
    if (kn, kdh) != (n, dh) || hkv == 0 || h % hkv != 0 || v.shape() != k.shape() {
        bail!(
            "attention: q {:?}, k {:?}, v {:?} (keys and values [N, Hkv, S, Dh] with Hkv \
             dividing the query heads)",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if let Some(lens) = &limits.lens {
        if lens.len() != n {
            bail!("attention: {} key lengths for {n} items", lens.len());
        }
    }
    let blocks = |t: &Tensor| -> Result<Tensor> {
        if head_blocks(t.layout()).is_some() {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let (q, k, v) = (q.contiguous()?, blocks(k)?, blocks(v)?);
    let mask = match mask {
        Some(mt) => {
            let (r, mm, ms) = mt.dims3()?;
            if (r != 1 && r != n) || (mm, ms) != (m, s) {
                bail!(
                    "attention: mask {:?}, expected [1 or {n}, {m}, {s}]",
                    mt.shape()
                );
            }
            Some((mt.contiguous()?, r))
        }
        None => None,
    };
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let mask_store = mask.as_ref().map(|(t, r)| (t.storage_and_layout(), *r));
    let qd = &storage_f32(&qs, OP)?[ql.start_offset()..];
    // Key and value blocks are addressed from the storage's start ([`head_blocks`]).
    let (kd, vd) = (storage_f32(&ks, OP)?, storage_f32(&vs, OP)?);
    let md = match &mask_store {
        Some(((st, l), r)) => Some((&storage_f32(st, OP)?[l.start_offset()..], *r)),
        None => None,
    };
    let (Some(kb), Some(vb)) = (head_blocks(kl), head_blocks(vl)) else {
        bail!("attention: key/value blocks are not contiguous");
    };
    let group = h / hkv;
    let mut out = vec![0f32; n * h * m * dh];
    let block = |(nh, o): (usize, &mut [f32])| {
        let item = nh / h;
        let kvh = (nh % h) / group;
        let at = |(start, si, sh): (usize, usize, usize)| start + item * si + kvh * sh;
        let (ko, vo) = (at(kb), at(vb));
        let mask = md.map(|(d, r)| {
            let i = if r == 1 { 0 } else { item };
            &d[i * m * s..(i + 1) * m * s]
        });
        one_block(
            &qd[nh * m * dh..(nh + 1) * m * dh],
            &kd[ko..ko + s * dh],
            &vd[vo..vo + s * dh],
            dh,
            (scale, limits, item, mask),
            o,
        );
    };
    // One thread: no hand-off to the pool (from outside it, a wake-up and a sleep per call:
    // 1.4% of a one-thread Mimi frame).
    if n * h > 1 && n * h * m * s * dh >= PARALLEL_MIN_WORK && crate::cpu::threads() > 1 {
        out.par_chunks_mut(m * dh).enumerate().for_each(block);
    } else {
        out.chunks_mut(m * dh).enumerate().for_each(block);
    }
    Tensor::from_vec(out, (n, h, m, dh), q.device())
}

/// `(start, item stride, head stride)` of a `[N, H, S, Dh]` layout whose `[S, Dh]` blocks are
/// each contiguous; `None` otherwise.
fn head_blocks(l: &Layout) -> Option<(usize, usize, usize)> {
    let st = l.stride();
    let (_, _, _, dh) = l.shape().dims4().ok()?;
    (st.len() == 4 && st[3] == 1 && st[2] == dh).then_some((l.start_offset(), st[0], st[1]))
}

/// One (item, head): `q` `[m, dh]`, keys and values `[s, dh]`, into `out` `[m, dh]`, one
/// query row at a time (the keys it re-reads stay in L2); `mask` is the item's `[m, s]`.
fn one_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dh: usize,
    (scale, limits, item, mask): (f32, &KeyLimits, usize, Option<&[f32]>),
    out: &mut [f32],
) {
    let s = k.len() / dh;
    let mut p = Vec::with_capacity(s);
    for (r, (qr, or)) in q.chunks(dh).zip(out.chunks_mut(dh)).enumerate() {
        let lim = limits.limit(item, r, s);
        p.clear();
        p.resize(lim, 0f32);
        scores(qr, &k[..lim * dh], scale, &mut p);
        if let Some(mk) = mask {
            for (x, b) in p.iter_mut().zip(&mk[r * s..r * s + lim]) {
                *x += b;
            }
        }
        let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            // Nothing visible: the matmul path's softmax gives NaN as well.
            or.fill(f32::NAN);
            continue;
        }
        for x in p.iter_mut() {
            *x -= max;
        }
        crate::activation::exp_in_place(&mut p);
        let inv = 1.0 / p.iter().sum::<f32>();
        for x in p.iter_mut() {
            *x *= inv;
        }
        weighted_sum(&p, &v[..lim * dh], or);
    }
}

/// `p[j] = scale * (q . k[j])` for the `p.len()` rows of `k` (`[_, q.len()]`).
fn scores(q: &[f32], k: &[f32], scale: f32, p: &mut [f32]) {
    let dh = q.len();
    debug_assert!(k.len() >= p.len() * dh);
    #[cfg(target_arch = "x86_64")]
    if dh.is_multiple_of(8) && crate::simd::has_avx2_fma() {
        // SAFETY: the features were detected; `k` holds `p.len()` rows of `dh`.
        unsafe { scores_avx2(q, k, scale, p) };
        return;
    }
    for (x, kr) in p.iter_mut().zip(k.chunks_exact(dh.max(1))) {
        *x = scale * q.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// [`scores`] four keys at a time, their four sums reduced together.
///
/// # Safety
/// AVX2 and FMA are available; `q.len()` is a multiple of 8; `k` holds `p.len()` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(q: &[f32], k: &[f32], scale: f32, p: &mut [f32]) {
    use std::arch::x86_64::*;
    let dh = q.len();
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let n = p.len();
    let mut j = 0;
    while j + 4 <= n {
        let mut a = [_mm256_setzero_ps(); 4];
        for c in (0..dh).step_by(8) {
            let qc = _mm256_loadu_ps(qp.add(c));
            for (i, ai) in a.iter_mut().enumerate() {
                *ai = _mm256_fmadd_ps(_mm256_loadu_ps(kp.add((j + i) * dh + c)), qc, *ai);
            }
        }
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(p.as_mut_ptr().add(j), _mm_mul_ps(s4, _mm_set1_ps(scale)));
        j += 4;
    }
    while j < n {
        let mut a = _mm256_setzero_ps();
        for c in (0..dh).step_by(8) {
            a = _mm256_fmadd_ps(
                _mm256_loadu_ps(kp.add(j * dh + c)),
                _mm256_loadu_ps(qp.add(c)),
                a,
            );
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        p[j] = scale * _mm_cvtss_f32(s);
        j += 1;
    }
}

/// `out = sum_j p[j] v[j]` over the `p.len()` rows of `v` (`[_, out.len()]`).
fn weighted_sum(p: &[f32], v: &[f32], out: &mut [f32]) {
    let dh = out.len();
    debug_assert!(v.len() >= p.len() * dh);
    #[cfg(target_arch = "x86_64")]
    if dh.is_multiple_of(8) && crate::simd::has_avx2_fma() {
        for c0 in (0..dh).step_by(64) {
            // SAFETY (all): the features were detected; each call reads columns
            // `c0 .. c0 + 8 * CH <= dh` of `p.len()` rows of `v`.
            unsafe {
                match (dh - c0).min(64) / 8 {
                    1 => wsum_avx2::<1>(p, v, dh, c0, out),
                    2 => wsum_avx2::<2>(p, v, dh, c0, out),
                    3 => wsum_avx2::<3>(p, v, dh, c0, out),
                    4 => wsum_avx2::<4>(p, v, dh, c0, out),
                    5 => wsum_avx2::<5>(p, v, dh, c0, out),
                    6 => wsum_avx2::<6>(p, v, dh, c0, out),
                    7 => wsum_avx2::<7>(p, v, dh, c0, out),
                    _ => wsum_avx2::<8>(p, v, dh, c0, out),
                }
            }
        }
        return;
    }
    out.fill(0.0);
    for (&pj, vr) in p.iter().zip(v.chunks_exact(dh.max(1))) {
        for (o, x) in out.iter_mut().zip(vr) {
            *o += pj * x;
        }
    }
}

/// Columns `c0 .. c0 + 8 * CH` of [`weighted_sum`], the sums held in registers over all keys.
///
/// # Safety
/// AVX2 and FMA are available; `v` holds `p.len()` rows of `dh >= c0 + 8 * CH` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wsum_avx2<const CH: usize>(p: &[f32], v: &[f32], dh: usize, c0: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let vp = v.as_ptr().add(c0);
    let mut acc = [_mm256_setzero_ps(); CH];
    for (j, &pj) in p.iter().enumerate() {
        let w = _mm256_set1_ps(pj);
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(vp.add(j * dh + 8 * c)), w, *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * c), *a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The matmul path: grouped heads expanded, an additive mask from the limits plus `mask`.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        limits: &KeyLimits,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (n, h, m, _) = q.dims4().unwrap();
        let (_, hkv, s, _) = k.dims4().unwrap();
        let lim: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..m).flat_map(move |r| {
                    (0..s).map(move |j| {
                        if j < limits.limit(i, r, s) {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
            })
            .collect();
        let mut add = Tensor::from_vec(lim, (n, 1, m, s), &Device::Cpu).unwrap();
        if let Some(mk) = mask {
            add = add.broadcast_add(&mk.unsqueeze(1).unwrap()).unwrap();
        }
        let expand = |t: &Tensor| {
            let g = h / hkv;
            let (n, hkv, s, dh) = t.dims4().unwrap();
            t.unsqueeze(2)
                .unwrap()
                .broadcast_as((n, hkv, g, s, dh))
                .unwrap()
                .reshape((n, h, s, dh))
                .unwrap()
        };
        let (k, v) = (expand(k), expand(v));
        let scores = (q
            .matmul(&k.transpose(2, 3).unwrap().contiguous().unwrap())
            .unwrap()
            * scale as f64)
            .unwrap()
            .broadcast_add(&add)
            .unwrap();
        candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    #[test]
    fn equals_the_matmul_path_with_lengths_causality_masks_and_grouped_heads() {
        let dev = Device::Cpu;
        for (h, hkv, dh) in [(2, 2, 12), (4, 2, 16), (8, 8, 64)] {
            let (n, s) = (3, 37);
            let k = Tensor::randn(0f32, 1.0, (n, hkv, s, dh), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (n, hkv, s, dh), &dev).unwrap();
            let bump = Tensor::randn(0f32, 1.0, (n, 3, s), &dev).unwrap();
            // A mask that hides every third key of item 1, broadcast over its rows.
            let hide: Vec<f32> = (0..s)
                .map(|j| if j % 3 == 0 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let hide = Tensor::from_vec(hide, (1, 1, s), &dev)
                .unwrap()
                .broadcast_as((1, 3, s))
                .unwrap();
            let cases: Vec<(usize, KeyLimits, Option<Tensor>)> = vec![
                (1, KeyLimits::default(), None),
                (
                    4,
                    KeyLimits {
                        lens: Some(vec![37, 3, 20]),
                        causal: None,
                    },
                    None,
                ),
                (
                    3,
                    KeyLimits {
                        lens: None,
                        causal: Some((3, 30)),
                    },
                    Some(bump),
                ),
                (3, KeyLimits::default(), Some(hide)),
            ];
            for (m, limits, mask) in cases {
                let q = Tensor::randn(0f32, 1.0, (n, h, m, dh), &dev).unwrap();
                let scale = 1.0 / (dh as f32).sqrt();
                let got = attention(&q, &k, &v, scale, &limits, mask.as_ref()).unwrap();
                let want = reference(&q, &k, &v, scale, &limits, mask.as_ref());
                // The same keys as the filled prefix of a longer buffer, read in place.
                let long = |t: &Tensor| {
                    let pad = Tensor::randn(0f32, 1.0, (n, hkv, 5, dh), &dev).unwrap();
                    Tensor::cat(&[t, &pad], 2).unwrap().narrow(2, 0, s).unwrap()
                };
                let (kp, vp) = (long(&k), long(&v));
                assert!(!kp.is_contiguous());
                let strided = attention(&q, &kp, &vp, scale, &limits, mask.as_ref()).unwrap();
                assert_eq!(max_abs(&got, &strided), 0.0, "h {h}, m {m}: strided keys");
                let err = max_abs(&got, &want);
                assert!(err < 2e-5, "h {h}/{hkv}, m {m}, {limits:?}: {err}");
            }
        }
    }

    #[test]
    fn each_item_gets_the_bits_it_gets_alone_serial_or_parallel() {
        let dev = Device::Cpu;
        // 64 items x 8 heads x 1 x 100 x 64 multiply-adds: well over the parallel threshold.
        let (n, h, s, dh) = (64, 8, 100, 64);
        let q = Tensor::randn(0f32, 1.0, (n, h, 1, dh), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (n, h, s, dh), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (n, h, s, dh), &dev).unwrap();
        let lens: Vec<usize> = (0..n).map(|i| 1 + (i * 7) % s).collect();
        let limits = KeyLimits {
            lens: Some(lens.clone()),
            causal: None,
        };
        let all = attention(&q, &k, &v, 0.125, &limits, None).unwrap();
        for i in [0, 13, 63] {
            let one = |t: &Tensor| t.narrow(0, i, 1).unwrap();
            let alone = KeyLimits {
                lens: Some(vec![lens[i]]),
                causal: None,
            };
            let got = attention(&one(&q), &one(&k), &one(&v), 0.125, &alone, None).unwrap();
            assert_eq!(max_abs(&got, &one(&all)), 0.0, "item {i}");
        }
    }

    #[test]
    fn a_row_that_sees_nothing_is_nan_and_bad_shapes_are_refused() {
        let dev = Device::Cpu;
        let q = Tensor::ones((2, 2, 1, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::ones((2, 2, 4, 8), candle_core::DType::F32, &dev).unwrap();
        let limits = KeyLimits {
            lens: Some(vec![0, 4]),
            causal: None,
        };
        let y = attention(&q, &k, &k, 1.0, &limits, None).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(y[..16].iter().all(|x| x.is_nan()));
        assert!(y[16..].iter().all(|&x| x == 1.0));
        let k3 = Tensor::ones((2, 3, 4, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(attention(&q, &k3, &k3, 1.0, &KeyLimits::default(), None).is_err());
        let bad_mask = Tensor::zeros((2, 1, 5), candle_core::DType::F32, &dev).unwrap();
        let e = attention(&q, &k, &k, 1.0, &KeyLimits::default(), Some(&bad_mask));
        assert!(e.is_err());
    }
}
