//! Reflect padding of the last axis (`torch.nn.functional.pad(mode="reflect")`), the one
//! implementation the codecs, their STFT losses and discriminators share.

use candle_core::{bail, Result, Tensor};

use crate::cpu::{is_untracked_cpu_f32, with_contiguous_f32};

/// Rows per parallel task of the CPU copy (below two tasks it runs serially).
const ROWS_PER_TASK: usize = 64;

/// Pads the last axis of `x` by `left` and `right` samples mirrored around its first and last
/// sample (the edge sample itself is not repeated), as PyTorch's reflect mode. Both pads must
/// be shorter than the axis.
///
/// An untracked CPU f32 tensor is copied row by row into one new buffer; anything else (other
/// devices or dtypes, or a tensor autograd tracks) goes through `index_select`, which is
/// differentiable but gathers element by element (10% of an EnCodec encode on the CPU).
pub fn reflect_pad_last(x: &Tensor, left: usize, right: usize) -> Result<Tensor> {
    let dims = x.dims();
    let Some(&t) = dims.last() else {
        bail!("reflect_pad_last: needs at least one axis, got a scalar");
    };
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    if left >= t || right >= t {
        bail!("reflect_pad_last: pads ({left}, {right}) need more samples than the axis's {t}");
    }
    if is_untracked_cpu_f32(x) {
        return reflect_rows_cpu(x, left, right);
    }
    let idx: Vec<u32> = (0..left)
        .map(|i| (left - i) as u32)
        .chain(0..t as u32)
        .chain((0..right).map(|j| (t - 2 - j) as u32))
        .collect();
    let n = idx.len();
    let idx = Tensor::from_vec(idx, n, x.device())?;
    x.contiguous()?.index_select(&idx, dims.len() - 1)
}

fn reflect_rows_cpu(x: &Tensor, left: usize, right: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    let t = x.dim(candle_core::D::Minus1)?;
    let out_t = left + t + right;
    let rows = x.elem_count() / t;
    let mut out = vec![0f32; rows * out_t];
    with_contiguous_f32(&x, "reflect_pad_last", |src| {
        let pad_row = |(o, s): (&mut [f32], &[f32])| {
            for i in 0..left {
                o[i] = s[left - i];
            }
            o[left..left + t].copy_from_slice(s);
            for j in 0..right {
                o[left + t + j] = s[t - 2 - j];
            }
        };
        let threads = crate::cpu::candle_threads();
        if threads > 1 && rows >= 2 * ROWS_PER_TASK {
            use rayon::prelude::*;
            out.par_chunks_mut(out_t * ROWS_PER_TASK)
                .zip(src.par_chunks(t * ROWS_PER_TASK))
                .for_each(|(o, s)| o.chunks_mut(out_t).zip(s.chunks(t)).for_each(pad_row));
        } else {
            out.chunks_mut(out_t).zip(src.chunks(t)).for_each(pad_row);
        }
    })?;
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("checked above") = out_t;
    Tensor::from_vec(out, shape, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_torch_reflect_on_rows() -> Result<()> {
        // torch.nn.functional.pad(torch.arange(5.).view(1, 1, 5), (3, 2), mode="reflect")
        let x = Tensor::arange(0f32, 5., &Device::Cpu)?.reshape((1, 1, 5))?;
        let y = reflect_pad_last(&x, 3, 2)?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            [3., 2., 1., 0., 1., 2., 3., 4., 3., 2.]
        );
        Ok(())
    }

    #[test]
    fn cpu_copy_equals_the_differentiable_path() -> Result<()> {
        let dev = Device::Cpu;
        // Enough rows for the parallel split, a non-contiguous view, and a 2-D input.
        for shape in [vec![3usize, 70, 11], vec![4, 9]] {
            let x = Tensor::randn(0f32, 1., shape.as_slice(), &dev)?;
            let view = x.transpose(0, x.rank() - 2)?;
            for input in [&x, &view] {
                let fast = reflect_pad_last(input, 4, 7)?;
                let tracked = Var::from_tensor(&input.contiguous()?)?;
                let slow = reflect_pad_last(tracked.as_tensor(), 4, 7)?;
                let diff = (fast - slow)?.abs()?.flatten_all()?.max(0)?;
                assert_eq!(diff.to_scalar::<f32>()?, 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_flows_through_the_tracked_path() -> Result<()> {
        let x = Var::from_tensor(&Tensor::arange(0f32, 4., &Device::Cpu)?)?;
        let y = reflect_pad_last(x.as_tensor(), 1, 1)?; // [1, 0, 1, 2, 3, 2]
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("x has a gradient");
        assert_eq!(g.to_vec1::<f32>()?, [1., 2., 2., 1.]);
        Ok(())
    }

    #[test]
    fn pads_as_long_as_the_axis_are_refused() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(reflect_pad_last(&x, 3, 0).is_err());
        assert!(reflect_pad_last(&x, 0, 2).is_ok());
    }
}
