//! Fused scaled-dot-product attention for few queries (decoder steps) on the CPU.
//!
//! A decoder step has one query per row and head: candle's batched `matmul` runs one tiny
//! gemm per (row, head) for `q k^T` and again for `p v`, each with its own dispatch, and the
//! keys are transposed and copied first. Here one pass per (item, head), split over rayon's
//! pool, does the scores, the masked softmax and the weighted sum, reading keys and values in
//! place. Masks are structural (each item's key length, and causality for several new
//! positions after a cache), so no mask tensor is built.
//!
//! The arithmetic is the matmul path's: scores `q . k` summed in f32, softmax as
//! `exp(s - max) / sum`, the output `sum_j p_j v_j`; only the summation order differs (within
//! float rounding of the matmul path, checked in the tests).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The structural mask of one attention call.
#[derive(Clone, Debug, Default)]
pub struct KeyLimits {
    /// Per key group (item): its real number of keys; `None`: all.
    pub lens: Option<Vec<usize>>,
    /// Causal self-attention: `(t, start)` — the query rows of a group are `g * t` rows of `t`
    /// positions after `start` cached ones; row `r` sees keys `0 ..= start + r % t`.
    pub causal: Option<(usize, usize)>,
}

impl KeyLimits {
    fn limit(&self, item: usize, row: usize, s: usize) -> usize {
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

/// Attention of `q` `[N, H, M, Dh]` (already scaled) over keys and values `[N, H, S, Dh]`, all
/// f32 on the CPU, to `[N, H, M, Dh]`. Keys and values are read in place when each (item, head)
/// block of `S * Dh` is contiguous, as in the first `S` positions of a longer cache buffer.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    limits: &KeyLimits,
) -> candle_core::Result<Tensor> {
    let q = q.contiguous()?;
    let blocks = |t: &Tensor| -> candle_core::Result<Tensor> {
        if head_blocks(t.layout()).is_some() {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    q.apply_op3_no_bwd(&blocks(k)?, &blocks(v)?, &Fused { limits })
}

/// `(start, item stride, head stride)` of a `[N, H, S, Dh]` layout whose `[S, Dh]` blocks are
/// each contiguous; `None` otherwise.
fn head_blocks(l: &Layout) -> Option<(usize, usize, usize)> {
    let st = l.stride();
    let (_, _, _, dh) = l.shape().dims4().ok()?;
    (st.len() == 4 && st[3] == 1 && st[2] == dh).then_some((l.start_offset(), st[0], st[1]))
}

struct Fused<'a> {
    limits: &'a KeyLimits,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() - a.len() % 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

impl CustomOp3 for Fused<'_> {
    fn name(&self) -> &'static str {
        "vaak-fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, m, dh) = ql.shape().dims4()?;
        let (kn, kh, s, kdh) = kl.shape().dims4()?;
        if (kn, kh, kdh) != (n, h, dh) || vl.shape() != kl.shape() {
            return Err(candle_core::Error::Msg(format!(
                "fused attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            )));
        }
        if let Some(lens) = &self.limits.lens {
            if lens.len() != n {
                return Err(candle_core::Error::Msg(format!(
                    "fused attention: {} key lengths for {n} groups",
                    lens.len()
                )));
            }
        }
        let (Some(kb), Some(vb)) = (head_blocks(kl), head_blocks(vl)) else {
            return Err(candle_core::Error::Msg(
                "fused attention: keys/values blocks are not contiguous".into(),
            ));
        };
        let (q, k, v) = match (qs, ks, vs) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                (&q[ql.start_offset()..], k.as_slice(), v.as_slice())
            }
            (q, k, _) => {
                let dt = if matches!(q, CpuStorage::F32(_)) {
                    k.dtype()
                } else {
                    q.dtype()
                };
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    dt,
                    "vaak-fused-attention",
                ));
            }
        };
        let mut out = vec![0f32; n * h * m * dh];
        let limits = self.limits;
        out.par_chunks_mut(m * dh).enumerate().for_each(|(nh, o)| {
            let item = nh / h;
            let block = |(start, si, sh): (usize, usize, usize)| start + item * si + (nh % h) * sh;
            let (ko, vo) = (block(kb), block(vb));
            let kb = &k[ko..ko + s * dh];
            let vb = &v[vo..vo + s * dh];
            let mut p = vec![0f32; s];
            for r in 0..m {
                let qr = &q[(nh * m + r) * dh..(nh * m + r + 1) * dh];
                let lim = limits.limit(item, r, s);
                let orow = &mut o[r * dh..(r + 1) * dh];
                if lim == 0 {
                    orow.fill(f32::NAN);
                    continue;
                }
                let mut max = f32::NEG_INFINITY;
                for (j, pj) in p[..lim].iter_mut().enumerate() {
                    *pj = dot(qr, &kb[j * dh..(j + 1) * dh]);
                    max = max.max(*pj);
                }
                let mut sum = 0f32;
                for pj in &mut p[..lim] {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                for (j, &pj) in p[..lim].iter().enumerate() {
                    let w = pj / sum;
                    for (oo, &vv) in orow.iter_mut().zip(&vb[j * dh..(j + 1) * dh]) {
                        *oo += w * vv;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h, m, dh))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The matmul path with an additive mask built from the same limits.
    /// The largest absolute difference between two tensors of one shape.
    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, limits: &KeyLimits) -> Tensor {
        let (n, _, m, _) = q.dims4().unwrap();
        let s = k.dim(2).unwrap();
        let mask: Vec<f32> = (0..n)
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
        let mask = Tensor::from_vec(mask, (n, 1, m, s), &Device::Cpu).unwrap();
        let scores = q
            .matmul(&k.transpose(2, 3).unwrap().contiguous().unwrap())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn fused_equals_the_matmul_path_with_lengths_and_causality() {
        let dev = Device::Cpu;
        let (n, h, s, dh) = (3, 2, 7, 12);
        let k = Tensor::randn(0f32, 1.0, (n, h, s, dh), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (n, h, s, dh), &dev).unwrap();
        for (m, limits) in [
            (1, KeyLimits::default()),
            (
                4,
                KeyLimits {
                    lens: Some(vec![7, 3, 5]),
                    causal: None,
                },
            ),
            (
                3,
                KeyLimits {
                    lens: None,
                    causal: Some((3, 4)),
                },
            ),
        ] {
            let q = Tensor::randn(0f32, 1.0, (n, h, m, dh), &dev).unwrap();
            let got = attention(&q, &k, &v, &limits).unwrap();
            let want = reference(&q, &k, &v, &limits);
            // The same keys as the filled prefix of a longer buffer, read in place.
            let long = |t: &Tensor| {
                let pad = Tensor::randn(0f32, 1.0, (n, h, 5, dh), &dev).unwrap();
                Tensor::cat(&[t, &pad], 2).unwrap().narrow(2, 0, s).unwrap()
            };
            let (kp, vp) = (long(&k), long(&v));
            assert!(!kp.is_contiguous());
            let strided = attention(&q, &kp, &vp, &limits).unwrap();
            let diff = max_abs(&got, &strided);
            assert_eq!(diff, 0.0, "m {m}: strided keys");
            let err = max_abs(&got, &want);
            assert!(err < 1e-5, "m {m}, {limits:?}: {err}");
        }
    }
}
