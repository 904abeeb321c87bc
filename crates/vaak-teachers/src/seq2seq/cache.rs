//! Encoder output and the decoder's KV cache.
//!
//! Rows come in groups: `group` rows per encoded item (the beams of an item; 1 for greedy).
//! Cross-attention keys/values and the source mask are held once per *item* and shared by the
//! rows of its group (see [`super::layers::Attention::attend`]), so beams never copy encoder
//! states. The self-attention cache is per row. Between steps rows can be dropped (finished
//! items) and reordered (beam search) with [`KvCache::select`].

use candle_core::Tensor;

use super::fused::KeyLimits;
use crate::error::{Result, TeacherError};

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

/// Decoder state: per-item cross-attention keys/values and key mask, per-row self-attention
/// keys/values (`[rows, H, T, Dh]` per layer).
pub struct KvCache {
    cross: Vec<(Tensor, Tensor)>,
    /// Additive `[N, 1, 1, S]` mask over source positions; `None` when nothing is padded.
    cross_mask: Option<Tensor>,
    /// The same as key lengths per item (for the fused attention).
    cross_limits: KeyLimits,
    past: Vec<Option<(Tensor, Tensor)>>,
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
            past: vec![None; layers],
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
        &mut [Option<(Tensor, Tensor)>],
        &[(Tensor, Tensor)],
        (Option<&Tensor>, &KeyLimits),
    ) {
        (
            &mut self.past,
            &self.cross,
            (self.cross_mask.as_ref(), &self.cross_limits),
        )
    }

    pub(crate) fn advance(&mut self, l: usize) {
        self.len += l;
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
            for (k, v) in self.past.iter_mut().flatten() {
                *k = k.index_select(&ridx, 0)?;
                *v = v.index_select(&ridx, 0)?;
            }
        }
        self.items = items.len();
        Ok(())
    }
}
