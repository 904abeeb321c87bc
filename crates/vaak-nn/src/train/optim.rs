//! AdamW with decoupled weight decay, per-parameter decay exclusions and exportable state.
//!
//! The update is `torch.optim.AdamW`'s single-tensor path, operation for operation:
//! `p *= 1 - lr*wd` (decayed params only), `m = lerp(m, g, 1-b1)`, `v = b2*v + (1-b2)*g*g`,
//! `p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`, with a step count `t` per parameter
//! that advances only when the parameter has a gradient (like PyTorch, which skips
//! `grad is None`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// A weight-decay exclusion predicate: `(name, tensor) -> excluded`.
pub type DecayPredicate = Arc<dyn Fn(&str, &Tensor) -> bool + Send + Sync>;

/// Which parameters are excluded from weight decay.
#[derive(Clone, Default)]
pub enum DecayFilter {
    /// Exclude tensors of rank 0 or 1 (biases, norm gains, scales) and any parameter whose
    /// dotted name has a segment equal to `bias`, containing `norm` (layer_norm, rmsnorm,
    /// norm1, ...), starting with `ln` (ln_1, ln_f), or containing `embed` (embeddings,
    /// embed_tokens, pos_embed).
    #[default]
    Default,
    /// Decay everything.
    None,
    /// Exclude names matching any of these globs (`*` matches any run of characters,
    /// including dots; `?` one character).
    Globs(Vec<String>),
    /// Exclude where the predicate returns true.
    Predicate(DecayPredicate),
}

impl fmt::Debug for DecayFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "Default"),
            Self::None => write!(f, "None"),
            Self::Globs(g) => f.debug_tuple("Globs").field(g).finish(),
            Self::Predicate(_) => write!(f, "Predicate(..)"),
        }
    }
}

fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear in practice.
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

impl DecayFilter {
    /// Whether `name` is excluded from weight decay.
    pub fn excludes(&self, name: &str, t: &Tensor) -> bool {
        match self {
            Self::Default => {
                t.rank() <= 1
                    || name.split('.').any(|seg| {
                        let seg = seg.to_ascii_lowercase();
                        seg == "bias"
                            || seg.contains("norm")
                            || seg.starts_with("ln")
                            || seg.contains("embed")
                    })
            }
            Self::None => false,
            Self::Globs(globs) => globs
                .iter()
                .any(|g| glob_match(g.as_bytes(), name.as_bytes())),
            Self::Predicate(f) => f(name, t),
        }
    }
}

/// AdamW hyper-parameters (PyTorch's defaults).
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub no_decay: DecayFilter,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            no_decay: DecayFilter::Default,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
}

/// Moments are kept in f32 (f64 for f64 parameters) whatever the parameter dtype, so
/// bf16/f16 training does not lose the small updates.
fn work_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl AdamW {
    /// An optimizer over `params`; names must be unique (they key the exported state).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.clone()) {
                return Err(Error::Msg(format!(
                    "AdamW: parameter name {name:?} given twice"
                )));
            }
            let t = var.as_tensor();
            if !t.dtype().is_float() {
                return Err(Error::Msg(format!(
                    "AdamW: parameter {name:?} has non-float dtype {:?}",
                    t.dtype()
                )));
            }
            let wd = work_dtype(t.dtype());
            let decay = cfg.weight_decay != 0.0 && !cfg.no_decay.excludes(&name, t);
            out.push(Param {
                exp_avg: Tensor::zeros(t.shape(), wd, t.device())?,
                exp_avg_sq: Tensor::zeros(t.shape(), wd, t.device())?,
                name,
                var,
                decay,
                step: 0,
            });
        }
        Ok(Self { params: out, cfg })
    }

    /// An optimizer over every variable of a `VarMap`, in name order.
    pub fn from_varmap(vm: &VarMap, cfg: AdamWConfig) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = vm
            .data()
            .lock()
            .map_err(|_| Error::Msg("VarMap lock poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(vars, cfg)
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Sets the learning rate (call before each step with the schedule's value).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Parameter names in optimizer order.
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// The variables in optimizer order (for [`super::clip_grad_norm`]).
    pub fn vars(&self) -> Vec<&Var> {
        self.params.iter().map(|p| &p.var).collect()
    }

    /// Whether `name` receives weight decay (`None` for an unknown name).
    pub fn decays(&self, name: &str) -> Option<bool> {
        self.params.iter().find(|p| p.name == name).map(|p| p.decay)
    }

    /// One update from `grads`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let c = &self.cfg;
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            p.step += 1;
            let pd = p.var.dtype();
            let wd = work_dtype(pd);
            // candle's backward detaches intermediate gradients but not a variable's own: when
            // a variable feeds an op like `mul` or `sqr` (weight norm), its gradient keeps that
            // step's forward graph. The moments below outlive the step, so they must not.
            let g = g.detach().to_dtype(wd)?;
            let t = p.step as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            let step_size = c.lr / bc1;
            if let Some((theta, m, v)) = fused_cpu_update(p, &g, c, step_size, bc2)? {
                p.var.set(&theta)?;
                p.exp_avg = m;
                p.exp_avg_sq = v;
                continue;
            }
            let mut theta = p.var.as_tensor().detach().to_dtype(wd)?;
            // Scalars enter through `affine` (a host f64 folded into the kernel), not as
            // device tensors: no host-to-device copy per scalar, which on CUDA costs a sync.
            if p.decay {
                theta = theta.affine(1.0 - c.lr * c.weight_decay, 0.0)?;
            }
            let m = (&p.exp_avg + (&g - &p.exp_avg)?.affine(1.0 - c.beta1, 0.0)?)?;
            let v = (p.exp_avg_sq.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let denom = v.sqrt()?.affine(1.0 / bc2.sqrt(), c.eps)?;
            let upd = m.affine(-step_size, 0.0)?.div(&denom)?;
            let theta = (theta + upd)?;
            p.var.set(&theta.to_dtype(pd)?)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        Ok(())
    }

    /// The optimizer state as named tensors: `<param>.exp_avg`, `<param>.exp_avg_sq` and
    /// `<param>.step` (i64, shape `[1]`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("{}.exp_avg", p.name), p.exp_avg.clone());
            out.insert(format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.clone());
            out.insert(
                format!("{}.step", p.name),
                Tensor::new(&[p.step as i64], p.var.device())?,
            );
        }
        Ok(out)
    }

    /// Restores state exported by [`AdamW::state_tensors`]. Every parameter's three entries
    /// must be present with matching shapes; nothing is changed on error.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |key: String| {
            state.get(&key).cloned().ok_or(Error::MissingTensor {
                name: key,
                files: "optimizer state".into(),
            })
        };
        let mut new = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let shape = p.var.dims().to_vec();
            let wd = work_dtype(p.var.dtype());
            let dev = p.var.device();
            let mut moments = Vec::with_capacity(2);
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{}.{suffix}", p.name);
                let t = get(key.clone())?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::ShapeMismatch {
                        name: key,
                        file: "optimizer state".into(),
                        expected: shape,
                        found: t.dims().to_vec(),
                    });
                }
                moments.push(t.to_dtype(wd)?.to_device(dev)?);
            }
            let key = format!("{}.step", p.name);
            let st = get(key.clone())?;
            let steps: Vec<i64> = st.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
            let [step] = steps[..] else {
                return Err(Error::ShapeMismatch {
                    name: key,
                    file: "optimizer state".into(),
                    expected: vec![1],
                    found: st.dims().to_vec(),
                });
            };
            if step < 0 {
                return Err(Error::Msg(format!(
                    "optimizer state {key}: negative step {step}"
                )));
            }
            let exp_avg_sq = moments.pop().expect("two moments");
            let exp_avg = moments.pop().expect("two moments");
            new.push((exp_avg, exp_avg_sq, step as u64));
        }
        for (p, (m, v, s)) in self.params.iter_mut().zip(new) {
            p.exp_avg = m;
            p.exp_avg_sq = v;
            p.step = s;
        }
        Ok(())
    }
}

/// The AdamW update of one CPU f32 parameter in one pass: the same f32 arithmetic, in the same
/// order, as the tensor ops of [`AdamW::step`] (each `affine` is `x * mul + add` in f32), which
/// take about twelve passes over the parameter and allocate as many tensors. `None` when the
/// parameter, its gradient or its moments are not contiguous CPU f32 tensors.
fn fused_cpu_update(
    p: &Param,
    g: &Tensor,
    c: &AdamWConfig,
    step_size: f64,
    bc2: f64,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    use crate::cpu::contiguous_f32;
    let theta = p.var.as_tensor();
    let all = [theta, g, &p.exp_avg, &p.exp_avg_sq];
    if !all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
    {
        return Ok(None);
    }
    // Multiplying by 1 is exact, so no decay needs no branch.
    let decay = if p.decay {
        (1.0 - c.lr * c.weight_decay) as f32
    } else {
        1.0
    };
    let (one_m_b1, b2, one_m_b2) = (
        (1.0 - c.beta1) as f32,
        c.beta2 as f32,
        (1.0 - c.beta2) as f32,
    );
    let (inv_sqrt_bc2, eps) = ((1.0 / bc2.sqrt()) as f32, c.eps as f32);
    let neg_step = (-step_size) as f32;
    let n = theta.elem_count();
    let (mut th2, mut m2, mut v2) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    // Read guards on the four storages; the slices borrow from them.
    let held: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
    let mut data = Vec::with_capacity(4);
    for (storage, layout) in &held {
        let candle_core::Storage::Cpu(s) = &**storage else {
            return Ok(None);
        };
        data.push(contiguous_f32(s, layout, "AdamW")?);
    }
    let [th, gv, m, v] = data[..] else {
        return Ok(None);
    };
    let outs = th2.iter_mut().zip(m2.iter_mut().zip(v2.iter_mut()));
    let ins = th.iter().zip(gv.iter().zip(m.iter().zip(v)));
    for ((&t, (&gi, (&mi, &vi))), (to, (mo, vo))) in ins.zip(outs) {
        let mi = mi + (gi - mi) * one_m_b1;
        let vi = vi * b2 + gi * gi * one_m_b2;
        let denom = vi.sqrt() * inv_sqrt_bc2 + eps;
        *to = t * decay + (mi * neg_step) / denom;
        *mo = mi;
        *vo = vi;
    }
    let shape = theta.shape();
    let dev = theta.device();
    Ok(Some((
        Tensor::from_vec(th2, shape, dev)?,
        Tensor::from_vec(m2, shape, dev)?,
        Tensor::from_vec(v2, shape, dev)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.bias", b"enc.layers.0.bias"));
        assert!(glob_match(
            b"enc.*.norm?.weight",
            b"enc.layers.0.norm1.weight"
        ));
        assert!(!glob_match(b"*.bias", b"enc.bias.weight"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a", b""));
    }

    #[test]
    fn moments_keep_no_graph_of_the_step() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev)?)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..3 {
            // `sqr` of a variable (as in weight norm): candle hands back a gradient that still
            // references this step's forward graph.
            let grads = w.as_tensor().sqr()?.sum_all()?.backward()?;
            assert!(grads.get(w.as_tensor()).unwrap().track_op());
            opt.step(&grads)?;
            for (name, t) in opt.state_tensors().unwrap() {
                assert!(!t.track_op(), "{name} keeps a graph");
            }
        }
        Ok(())
    }

    #[test]
    fn default_filter() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let f = DecayFilter::Default;
        assert!(!f.excludes("enc.layers.0.linear.weight", &w));
        assert!(f.excludes("enc.layers.0.linear.bias", &b));
        assert!(f.excludes("enc.embed_tokens.weight", &w));
        assert!(f.excludes("enc.layer_norm.weight", &w));
        assert!(f.excludes("transformer.ln_f.weight", &w));
        assert!(f.excludes("anything.scale", &b));
    }
}
