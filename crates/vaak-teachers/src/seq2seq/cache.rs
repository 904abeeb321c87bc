//! Encoder output and the decoder's KV cache.
//!
//! Rows come in groups: `group` rows per encoded item (the beams of an item; 1 for greedy).
//! Cross-attention keys/values and the source mask are held once per *item* and shared by the
//! rows of its group (see [`super::layers::Attention::attend`]), so beams never copy encoder
//! states. The self-attention cache is per row, in buffers with room for more positions than
//! are filled ([`SelfKv`]): a step writes its keys/values in place and attention reads the filled
//! prefix, instead of concatenating the whole history into a new tensor every step. Between steps
//! rows can be dropped (finished items) and reordered (beam search) with [`KvCache::select`].

use candle_core::Tensor;

use crate::error::{Result, TeacherError};
use vaak_nn::attention::KeyLimits;

/// Encoder output for a right-padded batch.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// `[B, S, d_model]`.
    pub hidden: Tensor,
    /// Real (unpadded) length of each item; `S` for all when nothing is padded.
    pub lengths: Vec<usize>,
}

impl Encoded {
    /// An unpadded batch: every item has all `S` positions.
    pub fn unpadded(hidden: Tensor) -> Result<Self> {
        let (b, s, _) = hidden.dims3()?;
        Ok(Self {
            hidden,
            lengths: vec![s; b],
        })
    }
}

/// Positions a self-attention buffer holds at least when first made without a hint.
const MIN_CAPACITY: usize = 16;

/// One layer's self-attention keys and values: `[rows, H, capacity, Dh]` buffers whose first
/// `filled` positions (the cache's length) are the history.
pub(crate) struct SelfKv {
    k: Tensor,
    v: Tensor,
}

impl SelfKv {
    /// Writes `l` new positions (`k`, `v`: `[rows, H, l, Dh]`) after `filled` ones, growing the
    /// buffers (to at least double, or to `hint`) when full, and returns views of the first
    /// `filled + l` positions.
    pub(crate) fn extend(
        slot: &mut Option<SelfKv>,
        (k, v): (&Tensor, &Tensor),
        filled: usize,
        hint: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (rows, h, l, dh) = k.dims4()?;
        let need = filled + l;
        let cap = slot.as_ref().map_or(Ok(0), |s| s.k.dim(2))?;
        if need > cap {
            let new_cap = need.max(2 * cap).max(hint).max(MIN_CAPACITY);
            let grown = |old: Option<&Tensor>, t: &Tensor| -> candle_core::Result<Tensor> {
                let buf = Tensor::zeros((rows, h, new_cap, dh), t.dtype(), t.device())?;
                if let Some(old) = old.filter(|_| filled > 0) {
                    buf.slice_set(&old.narrow(2, 0, filled)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = slot.take();
            *slot = Some(SelfKv {
                k: grown(old.as_ref().map(|s| &s.k), k)?,
                v: grown(old.as_ref().map(|s| &s.v), v)?,
            });
        }
        let Some(s) = slot.as_ref() else {
            unreachable!("the buffers were just made")
        };
        s.k.slice_set(&k.contiguous()?, 2, filled)?;
        s.v.slice_set(&v.contiguous()?, 2, filled)?;
        Ok((s.k.narrow(2, 0, need)?, s.v.narrow(2, 0, need)?))
    }
}

/// Decoder state: per-item cross-attention keys/values and key mask, per-row self-attention
/// keys/values ([`SelfKv`] per layer).
pub struct KvCache {
    cross: Vec<(Tensor, Tensor)>,
    /// Additive `[N, 1, 1, S]` mask over source positions; `None` when nothing is padded.
    cross_mask: Option<Tensor>,
    /// The same as key lengths per item (for `vaak_nn::attention`).
    cross_limits: KeyLimits,
    past: Vec<Option<SelfKv>>,
    /// Positions the self-attention buffers are first made for (see [`Self::reserve`]).
    capacity_hint: usize,
    group: usize,
    items: usize,
    len: usize,
}

impl KvCache {
    pub(crate) fn new(
        cross: Vec<(Tensor, Tensor)>,
        cross_mask: Option<Tensor>,
        lengths: &[usize],
        group: usize,
    ) -> Self {
        let layers = cross.len();
        let items = lengths.len();
        let cross_limits = KeyLimits {
            lens: cross_mask.as_ref().map(|_| lengths.to_vec()),
            causal: None,
        };
        Self {
            cross,
            cross_mask,
            cross_limits,
            past: (0..layers).map(|_| None).collect(),
            capacity_hint: 0,
            group,
            items,
            len: 0,
        }
    }

    /// The pieces a decoder pass reads and extends.
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(
        &mut self,
    ) -> (
        (&mut [Option<SelfKv>], usize),
        &[(Tensor, Tensor)],
        (Option<&Tensor>, &KeyLimits),
    ) {
        (
            (&mut self.past, self.capacity_hint),
            &self.cross,
            (self.cross_mask.as_ref(), &self.cross_limits),
        )
    }

    pub(crate) fn advance(&mut self, l: usize) {
        self.len += l;
    }

    /// Makes the self-attention buffers room for `tokens` decoder positions when they are first
    /// made (e.g. the generation's length limit), so they never grow; past it they still do.
    pub fn reserve(&mut self, tokens: usize) {
        self.capacity_hint = tokens;
    }

    /// Decoder tokens consumed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows (items times group).
    pub fn rows(&self) -> usize {
        self.items * self.group
    }

    /// Rows, as a `Result` (the batch size of a greedy cache).
    pub fn batch(&self) -> Result<usize> {
        Ok(self.rows())
    }

    pub fn group(&self) -> usize {
        self.group
    }

    /// Keeps only the rows in `rows` (in that order), e.g. to drop finished items; the same as
    /// [`Self::select`].
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        self.select(rows)
    }

    /// New row `r` continues old row `rows[r]`. `rows.len()` must be a multiple of the group
    /// size and the rows of each new group must come from one old group (beams reorder within
    /// their item; whole items may be dropped or repeated).
    pub fn select(&mut self, rows: &[usize]) -> Result<()> {
        let g = self.group;
        let old_rows = self.rows();
        if rows.is_empty() || !rows.len().is_multiple_of(g) {
            return Err(TeacherError::BadInput(format!(
                "cache select: {} rows is not a positive multiple of the group size {g}",
                rows.len()
            )));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= old_rows) {
            return Err(TeacherError::BadInput(format!(
                "cache select: row {r} out of {old_rows}"
            )));
        }
        let mut items = Vec::with_capacity(rows.len() / g);
        for chunk in rows.chunks(g) {
            let it = chunk[0] / g;
            if chunk.iter().any(|&r| r / g != it) {
                return Err(TeacherError::BadInput(format!(
                    "cache select: rows {chunk:?} mix items (group size {g})"
                )));
            }
            items.push(it as u32);
        }
        let Some((k0, _)) = self.cross.first() else {
            self.items = items.len();
            return Ok(());
        };
        let dev = k0.device().clone();
        let identity_items =
            items.len() == self.items && items.iter().enumerate().all(|(i, &x)| i as u32 == x);
        if !identity_items {
            let idx = Tensor::new(items.as_slice(), &dev)?;
            for (k, v) in self.cross.iter_mut() {
                *k = k.index_select(&idx, 0)?;
                *v = v.index_select(&idx, 0)?;
            }
            if let Some(m) = &mut self.cross_mask {
                *m = m.index_select(&idx, 0)?;
            }
            if let Some(lens) = &mut self.cross_limits.lens {
                *lens = items.iter().map(|&i| lens[i as usize]).collect();
            }
        }
        let identity_rows = rows.len() == old_rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if !identity_rows {
            let ridx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let ridx = Tensor::new(ridx.as_slice(), &dev)?;
            for s in self.past.iter_mut().flatten() {
                s.k = s.k.index_select(&ridx, 0)?;
                s.v = s.v.index_select(&ridx, 0)?;
            }
        }
        self.items = items.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Steps of awkward sizes through growth (no hint, and a hint that is too small) hold
    /// exactly what concatenating them would.
    #[test]
    fn self_kv_buffers_equal_concatenation_across_growth() {
        let dev = Device::Cpu;
        for hint in [0, 5] {
            let mut slot = None;
            let mut all_k: Option<Tensor> = None;
            let mut filled = 0;
            for l in [1, 3, 1, 13, 1, 20, 2] {
                let k = Tensor::randn(0f32, 1.0, (3, 2, l, 4), &dev).unwrap();
                let v = (&k * 2.0).unwrap();
                let (gk, gv) = SelfKv::extend(&mut slot, (&k, &v), filled, hint).unwrap();
                filled += l;
                let want = match all_k.take() {
                    Some(p) => Tensor::cat(&[&p, &k], 2).unwrap(),
                    None => k,
                };
                let same = |a: &Tensor, b: &Tensor| {
                    a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                        == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                assert_eq!(gk.dims(), want.dims());
                assert!(same(&gk, &want), "keys after {filled}");
                assert!(same(&gv, &(&want * 2.0).unwrap()), "values after {filled}");
                all_k = Some(want);
            }
        }
    }
}
