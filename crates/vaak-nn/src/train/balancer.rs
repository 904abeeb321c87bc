//! A loss balancer in the manner of EnCodec's (Défossez et al., 2022, section 3.4).
//!
//! Several losses computed from one model output `y` (a waveform, say) pull on it with
//! gradients of very different sizes: a mel distance and a waveform L1 differ by orders of
//! magnitude, and an adversarial term's scale drifts as the discriminator learns. Plain
//! weights then have to be retuned whenever a loss changes. The balancer instead takes each
//! term's gradient with respect to `y`, divides it by a running mean of its norm, and scales
//! it by the term's share of the weights, so that term `i` contributes
//! `total_norm · wᵢ / Σw` of the gradient that flows back into the model, whatever its scale.
//!
//! Use: compute the losses on a fresh variable holding the detached output
//! (`Var::from_tensor(&y.detach())`), call [`LossBalancer::balance`], then backpropagate
//! `sum(y · g)` with the returned `g` (detached) through the model, together with any loss
//! that does not depend on `y` (a commitment loss, say).
//!
//! The running means are bias-corrected exponential averages, kept in f64 on the host; their
//! state goes into a checkpoint as JSON ([`LossBalancer::state`]) so a resumed run continues
//! exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Keeps a zero gradient from dividing by zero, as EnCodec's.
const EPS: f64 = 1e-12;

/// How the balancer measures and combines gradients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// Balance the terms (else the weighted sum of the losses is backpropagated as is).
    pub enabled: bool,
    /// Decay of the running mean of each term's gradient norm.
    pub ema_decay: f64,
    /// The norm the combined gradient aims at.
    pub total_norm: f64,
    /// Measure a gradient's norm per batch item and average the items (EnCodec's default),
    /// rather than over the whole batch at once.
    pub per_item: bool,
}

impl Default for BalancerConfig {
    /// Off; when on, EnCodec's settings (decay 0.999, total norm 1, per-item norms).
    fn default() -> Self {
        Self {
            enabled: false,
            ema_decay: 0.999,
            total_norm: 1.0,
            per_item: true,
        }
    }
}

/// One loss term: its name (for the running mean and the logs), weight and value.
pub struct BalancedTerm<'a> {
    pub name: &'static str,
    pub weight: f64,
    pub loss: &'a Tensor,
}

/// What [`LossBalancer::balance`] gives back.
pub struct Balanced {
    /// The combined gradient with respect to the output, shaped like it (no graph).
    pub grad: Tensor,
    /// This step's gradient norm of each balanced term, before scaling (a diagnostic: how
    /// hard each loss pulls on the output).
    pub norms: Vec<(&'static str, f64)>,
}

/// A bias-corrected exponential mean: `sum / weight`, both decayed each update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RunningMean {
    sum: f64,
    weight: f64,
}

impl RunningMean {
    fn update(&mut self, value: f64, decay: f64) -> f64 {
        self.sum = self.sum * decay + value;
        self.weight = self.weight * decay + 1.0;
        self.sum / self.weight
    }
}

/// The balancer and its running gradient norms (see the module docs).
#[derive(Clone, Debug)]
pub struct LossBalancer {
    cfg: BalancerConfig,
    norms: BTreeMap<String, RunningMean>,
}

impl LossBalancer {
    pub fn new(cfg: BalancerConfig) -> Self {
        Self {
            cfg,
            norms: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &BalancerConfig {
        &self.cfg
    }

    /// The combined gradient of `terms` with respect to `output`, the variable they were
    /// computed from. Terms with a zero weight, or that do not depend on `output`, are left
    /// out (and their weight does not count). Each term is backpropagated on its own, through
    /// the loss graph only; all norms come to the host in one transfer.
    pub fn balance(&mut self, output: &Var, terms: &[BalancedTerm<'_>]) -> Result<Balanced> {
        let y = output.as_tensor();
        let mut used = Vec::with_capacity(terms.len());
        for t in terms.iter().filter(|t| t.weight > 0.0) {
            if let Some(g) = t.loss.backward()?.get(y) {
                used.push((t, g.to_dtype(DType::F32)?));
            }
        }
        if used.is_empty() {
            return Ok(Balanced {
                grad: y.zeros_like()?,
                norms: Vec::new(),
            });
        }
        let norms = used
            .iter()
            .map(|(_, g)| self.norm(g))
            .collect::<Result<Vec<_>>>()?;
        let norms = Tensor::stack(&norms, 0)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let total_weight: f64 = used.iter().map(|(t, _)| t.weight).sum();
        let mut grad: Option<Tensor> = None;
        let mut reported = Vec::with_capacity(used.len());
        for ((t, g), &n) in used.iter().zip(&norms) {
            let mean = self
                .norms
                .entry(t.name.to_string())
                .or_default()
                .update(n, self.cfg.ema_decay);
            let scale = self.cfg.total_norm * (t.weight / total_weight) / (EPS + mean);
            let part = g.affine(scale, 0.0)?;
            grad = Some(match grad {
                None => part,
                Some(acc) => (acc + part)?,
            });
            reported.push((t.name, n));
        }
        let grad = grad.expect("at least one term").to_dtype(y.dtype())?;
        Ok(Balanced {
            grad,
            norms: reported,
        })
    }

    /// L2 norm of `g`: per item (first dimension) and averaged, or over all of it.
    fn norm(&self, g: &Tensor) -> Result<Tensor> {
        if self.cfg.per_item && g.rank() > 1 {
            g.sqr()?.flatten_from(1)?.sum(1)?.sqrt()?.mean_all()
        } else {
            g.sqr()?.sum_all()?.sqrt()
        }
    }

    /// The running means, for a checkpoint.
    pub fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.norms).expect("plain numbers serialise")
    }

    /// Restores [`LossBalancer::state`].
    pub fn load_state(&mut self, state: &serde_json::Value) -> std::result::Result<(), String> {
        self.norms = serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::max_abs_diff;
    use candle_core::Device;

    fn output() -> Var {
        let y = Tensor::new(
            &[[0.5f32, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        Var::from_tensor(&y).unwrap()
    }

    fn target(y: &Var, shift: f32) -> Tensor {
        y.as_tensor().detach().affine(1.0, shift as f64).unwrap()
    }

    fn item_norms(g: &Tensor) -> Vec<f32> {
        g.sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Each term's share of the combined gradient follows its weight, whatever the loss's
    /// scale: here a squared error scaled by 1000 against an L1 at weights 1 : 3.
    #[test]
    fn shares_follow_the_weights_not_the_loss_scales() {
        let y = output();
        let big = ((y.as_tensor() - target(&y, 0.3)).unwrap().sqr().unwrap())
            .mean_all()
            .unwrap()
            .affine(1000.0, 0.0)
            .unwrap();
        let small = (y.as_tensor() - target(&y, -0.7))
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap();
        let cfg = BalancerConfig {
            enabled: true,
            per_item: false,
            ..Default::default()
        };
        let terms = |w_big: f64| {
            [
                BalancedTerm {
                    name: "big",
                    weight: w_big,
                    loss: &big,
                },
                BalancedTerm {
                    name: "small",
                    weight: 3.0,
                    loss: &small,
                },
            ]
        };
        let mut b = LossBalancer::new(cfg.clone());
        let out = b.balance(&y, &terms(1.0)).unwrap();
        // At the first step the running mean is this step's norm, so each scaled part has
        // exactly its share of `total_norm`.
        let g_big = big.backward().unwrap().get(y.as_tensor()).unwrap().clone();
        let g_small = small
            .backward()
            .unwrap()
            .get(y.as_tensor())
            .unwrap()
            .clone();
        let part = |g: &Tensor, n: f64, share: f64| g.affine(share / n, 0.0).unwrap();
        let n_big = out.norms[0].1;
        let n_small = out.norms[1].1;
        assert!(n_big > 100.0 * n_small, "{n_big} vs {n_small}");
        let expect = (part(&g_big, n_big, 0.25) + part(&g_small, n_small, 0.75)).unwrap();
        let diff = max_abs_diff(&out.grad, &expect).unwrap();
        assert!(diff < 1e-6, "{diff}");
        // Scaling a loss by a constant changes nothing.
        let bigger = big.affine(1e6, 0.0).unwrap();
        let mut b2 = LossBalancer::new(cfg);
        let out2 = b2
            .balance(
                &y,
                &[
                    BalancedTerm {
                        name: "big",
                        weight: 1.0,
                        loss: &bigger,
                    },
                    BalancedTerm {
                        name: "small",
                        weight: 3.0,
                        loss: &small,
                    },
                ],
            )
            .unwrap();
        let diff = max_abs_diff(&out2.grad, &out.grad).unwrap();
        assert!(diff < 1e-6, "{diff}");
        // A zero weight leaves the term out: the other one gets the whole norm.
        let mut b3 = LossBalancer::new(BalancerConfig {
            enabled: true,
            per_item: false,
            ..Default::default()
        });
        let out3 = b3.balance(&y, &terms(0.0)).unwrap();
        assert_eq!(out3.norms.len(), 1);
        let total = out3
            .grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    /// Per-item norms: with one term, every item's gradient norm averages to `total_norm`.
    #[test]
    fn per_item_norms_average_to_the_total_norm() {
        let y = output();
        let loss = (y.as_tensor() - target(&y, 0.1))
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let mut b = LossBalancer::new(BalancerConfig {
            enabled: true,
            total_norm: 2.0,
            ..Default::default()
        });
        let out = b
            .balance(
                &y,
                &[BalancedTerm {
                    name: "l2",
                    weight: 0.5,
                    loss: &loss,
                }],
            )
            .unwrap();
        let n = item_norms(&out.grad);
        let mean = n.iter().sum::<f32>() / n.len() as f32;
        assert!((mean - 2.0).abs() < 1e-5, "{n:?}");
    }

    /// The running means survive a save and load: the next step is the same.
    #[test]
    fn state_round_trips() {
        let y = output();
        let mut step = 0.0f32;
        let mut loss = || {
            step += 1.0;
            (y.as_tensor() - target(&y, 0.2 * step))
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .affine(step as f64, 0.0)
                .unwrap()
        };
        let cfg = BalancerConfig {
            enabled: true,
            ema_decay: 0.9,
            ..Default::default()
        };
        let mut a = LossBalancer::new(cfg.clone());
        let l1 = loss();
        a.balance(
            &y,
            &[BalancedTerm {
                name: "l1",
                weight: 1.0,
                loss: &l1,
            }],
        )
        .unwrap();
        let mut b = LossBalancer::new(cfg);
        b.load_state(&a.state()).unwrap();
        let l2 = loss();
        let term = [BalancedTerm {
            name: "l1",
            weight: 1.0,
            loss: &l2,
        }];
        let ga = a.balance(&y, &term).unwrap().grad;
        let gb = b.balance(&y, &term).unwrap().grad;
        assert_eq!(
            ga.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            gb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // The running mean lags the growing loss: the second step's norm is above 1.
        let n = item_norms(&ga);
        assert!(n.iter().sum::<f32>() / 2.0 > 1.01, "{n:?}");
        assert!(b.load_state(&serde_json::json!({"l1": 3})).is_err());
    }
}
