//! PyTorch weight normalisation, in both of its checkpoint spellings.
//!
//! `torch.nn.utils.weight_norm` stores `weight_g` (magnitude) and `weight_v` (direction);
//! `torch.nn.utils.parametrizations.weight_norm` (used by transformers 5) stores
//! `parametrizations.weight.original0` (g) and `parametrizations.weight.original1` (v). Both
//! mean `weight = g * v / ||v||`, the norm taken over every dim except `dim`.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// `g * v / ||v||`, with the L2 norm over all dims of `v` except `dim` (PyTorch's
/// `norm_except_dim`); `dim = None` takes the norm over the whole tensor (PyTorch `dim=None`).
/// `g` must have `v`'s rank with size 1 on the reduced dims (or be a scalar for `dim = None`).
/// Computed in f32 (f64 inputs stay f64) and returned in `v`'s dtype.
pub fn merge_weight_norm(g: &Tensor, v: &Tensor, dim: Option<usize>) -> Result<Tensor> {
    let out_dtype = v.dtype();
    let work = if out_dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let v32 = v.to_dtype(work)?;
    let g32 = g.to_dtype(work)?;
    let sq = v32.sqr()?;
    let norm = match dim {
        Some(d) => {
            if d >= v.rank() {
                candle_core::bail!("weight_norm dim {d} out of range for rank {}", v.rank())
            }
            let others: Vec<usize> = (0..v.rank()).filter(|&i| i != d).collect();
            if others.is_empty() {
                sq.sqrt()?
            } else {
                sq.sum_keepdim(others)?.sqrt()?
            }
        }
        None => sq.sum_all()?.sqrt()?,
    };
    let g32 = if dim.is_none() {
        g32.flatten_all()?.reshape(())?
    } else {
        g32
    };
    let scale = g32.broadcast_div(&norm)?;
    v32.broadcast_mul(&scale)?.to_dtype(out_dtype)
}

const PARAM_G: &str = "parametrizations.weight.original0";
const PARAM_V: &str = "parametrizations.weight.original1";

/// The effective `weight` of the module at `vb`'s prefix, from whichever spelling the
/// checkpoint uses: `weight_g`/`weight_v`, `parametrizations.weight.original0/1`, or a plain
/// `weight` (already merged). `shape` is the expected merged weight shape; `dim` as in
/// [`merge_weight_norm`] (PyTorch's default is `Some(0)`).
pub fn weight_norm(vb: &VarBuilder, shape: &[usize], dim: Option<usize>) -> Result<Tensor> {
    let g_shape: Vec<usize> = match dim {
        Some(d) => (0..shape.len())
            .map(|i| if i == d { shape[i] } else { 1 })
            .collect(),
        None => vec![],
    };
    for (g, v) in [("weight_g", "weight_v"), (PARAM_G, PARAM_V)] {
        if vb.contains_tensor(g) && vb.contains_tensor(v) {
            let v = vb.get(shape, v)?;
            // Some exporters squeeze g; accept any layout with the right element count.
            let g = vb.get_unchecked(g)?;
            let expected: usize = g_shape.iter().product();
            if g.elem_count() != expected {
                candle_core::bail!(
                    "{}.{g}: {} elements, expected {expected} for weight shape {shape:?}",
                    vb.prefix(),
                    g.elem_count()
                )
            }
            let g = g.reshape(g_shape.as_slice())?;
            return merge_weight_norm(&g, &v, dim);
        }
    }
    if vb.contains_tensor("weight") {
        return vb.get(shape, "weight");
    }
    candle_core::bail!(
        "{p}: no weight found: looked for {p}.weight_g + {p}.weight_v, {p}.{PARAM_G} + \
         {p}.{PARAM_V}, and {p}.weight",
        p = vb.prefix()
    )
}
