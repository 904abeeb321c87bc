//! Token selection on the logits' device: the logits processors as sparse edits, greedy arg-max
//! with the chosen token's log-probability, and beam search's top-k over each item's flattened
//! beams. Only the chosen ids and their scores come back to the host (`rows` or `items x k`
//! numbers per step instead of `rows x vocab`).
//!
//! The processors ([`RowRule`]) are worked out per row on the host from its tokens (cheap:
//! n-gram and bad-word bans, min length, forced BOS/EOS, suppressed tokens) and applied to the
//! scores as a handful of `-inf` writes; a forced row becomes `-inf` everywhere but its forced
//! token, which is 0, as transformers' processors leave it.
//!
//! Top-k: value descending, the lower index first on ties, NaN counted as `-inf` (as the host
//! search did, and as `torch.topk` orders the finite values). On the CPU it is one pass per row
//! (a custom op); on other devices the scores are copied to the host for it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};

use crate::error::{Result, TeacherError};

/// What transformers' logits processors do to one row: with `forced`, every token but that
/// one is `-inf` and it is 0; then the `banned` tokens are `-inf` (bans that apply after the
/// forcing may ban the forced token too, leaving the row all `-inf`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowRule {
    pub forced: Option<u32>,
    pub banned: Vec<u32>,
}

impl RowRule {
    /// Applies the rule to one row of scores in place.
    pub fn apply(&self, row: &mut [f32]) {
        if let Some(id) = self.forced {
            row.fill(f32::NEG_INFINITY);
            row[id as usize] = 0.0;
        }
        for &t in &self.banned {
            row[t as usize] = f32::NEG_INFINITY;
        }
    }

    fn is_noop(&self) -> bool {
        self.forced.is_none() && self.banned.is_empty()
    }
}

/// `[rows, vocab]` f32 scores with each row's rule applied, on their device.
pub fn apply_rules(scores: &Tensor, rules: &[RowRule]) -> Result<Tensor> {
    let (rows, vocab) = scores.dims2()?;
    check_rules(rules, rows, vocab)?;
    if rules.iter().all(RowRule::is_noop) {
        return Ok(scores.clone());
    }
    let dev = scores.device();
    let mut out = scores.to_dtype(DType::F32)?;
    if rules.iter().any(|r| r.forced.is_some()) {
        // Whole forced rows (rare: the first and the last step) are written densely.
        let mut dense = vec![f32::NEG_INFINITY; rows * vocab];
        let mut which = vec![0u8; rows];
        for (r, rule) in rules.iter().enumerate() {
            if rule.forced.is_some() {
                which[r] = 1;
                rule.apply(&mut dense[r * vocab..(r + 1) * vocab]);
            }
        }
        let dense = Tensor::from_vec(dense, (rows, vocab), dev)?;
        let which = Tensor::from_vec(which, (rows, 1), dev)?.broadcast_as((rows, vocab))?;
        out = which.where_cond(&dense, &out)?;
    }
    let flat: Vec<u32> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.forced.is_none())
        .flat_map(|(r, rule)| rule.banned.iter().map(move |&t| (r * vocab) as u32 + t))
        .collect();
    if !flat.is_empty() {
        let n = flat.len();
        let idx = Tensor::from_vec(flat, n, dev)?;
        let ninf = Tensor::full(f32::NEG_INFINITY, n, dev)?;
        out = out
            .flatten_all()?
            .index_add(&idx, &ninf, 0)?
            .reshape((rows, vocab))?;
    }
    Ok(out)
}

/// Greedy choice per row of `[rows, vocab]` logits under `rules`: the arg-max of the processed
/// scores (the first index on ties) and its log-softmax value over the processed row (`-inf`
/// when the whole row is banned).
///
/// On the CPU (f32) it is one threaded pass over the rows ([`greedy_pick_cpu`]) instead of the
/// half-dozen whole-tensor passes (rules, arg-max, gather, shift, exp, sum) of the device path.
pub fn greedy_pick(logits: &Tensor, rules: &[RowRule]) -> Result<Vec<(u32, f32)>> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return greedy_pick_cpu(logits, rules);
    }
    greedy_pick_tensor(logits, rules)
}

/// [`greedy_pick`] on the CPU: per row, in parallel, the rule applied to a scratch copy, the
/// arg-max as candle's (the first maximum; a NaN never wins unless it comes first) and the
/// log-sum-exp around it (vaak-nn's vectorised `exp`, not libm's one call per element).
fn greedy_pick_cpu(logits: &Tensor, rules: &[RowRule]) -> Result<Vec<(u32, f32)>> {
    use rayon::prelude::*;
    let (rows, vocab) = logits.dims2()?;
    check_rules(rules, rows, vocab)?;
    if vocab == 0 {
        return Err(TeacherError::BadInput("select: empty vocabulary".into()));
    }
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(TeacherError::BadInput(
            "select: expected f32 logits on the CPU".into(),
        ));
    };
    let data = &data[layout.start_offset()..layout.start_offset() + rows * vocab];
    Ok(data
        .par_chunks(vocab)
        .zip(rules)
        .map_init(
            || (Vec::new(), Vec::new()),
            |(scratch, shifted): &mut (Vec<f32>, Vec<f32>), (row, rule)| {
                let row = if rule.is_noop() {
                    row
                } else {
                    scratch.clear();
                    scratch.extend_from_slice(row);
                    rule.apply(scratch);
                    &scratch[..]
                };
                let (best, nan) = max_and_nan(row);
                if nan || !best.is_finite() {
                    // A NaN, an infinite maximum or an all -inf row: the device path's NaN,
                    // reported as -inf, with candle's arg-max (a NaN first wins, later ones never).
                    let (mut best, mut tok) = (row[0], 0usize);
                    for (i, &v) in row.iter().enumerate() {
                        if best < v {
                            best = v;
                            tok = i;
                        }
                    }
                    return (tok as u32, f32::NEG_INFINITY);
                }
                let tok = row.iter().position(|&v| v == best).unwrap_or(0);
                shifted.clear();
                shifted.extend(row.iter().map(|&v| v - best));
                vaak_nn::activation::exp_in_place(shifted);
                (tok as u32, -lane_sum(shifted).ln())
            },
        )
        .collect())
}

/// Lanes of the vectorisable reductions below.
const LANES: usize = 16;

/// The maximum of a non-empty row and whether it holds a NaN, in `LANES` independent lanes (a
/// strict left-to-right `max` would not vectorise).
fn max_and_nan(row: &[f32]) -> (f32, bool) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
            nan[i] |= c[i].is_nan();
        }
    }
    let mut best = f32::NEG_INFINITY;
    let mut any_nan = false;
    for (&v, &n) in m
        .iter()
        .zip(&nan)
        .chain(tail.iter().zip(std::iter::repeat(&false)))
    {
        best = if v > best { v } else { best };
        any_nan |= n || v.is_nan();
    }
    (best, any_nan)
}

/// A sum in `LANES` partial sums (a strict left-to-right sum would not vectorise).
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn check_rules(rules: &[RowRule], rows: usize, vocab: usize) -> Result<()> {
    if rules.len() != rows {
        return Err(TeacherError::BadInput(format!(
            "select: {} row rules for {rows} rows",
            rules.len()
        )));
    }
    if let Some(t) = rules
        .iter()
        .flat_map(|r| r.forced.iter().chain(&r.banned))
        .find(|&&t| t as usize >= vocab)
    {
        return Err(TeacherError::BadInput(format!(
            "select: token {t} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// [`greedy_pick`] in whole-tensor ops (any device).
fn greedy_pick_tensor(logits: &Tensor, rules: &[RowRule]) -> Result<Vec<(u32, f32)>> {
    let x = apply_rules(logits, rules)?;
    let tok = x.argmax_keepdim(D::Minus1)?;
    // The chosen value is the row's maximum (NaN aside), so it is the shift of the
    // log-sum-exp and its log-softmax is `0 - lse` (NaN, reported as -inf, for a row that is
    // all -inf).
    let max = x.gather(&tok, D::Minus1)?;
    let lp = x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .neg()?;
    let tok = tok.flatten_all()?.to_vec1::<u32>()?;
    let lp = lp.flatten_all()?.to_vec1::<f32>()?;
    Ok(tok
        .into_iter()
        .zip(lp)
        .map(|(t, l)| (t, if l.is_nan() { f32::NEG_INFINITY } else { l }))
        .collect())
}

/// One beam-search step on the device: log-softmax of `[items * group, vocab]` logits, the
/// rules, plus each row's running score, then per item the top `k` of its `group * vocab`
/// continuations as `(score, beam * vocab + token)`.
pub fn beam_top(
    logits: &Tensor,
    rules: &[RowRule],
    running: &[f32],
    group: usize,
    k: usize,
) -> Result<Vec<Vec<(f32, usize)>>> {
    let (rows, vocab) = logits.dims2()?;
    if group == 0 || !rows.is_multiple_of(group) || running.len() != rows {
        return Err(TeacherError::BadInput(format!(
            "beam step: {rows} rows, group {group}, {} running scores",
            running.len()
        )));
    }
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let lp = apply_rules(&lp, rules)?;
    let run = Tensor::from_slice(running, (rows, 1), logits.device())?;
    let acc = lp
        .broadcast_add(&run)?
        .reshape((rows / group, group * vocab))?;
    let (vals, idx) = top_k_last_dim(&acc, k)?;
    let vals = vals.to_vec2::<f32>()?;
    let idx = idx.to_vec2::<u32>()?;
    Ok(vals
        .into_iter()
        .zip(idx)
        .map(|(v, i)| {
            v.into_iter()
                .zip(i.into_iter().map(|i| i as usize))
                .collect()
        })
        .collect())
}

/// Top `k` of `vals` (value, index) by value descending, the lower index first on ties; NaN
/// counts as `-inf`. Indices must arrive in increasing order.
pub(crate) fn top_k(vals: impl Iterator<Item = (f32, usize)>, k: usize) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (v, i) in vals {
        let v = if v.is_nan() { f32::NEG_INFINITY } else { v };
        if best.len() == k {
            // A tie never displaces an earlier index.
            if v <= best[k - 1].0 {
                continue;
            }
            best.pop();
        }
        let pos = best.partition_point(|&(bv, _)| bv >= v);
        best.insert(pos, (v, i));
    }
    best
}

/// The top `k` along the last dimension of a 2-D tensor: values `[R, k]` (f32, NaN as
/// `-inf`) and their indices `[R, k]` (u32), ordered as [`top_k`].
pub fn top_k_last_dim(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = x.dims2()?;
    if k == 0 || k > cols {
        return Err(TeacherError::BadInput(format!(
            "top-k: k = {k} for rows of {cols}"
        )));
    }
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let idx = match x.device() {
        Device::Cpu => x.apply_op1_no_bwd(&TopK { k })?,
        dev => {
            // No top-k kernel off the CPU yet: select over a host copy.
            let rows_v = x.to_vec2::<f32>()?;
            let flat: Vec<u32> = rows_v
                .iter()
                .flat_map(|r| {
                    top_k(r.iter().copied().zip(0..), k)
                        .into_iter()
                        .map(|(_, i)| i as u32)
                })
                .collect();
            Tensor::from_vec(flat, (rows, k), dev)?
        }
    };
    let vals = x.gather(&idx, D::Minus1)?;
    // NaN counts as -inf in the ranking; report it as such.
    let nan = vals.ne(&vals)?;
    let ninf = Tensor::full(f32::NEG_INFINITY, vals.shape(), vals.device())?;
    let vals = nan.where_cond(&ninf, &vals)?;
    Ok((vals, idx))
}

/// The CPU top-k kernel: indices `[R, k]` (u32) of a `[R, C]` f32 tensor.
struct TopK {
    k: usize,
}

impl CustomOp1 for TopK {
    fn name(&self) -> &'static str {
        "vaak-top-k"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = layout.shape().dims2()?;
        let data = match storage {
            CpuStorage::F32(v) => v.as_slice(),
            s => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    s.dtype(),
                    "vaak-top-k",
                ))
            }
        };
        let k = self.k;
        let mut out: Vec<u32> = Vec::with_capacity(rows * k);
        match layout.contiguous_offsets() {
            Some((o1, o2)) => {
                for row in data[o1..o2].chunks_exact(cols) {
                    out.extend(
                        top_k(row.iter().copied().zip(0..), k)
                            .into_iter()
                            .map(|(_, i)| i as u32),
                    );
                }
            }
            None => {
                let [rs, cs] = <[usize; 2]>::try_from(layout.stride()).map_err(|_| {
                    candle_core::Error::Msg("vaak-top-k: expected a 2-D layout".into())
                })?;
                let o = layout.start_offset();
                for r in 0..rows {
                    let it = (0..cols).map(|c| (data[o + r * rs + c * cs], c));
                    out.extend(top_k(it, k).into_iter().map(|(_, i)| i as u32));
                }
            }
        }
        Ok((CpuStorage::U32(out), Shape::from((rows, k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_first_of_ties_and_sorts() {
        let v = [1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0];
        let t = top_k(v.iter().copied().zip(0..), 3);
        assert_eq!(t, vec![(3.0, 1), (3.0, 2), (3.0, 5)]);
        let t = top_k(v.iter().copied().zip(0..), 5);
        assert_eq!(
            t.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![1, 2, 5, 4, 0]
        );
    }

    #[test]
    fn device_top_k_matches_the_host_one() {
        let rows: Vec<Vec<f32>> = vec![
            vec![1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0, f32::NEG_INFINITY, 0.5],
            vec![f32::NEG_INFINITY; 8],
            vec![0.25, -1.0, 7.0, 7.0, -3.0, 0.0, 6.5, 7.0],
        ];
        let x = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        for k in [1, 3, 8] {
            let (v, i) = top_k_last_dim(&x, k).unwrap();
            let v = v.to_vec2::<f32>().unwrap();
            let i = i.to_vec2::<u32>().unwrap();
            for (r, row) in rows.iter().enumerate() {
                let want = top_k(row.iter().copied().zip(0..), k);
                let got: Vec<(f32, usize)> = v[r]
                    .iter()
                    .copied()
                    .zip(i[r].iter().map(|&j| j as usize))
                    .collect();
                assert_eq!(got, want, "row {r}, k {k}");
            }
        }
        // A transposed (strided) view ranks the same as its contiguous copy.
        let t = x.t().unwrap();
        let (_, a) = top_k_last_dim(&t, 2).unwrap();
        let (_, b) = top_k_last_dim(&t.contiguous().unwrap(), 2).unwrap();
        assert_eq!(a.to_vec2::<u32>().unwrap(), b.to_vec2::<u32>().unwrap());
        assert!(top_k_last_dim(&x, 9).is_err());
    }

    #[test]
    fn rules_on_the_device_equal_rules_on_a_row() {
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..10)
                    .map(|c| ((r * 7 + c * 3) % 11) as f32 * 0.5)
                    .collect()
            })
            .collect();
        let rules = vec![
            RowRule::default(),
            RowRule {
                forced: None,
                banned: vec![1, 9, 1],
            },
            RowRule {
                forced: Some(4),
                banned: vec![2],
            },
            RowRule {
                forced: Some(4),
                banned: vec![4],
            },
        ];
        let x = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        let got = apply_rules(&x, &rules).unwrap().to_vec2::<f32>().unwrap();
        for (r, (mut row, rule)) in rows.into_iter().zip(&rules).enumerate() {
            rule.apply(&mut row);
            assert_eq!(got[r], row, "row {r}");
        }
        let bad = vec![
            RowRule {
                forced: Some(10),
                banned: vec![]
            };
            4
        ];
        assert!(apply_rules(&x, &bad).is_err());
    }

    #[test]
    fn greedy_pick_is_the_arg_max_and_its_log_softmax() {
        let rows = vec![
            vec![0.5f32, 2.0, 2.0, -1.0],
            vec![3.0, 1.0, 0.0, 2.5],
            vec![1.0, 1.0, 1.0, 1.0],
        ];
        let rules = vec![
            RowRule::default(),
            RowRule {
                forced: None,
                banned: vec![0],
            },
            RowRule {
                forced: Some(2),
                banned: vec![2],
            },
        ];
        let x = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        let got = greedy_pick(&x, &rules).unwrap();
        assert_eq!(got[0].0, 1, "first of the tied maxima");
        assert_eq!(got[1].0, 3);
        let lse = |r: &[f32]| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            m + r.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
        };
        assert!((got[0].1 - (2.0 - lse(&rows[0]))).abs() < 1e-6);
        assert!((got[1].1 - (2.5 - lse(&[1.0, 0.0, 2.5]))).abs() < 1e-6);
        // Forced then banned: nothing is left.
        assert_eq!(got[2], (0, f32::NEG_INFINITY));
    }

    #[test]
    fn cpu_greedy_pick_equals_the_tensor_path() {
        // An odd vocabulary, ties, bans, a forced row, a forced-and-banned row, an all-banned
        // row, a row with a NaN after its maximum and one starting with NaN.
        let (rows, vocab) = (9, 1031);
        let x = Tensor::randn(0f32, 3.0, (rows, vocab), &Device::Cpu).unwrap();
        let mut v = x.to_vec2::<f32>().unwrap();
        v[1][7] = 50.0;
        v[1][900] = 50.0;
        v[6][3] = 40.0;
        v[6][500] = f32::NAN;
        v[7][0] = f32::NAN;
        let x = Tensor::new(v, &Device::Cpu).unwrap();
        let rule = |forced: Option<u32>, banned: Vec<u32>| RowRule { forced, banned };
        let rules = vec![
            rule(None, vec![]),
            rule(None, vec![]),
            rule(None, vec![0, 2, 1030]),
            rule(Some(17), vec![]),
            rule(Some(17), vec![17]),
            rule(None, (0..vocab as u32).collect()),
            rule(None, vec![]),
            rule(None, vec![5]),
            rule(None, vec![1]),
        ];
        let got = greedy_pick_cpu(&x, &rules).unwrap();
        let want = greedy_pick_tensor(&x, &rules).unwrap();
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.0, w.0, "row {r}: {got:?} vs {want:?}");
            let same = (g.1 == w.1) || (g.1 - w.1).abs() < 1e-5;
            assert!(same, "row {r}: {g:?} vs {w:?}");
        }
        assert_eq!(got[1].0, 7, "first of the tied maxima");
        assert_eq!(got[4].1, f32::NEG_INFINITY);
    }

    #[test]
    fn beam_top_ranks_each_items_flattened_beams() {
        // Two items of two beams over a vocabulary of 3.
        let logits = Tensor::new(
            vec![
                vec![0.0f32, 1.0, 2.0],
                vec![2.0, 0.0, 1.0],
                vec![1.0, 1.0, 1.0],
                vec![0.0, 0.0, 5.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let rules = vec![
            RowRule::default(),
            RowRule {
                forced: None,
                banned: vec![0],
            },
            RowRule::default(),
            RowRule::default(),
        ];
        let running = [0.0, -0.5, 0.0, -1.0e9];
        let got = beam_top(&logits, &rules, &running, 2, 3).unwrap();
        let lsm = |r: [f32; 3]| {
            let mut r = r.to_vec();
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = r.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
            r.iter_mut().for_each(|v| *v = (*v - m) - s);
            r
        };
        let a = lsm([0.0, 1.0, 2.0]);
        let b = lsm([2.0, 0.0, 1.0]);
        let mut want: Vec<(f32, usize)> = a.iter().enumerate().map(|(t, &v)| (v, t)).collect();
        want.extend(b.iter().enumerate().skip(1).map(|(t, &v)| (v - 0.5, 3 + t)));
        want.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        want.truncate(3);
        for (g, w) in got[0].iter().zip(&want) {
            assert_eq!(g.1, w.1);
            assert!((g.0 - w.0).abs() < 1e-6);
        }
        // Item 1: three equal tokens on beam 0, in index order.
        assert_eq!(
            got[1].iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }
}
