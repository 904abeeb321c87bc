//! The state a streaming conv carries from one step to the next is detached from the autograd
//! graph. With trainable weights (a model loaded into a `VarMap`, as every S2S checkpoint is)
//! each step's output records its inputs; a carried buffer that kept that record would chain
//! every step to the one before it, and a server stream would hold all of its history in memory
//! (issue 13: the S2S encoder's conv buffers grew the server by ~40 MB/min). The check is
//! exact: the gradient of step `n`'s output must not reach the input of step `n - 1`, while it
//! still reaches step `n`'s own input and the weights.

use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_nn::conv::{CausalConv1d, CausalConvConfig, CausalConvTranspose1d};
use vaak_nn::streaming::{StreamMask, StreamTensor, StreamingModule};

fn rand_var(rng: &mut ChaCha8Rng, shape: &[usize]) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn out(y: StreamTensor) -> Tensor {
    y.into_option().expect("the step emits output")
}

/// Steps `m` over `steps` fresh variable inputs `[2, c, t]` (the last steps under a one-slot
/// mask, with a slot reset between) and checks the last output's gradient.
fn check<M: StreamingModule>(m: &mut M, weight: &Var, c: usize, t: usize) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let steps = 6;
    let xs: Vec<Var> = (0..steps).map(|_| rand_var(&mut rng, &[2, c, t])).collect();
    let mut last = None;
    for (n, x) in xs.iter().enumerate() {
        let mask = if n < 3 {
            StreamMask::All
        } else {
            StreamMask::from_slots(&[true, false])
        };
        if n == 4 {
            m.reset_slots(&StreamMask::only(1, 2))?;
        }
        last = Some(out(
            m.step(&StreamTensor::from_tensor(x.as_tensor().clone()), &mask)?
        ));
    }
    let grads = last.expect("steps ran").sum_all()?.backward()?;
    assert!(
        grads.get(xs[steps - 1].as_tensor()).is_some(),
        "the gradient reaches the step's own input"
    );
    assert!(
        grads.get(weight.as_tensor()).is_some(),
        "the gradient reaches the weights"
    );
    for (n, x) in xs.iter().enumerate().take(steps - 1) {
        assert!(
            grads.get(x.as_tensor()).is_none(),
            "step {} still holds the graph of step {n}'s input through the carried state",
            steps - 1
        );
    }
    Ok(())
}

#[test]
fn conv_state_does_not_keep_earlier_steps_graph() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cfg = CausalConvConfig::new(3, 4, 5);
    let w = rand_var(&mut rng, &[4, 3, 5]);
    let b = rand_var(&mut rng, &[4]);
    let mut conv =
        CausalConv1d::from_tensors(cfg, w.as_tensor().clone(), Some(b.as_tensor().clone()))?;
    check(&mut conv, &w, 3, 4)
}

#[test]
fn conv_transpose_state_does_not_keep_earlier_steps_graph() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut cfg = CausalConvConfig::new(3, 4, 4);
    cfg.stride = 2;
    // Transpose weights are [in, out / groups, k].
    let w = rand_var(&mut rng, &[3, 4, 4]);
    let b = rand_var(&mut rng, &[4]);
    let mut tr = CausalConvTranspose1d::from_tensors(
        cfg,
        w.as_tensor().clone(),
        Some(b.as_tensor().clone()),
    )?;
    check(&mut tr, &w, 3, 3)
}
