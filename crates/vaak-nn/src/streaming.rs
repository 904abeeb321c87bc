//! The streaming abstraction shared by every stateful module in vaak.
//!
//! A module consumes a stream chunk by chunk along the time axis (the last axis for
//! convolutions, axis 1 for `[batch, time, dim]` transformer inputs). A chunk may be empty:
//! a strided conv that has not yet seen a whole window emits nothing, and the next module must
//! accept that. Batched streams (one slot per server session) step together; a [`StreamMask`]
//! says which slots are live this step, and inactive slots keep their state untouched.

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};

/// A chunk of a stream. `None` means "no new frames this step".
#[derive(Clone, Debug, Default)]
pub struct StreamTensor(Option<Tensor>);

impl StreamTensor {
    pub fn empty() -> Self {
        Self(None)
    }

    /// Wraps a tensor as it is (a zero-length tensor stays a non-empty chunk of no frames;
    /// use [`StreamTensor::empty`] for "nothing this step").
    pub fn from_tensor(t: Tensor) -> Self {
        Self(Some(t))
    }

    pub fn as_option(&self) -> Option<&Tensor> {
        self.0.as_ref()
    }

    pub fn into_option(self) -> Option<Tensor> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Length along `dim`, zero when empty.
    pub fn seq_len<D: candle_core::shape::Dim>(&self, dim: D) -> Result<usize> {
        match &self.0 {
            None => Ok(0),
            Some(t) => t.dim(dim),
        }
    }

    /// Concatenates two chunks along `dim`; either side may be empty.
    pub fn cat2<D: candle_core::shape::Dim>(&self, rhs: &Self, dim: D) -> Result<Self> {
        match (&self.0, &rhs.0) {
            (None, None) => Ok(Self(None)),
            (Some(a), None) => Ok(Self(Some(a.clone()))),
            (None, Some(b)) => Ok(Self(Some(b.clone()))),
            (Some(a), Some(b)) => Ok(Self(Some(Tensor::cat(&[a, b], dim)?))),
        }
    }

    /// Splits into the first `lhs_len` frames along `dim` and the rest; either may be empty.
    pub fn split<D: candle_core::shape::Dim>(
        &self,
        dim: D,
        lhs_len: usize,
    ) -> Result<(Self, Self)> {
        match &self.0 {
            None => Ok((Self(None), Self(None))),
            Some(t) => {
                let dim = dim.to_index(t.shape(), "split")?;
                let len = t.dim(dim)?;
                let lhs_len = lhs_len.min(len);
                let lhs = if lhs_len == 0 {
                    Self(None)
                } else {
                    Self(Some(t.narrow(dim, 0, lhs_len)?))
                };
                let rhs = if lhs_len == len {
                    Self(None)
                } else {
                    Self(Some(t.narrow(dim, lhs_len, len - lhs_len)?))
                };
                Ok((lhs, rhs))
            }
        }
    }

    /// Applies a stateless function to a non-empty chunk.
    pub fn map<F: FnOnce(&Tensor) -> Result<Tensor>>(&self, f: F) -> Result<Self> {
        match &self.0 {
            None => Ok(Self(None)),
            Some(t) => Ok(Self(Some(f(t)?))),
        }
    }
}

impl From<Tensor> for StreamTensor {
    fn from(t: Tensor) -> Self {
        Self::from_tensor(t)
    }
}

impl From<Option<Tensor>> for StreamTensor {
    fn from(t: Option<Tensor>) -> Self {
        Self(t)
    }
}

/// Which batch slots take part in a step (or a reset). `All` is the common, cheap case.
#[derive(Clone, Debug, Default)]
pub enum StreamMask {
    #[default]
    All,
    /// One flag per batch slot.
    Slots(Vec<bool>),
}

impl StreamMask {
    pub fn all() -> Self {
        Self::All
    }

    pub fn from_slots(slots: &[bool]) -> Self {
        Self::Slots(slots.to_vec())
    }

    /// A mask with only `batch_idx` set.
    pub fn only(batch_idx: usize, batch_size: usize) -> Self {
        Self::Slots((0..batch_size).map(|i| i == batch_idx).collect())
    }

    pub fn is_all(&self) -> bool {
        match self {
            Self::All => true,
            Self::Slots(s) => s.iter().all(|&b| b),
        }
    }

    pub fn is_active(&self, batch_idx: usize) -> bool {
        match self {
            Self::All => true,
            Self::Slots(s) => s.get(batch_idx).copied().unwrap_or(false),
        }
    }

    /// The mask as a `[batch]` u8 tensor.
    pub fn to_tensor(&self, batch_size: usize, device: &Device) -> Result<Tensor> {
        let v: Vec<u8> = (0..batch_size).map(|i| self.is_active(i) as u8).collect();
        Tensor::from_vec(v, batch_size, device)
    }

    /// Per slot along axis 0: `new` where the slot is active, `old` elsewhere. Shapes must match.
    pub fn select(&self, new: &Tensor, old: &Tensor) -> Result<Tensor> {
        if self.is_all() {
            return Ok(new.clone());
        }
        let b = new.dim(0)?;
        if old.dims() != new.dims() {
            candle_core::bail!(
                "StreamMask::select: shape mismatch {:?} vs {:?}",
                new.shape(),
                old.shape()
            );
        }
        let mut shape = vec![1usize; new.rank()];
        shape[0] = b;
        let m = self.to_tensor(b, new.device())?.reshape(shape)?;
        m.broadcast_as(new.shape())?.where_cond(new, old)
    }
}

/// A module that runs over a stream one chunk at a time and equals its whole-clip forward.
pub trait StreamingModule {
    /// Consumes the next chunk and returns whatever output is now complete. Slots that are
    /// inactive in `mask` keep their state; their rows of the output carry no meaning.
    fn step(&mut self, xs: &StreamTensor, mask: &StreamMask) -> Result<StreamTensor>;

    /// Forgets every slot's state, as if no chunk had been seen.
    fn reset_state(&mut self);

    /// Forgets the state of the slots set in `mask` only; the other slots are untouched.
    fn reset_slots(&mut self, mask: &StreamMask) -> Result<()>;

    /// Forgets the state of one slot.
    fn reset_batch_idx(&mut self, batch_idx: usize, batch_size: usize) -> Result<()> {
        self.reset_slots(&StreamMask::only(batch_idx, batch_size))
    }
}

/// Keeps `state` rows where `reset` is unset and replaces the others with zeros; for modules
/// whose fresh state is all zeros.
pub fn zero_slots(state: &Tensor, reset: &StreamMask) -> Result<Tensor> {
    match reset {
        StreamMask::All => state.zeros_like(),
        StreamMask::Slots(_) => reset.select(&state.zeros_like()?, state),
    }
}

/// Runs `module` over `xs` in chunks of `chunk` frames along `dim` and concatenates the outputs.
/// Test and offline helper: the streamed result must equal the whole-clip forward.
pub fn stream_in_chunks<M: StreamingModule + ?Sized>(
    module: &mut M,
    xs: &Tensor,
    dim: usize,
    chunk: usize,
) -> Result<StreamTensor> {
    let len = xs.dim(dim)?;
    let mut out = StreamTensor::empty();
    let mut start = 0;
    while start < len {
        let n = chunk.max(1).min(len - start);
        let piece = StreamTensor::from_tensor(xs.narrow(dim, start, n)?);
        let y = module.step(&piece, &StreamMask::All)?;
        out = out.cat2(&y, dim)?;
        start += n;
    }
    Ok(out)
}

/// Max absolute difference between two tensors of the same shape, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("max_abs_diff: shapes {:?} vs {:?}", a.shape(), b.shape());
    }
    if a.elem_count() == 0 {
        return Ok(0.0);
    }
    a.to_dtype(DType::F32)?
        .sub(&b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()
}

/// Row `i` of a batched tensor, keeping the batch axis.
pub fn slot(t: &Tensor, i: usize) -> Result<Tensor> {
    t.i(i..i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_cat_round_trip_with_empty_edges() -> Result<()> {
        let t = Tensor::arange(0f32, 10., &Device::Cpu)?.reshape((1, 1, 10))?;
        let s = StreamTensor::from_tensor(t.clone());
        let (a, b) = s.split(2, 4)?;
        assert_eq!(a.seq_len(2)?, 4);
        assert_eq!(b.seq_len(2)?, 6);
        let back = a.cat2(&b, 2)?.into_option().unwrap();
        assert_eq!(max_abs_diff(&back, &t)?, 0.0);
        let (all, none) = s.split(2, 10)?;
        assert!(none.is_empty());
        assert_eq!(all.seq_len(2)?, 10);
        let (none, all) = s.split(2, 0)?;
        assert!(none.is_empty() && !all.is_empty());
        assert!(StreamTensor::empty()
            .cat2(&StreamTensor::empty(), 2)?
            .is_empty());
        Ok(())
    }

    #[test]
    fn mask_select_touches_only_active_rows() -> Result<()> {
        let new = Tensor::ones((3, 2), DType::F32, &Device::Cpu)?;
        let old = Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?;
        let m = StreamMask::from_slots(&[true, false, true]);
        let got = m.select(&new, &old)?.to_vec2::<f32>()?;
        assert_eq!(got, vec![vec![1., 1.], vec![0., 0.], vec![1., 1.]]);
        let z = zero_slots(&new, &StreamMask::only(1, 3))?.to_vec2::<f32>()?;
        assert_eq!(z, vec![vec![1., 1.], vec![0., 0.], vec![1., 1.]]);
        assert!(!m.is_active(1) && m.is_active(2) && !m.is_active(7));
        Ok(())
    }
}
