//! Training kit: AdamW, LR schedules and grad clipping against PyTorch / transformers
//! (fixtures from tools/fixtures/train_kit.py); exact resume and crash safety of checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_distr::StandardNormal;
use vaak_nn::streaming::max_abs_diff;
use vaak_nn::train::{
    assign_vars, clip_grad_norm, grad_norm, load_latest, named_tensors, AdamW, AdamWConfig,
    CheckpointManager, DecayFilter, LrSchedule, TrainRng, TrainState,
};
use vaak_nn::Error;

/// Max abs difference of parameters and moments vs torch.optim.AdamW, every step.
const ADAMW_TOL: f32 = 1e-6;
/// Schedules are f64 formulas on both sides.
const SCHEDULE_TOL: f64 = 1e-15;
/// Clipped gradients vs clip_grad_norm_; the total norm is compared relatively.
const CLIP_TOL: f32 = 1e-6;
const CLIP_NORM_REL_TOL: f64 = 1e-6;

fn data(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/train"
    ))
    .join(rel)
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data(rel)).unwrap()).unwrap()
}

/// A gradient store holding exactly `grads` for the given variables.
fn store(pairs: &[(&Var, &Tensor)]) -> GradStore {
    let mut gs = GradStore::default();
    for (v, g) in pairs {
        gs.insert(v.as_tensor(), (*g).clone());
    }
    gs
}

const ADAMW_PARAMS: [&str; 3] = ["layer.weight", "layer.bias", "embedding.weight"];

/// Fixture tensors, fixture metadata, the named variables and an optimizer over them.
struct AdamWSetup(
    HashMap<String, Tensor>,
    serde_json::Value,
    Vec<(String, Var)>,
    AdamW,
);

fn adamw_setup() -> AdamWSetup {
    let fx = candle_core::safetensors::load(data("adamw.safetensors"), &Device::Cpu).unwrap();
    let meta = json("adamw.json");
    let vars: Vec<(String, Var)> = ADAMW_PARAMS
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Var::from_tensor(&fx[&format!("init.{n}")]).unwrap(),
            )
        })
        .collect();
    let cfg = AdamWConfig {
        lr: 0.0,
        beta1: meta["betas"][0].as_f64().unwrap(),
        beta2: meta["betas"][1].as_f64().unwrap(),
        eps: meta["eps"].as_f64().unwrap(),
        weight_decay: meta["weight_decay"].as_f64().unwrap(),
        no_decay: DecayFilter::Default,
    };
    let opt = AdamW::new(vars.clone(), cfg).unwrap();
    AdamWSetup(fx, meta, vars, opt)
}

fn adamw_step(
    opt: &mut AdamW,
    vars: &[(String, Var)],
    fx: &HashMap<String, Tensor>,
    meta: &serde_json::Value,
    k: usize,
) {
    opt.set_lr(meta["lrs"][k].as_f64().unwrap());
    let grads: Vec<(&Var, &Tensor)> = vars
        .iter()
        .filter_map(|(n, v)| fx.get(&format!("grad.{k}.{n}")).map(|g| (v, g)))
        .collect();
    opt.step(&store(&grads)).unwrap();
}

#[test]
fn adamw_matches_torch_every_step() {
    let AdamWSetup(fx, meta, vars, mut opt) = adamw_setup();
    // The default exclusions give the same split as the fixture's param groups.
    assert_eq!(opt.decays("layer.weight"), Some(true));
    assert_eq!(opt.decays("layer.bias"), Some(false));
    assert_eq!(opt.decays("embedding.weight"), Some(false));
    assert!(
        !fx.contains_key("grad.2.embedding.weight"),
        "fixture skips a grad"
    );
    let mut worst = 0f32;
    for k in 0..5 {
        adamw_step(&mut opt, &vars, &fx, &meta, k);
        for (n, v) in &vars {
            let d = max_abs_diff(v.as_tensor(), &fx[&format!("param.{k}.{n}")]).unwrap();
            assert!(d <= ADAMW_TOL, "step {k} {n}: {d}");
            worst = worst.max(d);
        }
    }
    let state = opt.state_tensors().unwrap();
    for n in ADAMW_PARAMS {
        for m in ["exp_avg", "exp_avg_sq"] {
            let d = max_abs_diff(&state[&format!("{n}.{m}")], &fx[&format!("{m}.{n}")]).unwrap();
            assert!(d <= ADAMW_TOL, "{n}.{m}: {d}");
        }
        let step: Vec<i64> = state[&format!("{n}.step")].to_vec1().unwrap();
        assert_eq!(
            step[0],
            meta["steps"][n].as_i64().unwrap(),
            "{n} step count"
        );
    }
    println!("adamw max abs diff over 5 steps: {worst:e}");
    // The updates are not trivially small: params moved well beyond the tolerance.
    let moved = max_abs_diff(vars[0].1.as_tensor(), &fx["init.layer.weight"]).unwrap();
    assert!(moved > 1e-2, "{moved}");
}

#[test]
fn adamw_state_roundtrip_and_errors() {
    let AdamWSetup(fx, meta, vars, mut opt) = adamw_setup();
    for k in 0..3 {
        adamw_step(&mut opt, &vars, &fx, &meta, k);
    }
    let state = opt.state_tensors().unwrap();
    // A second optimizer on copies of the same params, restored from the exported state.
    let vars2: Vec<(String, Var)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), Var::from_tensor(v.as_tensor()).unwrap()))
        .collect();
    let mut opt2 = AdamW::new(vars2.clone(), opt.config().clone()).unwrap();
    opt2.load_state(&state).unwrap();
    for k in 3..5 {
        adamw_step(&mut opt, &vars, &fx, &meta, k);
        adamw_step(&mut opt2, &vars2, &fx, &meta, k);
    }
    for ((n, a), (_, b)) in vars.iter().zip(&vars2) {
        assert_eq!(
            max_abs_diff(a.as_tensor(), b.as_tensor()).unwrap(),
            0.0,
            "{n}"
        );
    }
    // Without the state the continuation differs (so the check above is meaningful).
    let vars3: Vec<(String, Var)> = vars
        .iter()
        .map(|(n, _)| {
            (
                n.clone(),
                Var::from_tensor(&fx[&format!("param.2.{n}")]).unwrap(),
            )
        })
        .collect();
    let mut opt3 = AdamW::new(vars3.clone(), opt.config().clone()).unwrap();
    for k in 3..5 {
        adamw_step(&mut opt3, &vars3, &fx, &meta, k);
    }
    assert!(max_abs_diff(vars3[0].1.as_tensor(), vars[0].1.as_tensor()).unwrap() > 1e-4);

    let mut missing = state.clone();
    missing.remove("embedding.weight.exp_avg_sq");
    let err = opt2.load_state(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "embedding.weight.exp_avg_sq"),
        "{err}"
    );
    let mut wrong = state.clone();
    wrong.insert(
        "layer.bias.exp_avg".into(),
        Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = opt2.load_state(&wrong).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, .. } if name == "layer.bias.exp_avg"),
        "{err}"
    );
    let dup = vec![vars[0].clone(), vars[0].clone()];
    assert!(AdamW::new(dup, AdamWConfig::default()).is_err());
}

#[test]
fn decay_filters() {
    let v = |s: &[usize]| Var::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let params = vec![
        ("enc.proj.weight".to_string(), v(&[2, 2])),
        ("enc.proj.bias".to_string(), v(&[2])),
        ("enc.codebook".to_string(), v(&[4, 2])),
    ];
    let with = |f: DecayFilter| {
        let cfg = AdamWConfig {
            no_decay: f,
            ..Default::default()
        };
        let o = AdamW::new(params.clone(), cfg).unwrap();
        params
            .iter()
            .map(|(n, _)| o.decays(n).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(with(DecayFilter::Default), [true, false, true]);
    assert_eq!(with(DecayFilter::None), [true, true, true]);
    assert_eq!(
        with(DecayFilter::Globs(vec![
            "*.codebook".into(),
            "*bias".into()
        ])),
        [true, false, false]
    );
    let pred = DecayFilter::Predicate(std::sync::Arc::new(|n: &str, _: &Tensor| {
        n.starts_with("enc.proj")
    }));
    assert_eq!(with(pred), [false, false, true]);
}

#[test]
fn schedules_match_transformers() {
    let fx = json("schedules.json");
    let peak = fx["peak_lr"].as_f64().unwrap();
    let min_lr = fx["min_lr"].as_f64().unwrap();
    let warmup_steps = fx["warmup_steps"].as_u64().unwrap();
    let total_steps = fx["total_steps"].as_u64().unwrap();
    let cases = [
        (
            "constant",
            LrSchedule::Constant {
                lr: peak,
                warmup_steps,
            },
        ),
        (
            "linear",
            LrSchedule::WarmupLinear {
                peak_lr: peak,
                min_lr: 0.0,
                warmup_steps,
                total_steps,
            },
        ),
        (
            "cosine",
            LrSchedule::WarmupCosine {
                peak_lr: peak,
                min_lr,
                warmup_steps,
                total_steps,
            },
        ),
    ];
    for (key, sched) in &cases {
        let want = fx[*key].as_array().unwrap();
        assert_eq!(want.len() as u64, total_steps + 1);
        for (s, w) in want.iter().enumerate() {
            let w = w.as_f64().unwrap();
            let got = sched.lr_at(s as u64);
            assert!(
                (got - w).abs() <= SCHEDULE_TOL,
                "{key} step {s}: {got} vs {w}"
            );
        }
        // Serialisable, for checkpoints.
        let back: LrSchedule =
            serde_json::from_str(&serde_json::to_string(sched).unwrap()).unwrap();
        assert_eq!(&back, sched);
    }
    // Past the end the cosine stays at min_lr (transformers' curve would rise again).
    let (_, cosine) = &cases[2];
    for s in [total_steps, total_steps + 1, total_steps * 3] {
        assert!((cosine.lr_at(s) - min_lr).abs() < 1e-18, "{s}");
    }
}

#[test]
fn clip_matches_torch() {
    let fx = candle_core::safetensors::load(data("clip.safetensors"), &Device::Cpu).unwrap();
    let meta = json("clip.json");
    for case in ["clipped", "unclipped"] {
        let names = ["a", "b", "c"];
        let vars: Vec<Var> = names
            .iter()
            .map(|n| {
                Var::zeros(fx[&format!("grad.{n}")].shape(), DType::F32, &Device::Cpu).unwrap()
            })
            .collect();
        let grads: Vec<&Tensor> = names.iter().map(|n| &fx[&format!("grad.{n}")]).collect();
        let pairs: Vec<(&Var, &Tensor)> = vars.iter().zip(grads).collect();
        let mut gs = store(&pairs);
        // A parameter without a gradient is ignored.
        let extra = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let mut refs: Vec<&Var> = vars.iter().collect();
        refs.push(&extra);
        let max_norm = meta[case]["max_norm"].as_f64().unwrap();
        let want = meta[case]["total_norm"].as_f64().unwrap();
        assert_eq!(
            grad_norm(&gs, &refs).unwrap(),
            clip_grad_norm(&mut store(&pairs), &refs, f64::INFINITY).unwrap()
        );
        let total = clip_grad_norm(&mut gs, &refs, max_norm).unwrap();
        let rel = (total - want).abs() / want;
        assert!(rel <= CLIP_NORM_REL_TOL, "{case}: norm {total} vs {want}");
        for (n, v) in names.iter().zip(&vars) {
            let g = gs.get(v.as_tensor()).unwrap();
            let d = max_abs_diff(g, &fx[&format!("{case}.{n}")]).unwrap();
            assert!(d <= CLIP_TOL, "{case} {n}: {d}");
        }
        println!("{case}: total norm rel err {rel:e}");
    }
    // Clipping really happened in the clipped case.
    let clipped = max_abs_diff(&fx["clipped.a"], &fx["grad.a"]).unwrap();
    assert!(clipped > 0.1);
}

// ---- exact resume -------------------------------------------------------------------------

const BATCH: usize = 8;
const IN: usize = 4;
const HIDDEN: usize = 16;
const STEPS: u64 = 10;

fn randn(rng: &mut TrainRng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn init_mlp(rng: &mut TrainRng) -> Vec<(String, Var)> {
    [
        ("l1.weight", vec![HIDDEN, IN]),
        ("l1.bias", vec![HIDDEN]),
        ("l2.weight", vec![1, HIDDEN]),
        ("l2.bias", vec![1]),
    ]
    .into_iter()
    .map(|(n, s)| {
        (
            n.to_string(),
            Var::from_tensor(&randn(rng, &s, 0.5)).unwrap(),
        )
    })
    .collect()
}

/// One training step on a batch drawn from `rng`; returns the loss.
fn train_step(
    vars: &[(String, Var)],
    opt: &mut AdamW,
    sched: &LrSchedule,
    rng: &mut TrainRng,
    step: u64,
) -> f32 {
    let x = randn(rng, &[BATCH, IN], 1.0);
    let y = x.sin().unwrap().sum_keepdim(1).unwrap();
    // Augmentation noise, also from the RNG.
    let x = (&x + randn(rng, &[BATCH, IN], 0.05)).unwrap();
    let (w1, b1, w2, b2) = (&vars[0].1, &vars[1].1, &vars[2].1, &vars[3].1);
    let h = x
        .matmul(&w1.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b1.as_tensor())
        .unwrap()
        .tanh()
        .unwrap();
    let out = h
        .matmul(&w2.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b2.as_tensor())
        .unwrap();
    let loss = (out - y).unwrap().sqr().unwrap().mean_all().unwrap();
    let mut grads = loss.backward().unwrap();
    clip_grad_norm(&mut grads, &opt.vars(), 1.0).unwrap();
    opt.set_lr(sched.lr_at(step));
    opt.step(&grads).unwrap();
    loss.to_scalar::<f32>().unwrap()
}

fn schedule() -> LrSchedule {
    LrSchedule::WarmupCosine {
        peak_lr: 5e-2,
        min_lr: 5e-3,
        warmup_steps: 2,
        total_steps: STEPS,
    }
}

fn adamw_cfg() -> AdamWConfig {
    AdamWConfig {
        weight_decay: 0.05,
        ..Default::default()
    }
}

fn bits(vars: &[(String, Var)]) -> Vec<Vec<u32>> {
    vars.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        })
        .collect()
}

#[test]
fn exact_resume_is_bit_identical() {
    const SEED: u64 = 1234;
    // Straight run.
    let mut rng = TrainRng::new(SEED);
    let vars = init_mlp(&mut rng);
    let mut opt = AdamW::new(vars.clone(), adamw_cfg()).unwrap();
    let sched = schedule();
    let straight: Vec<f32> = (0..STEPS)
        .map(|s| train_step(&vars, &mut opt, &sched, &mut rng, s))
        .collect();
    let straight_bits = bits(&vars);
    assert!(
        straight[STEPS as usize - 1] < straight[0],
        "it trains: {straight:?}"
    );

    // Half, checkpoint, drop everything, resume.
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Vec::new();
    {
        let mut rng = TrainRng::new(SEED);
        let vars = init_mlp(&mut rng);
        let mut opt = AdamW::new(vars.clone(), adamw_cfg()).unwrap();
        let sched = schedule();
        for s in 0..STEPS / 2 {
            losses.push(train_step(&vars, &mut opt, &sched, &mut rng, s));
        }
        let mgr = CheckpointManager::new(dir.path(), 2).unwrap();
        let state = TrainState {
            step: STEPS / 2,
            schedule: Some(sched),
            rng: Some(rng.state()),
            metadata: serde_json::json!({"losses": losses}),
        };
        mgr.save(&named_tensors(&vars), &opt.state_tensors().unwrap(), &state)
            .unwrap();
    }
    let ckpt = load_latest(dir.path(), &Device::Cpu)
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(ckpt.state.step, STEPS / 2);
    assert_eq!(
        ckpt.state.metadata["losses"].as_array().unwrap().len(),
        (STEPS / 2) as usize
    );
    // Fresh parameters with different values, then overwritten from the checkpoint.
    let vars: Vec<(String, Var)> = init_mlp(&mut TrainRng::new(999));
    assign_vars(&vars, &ckpt.model).unwrap();
    let mut opt = AdamW::new(vars.clone(), adamw_cfg()).unwrap();
    opt.load_state(&ckpt.optimizer).unwrap();
    let mut rng = TrainRng::from_state(ckpt.state.rng.as_ref().unwrap()).unwrap();
    let sched = ckpt.state.schedule.clone().unwrap();
    for s in ckpt.state.step..STEPS {
        losses.push(train_step(&vars, &mut opt, &sched, &mut rng, s));
    }
    let straight_loss_bits: Vec<u32> = straight.iter().map(|l| l.to_bits()).collect();
    let resumed_loss_bits: Vec<u32> = losses.iter().map(|l| l.to_bits()).collect();
    assert_eq!(resumed_loss_bits, straight_loss_bits, "loss curve");
    assert_eq!(bits(&vars), straight_bits, "parameters");
}

#[test]
fn checkpoint_validation_errors() {
    let vars = init_mlp(&mut TrainRng::new(1));
    let mut t = named_tensors(&vars);
    t.remove("l2.bias");
    let err = assign_vars(&vars, &t).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "l2.bias"),
        "{err}"
    );
    let mut t = named_tensors(&vars);
    t.insert(
        "l1.bias".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = assign_vars(&vars, &t).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, .. } if name == "l1.bias"),
        "{err}"
    );
}

fn tiny_state(step: u64) -> (HashMap<String, Tensor>, HashMap<String, Tensor>, TrainState) {
    let w = Tensor::new(&[step as f32, 1.0], &Device::Cpu).unwrap();
    let model = HashMap::from([("w".to_string(), w.clone())]);
    let opt = HashMap::from([("w.exp_avg".to_string(), w)]);
    let state = TrainState {
        step,
        schedule: None,
        rng: Some(TrainRng::new(step).state()),
        metadata: serde_json::Value::Null,
    };
    (model, opt, state)
}

fn save(mgr: &CheckpointManager, step: u64) -> PathBuf {
    let (m, o, s) = tiny_state(step);
    mgr.save(&m, &o, &s).unwrap()
}

fn latest_step(dir: &Path) -> Option<u64> {
    load_latest(dir, &Device::Cpu)
        .unwrap()
        .map(|c| c.state.step)
}

#[test]
fn crash_leftovers_are_never_latest() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(latest_step(dir.path()), None);
    let mgr = CheckpointManager::new(dir.path(), 0).unwrap();
    save(&mgr, 1);
    let two = save(&mgr, 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("latest"))
            .unwrap()
            .trim(),
        "step_00000002"
    );

    // A crash mid-save of step 3: a complete-looking temp dir is left behind.
    let tmp3 = dir.path().join(".tmp-step_00000003-1-0");
    std::fs::create_dir(&tmp3).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        std::fs::copy(two.join(f), tmp3.join(f)).unwrap();
    }
    // A checkpoint directory that lost its state.json (e.g. copied half-way).
    let four = dir.path().join("step_00000004");
    std::fs::create_dir(&four).unwrap();
    std::fs::copy(
        two.join("model.safetensors"),
        four.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        two.join("optimizer.safetensors"),
        four.join("optimizer.safetensors"),
    )
    .unwrap();
    // One whose state.json is cut short.
    let five = dir.path().join("step_00000005");
    std::fs::create_dir(&five).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        std::fs::copy(two.join(f), five.join(f)).unwrap();
    }
    std::fs::write(five.join("state.json"), "{\"step\": 5, \"sched").unwrap();
    // One whose state.json belongs to another step.
    let six = dir.path().join("step_00000006");
    std::fs::create_dir(&six).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        std::fs::copy(two.join(f), six.join(f)).unwrap();
    }

    assert_eq!(latest_step(dir.path()), Some(2));
    // Even when `latest` names a broken one, or is missing, the newest complete one wins.
    std::fs::write(dir.path().join("latest"), "step_00000004\n").unwrap();
    assert_eq!(latest_step(dir.path()), Some(2));
    std::fs::write(dir.path().join("latest"), "../elsewhere").unwrap();
    assert_eq!(latest_step(dir.path()), Some(2));
    std::fs::remove_file(dir.path().join("latest")).unwrap();
    assert_eq!(latest_step(dir.path()), Some(2));
    assert_eq!(mgr.list().unwrap().len(), 2);
    let err = vaak_nn::train::load_checkpoint(&four, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointIncomplete { path, reason } if path == &four && reason.contains("state.json")),
        "{err}"
    );

    // The next save cleans the leftover temp dir and becomes latest.
    save(&mgr, 3);
    assert!(!tmp3.exists());
    assert_eq!(latest_step(dir.path()), Some(3));
    let ck = mgr.load_latest(&Device::Cpu).unwrap().unwrap();
    assert_eq!(ck.model["w"].to_vec1::<f32>().unwrap(), [3.0, 1.0]);
    assert_eq!(ck.state, tiny_state(3).2);
}

#[test]
fn keep_last_n_and_resave() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = CheckpointManager::new(dir.path().join("ckpt"), 2).unwrap();
    for s in 1..=5 {
        save(&mgr, s);
    }
    let steps: Vec<u64> = mgr.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [4, 5]);
    // Saving an existing step replaces it atomically.
    let (mut m, o, s) = tiny_state(5);
    m.insert("w".into(), Tensor::new(&[9f32, 9.0], &Device::Cpu).unwrap());
    mgr.save(&m, &o, &s).unwrap();
    let ck = mgr.load_latest(&Device::Cpu).unwrap().unwrap();
    assert_eq!(ck.model["w"].to_vec1::<f32>().unwrap(), [9.0, 9.0]);
    let names: Vec<String> = std::fs::read_dir(mgr.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
}

/// Half-precision parameters keep f32 moments, so small updates are not lost to rounding,
/// and the parameters stay in their dtype.
#[test]
fn adamw_bf16_params_keep_f32_state() {
    let init = Tensor::new(&[[1f32, -2.0], [0.5, 3.0]], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let v = Var::from_tensor(&init).unwrap();
    let mut opt = AdamW::new(
        vec![("w".into(), v.clone())],
        AdamWConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let g = Tensor::new(&[[1f32, -1.0], [1.0, -1.0]], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    opt.step(&store(&[(&v, &g)])).unwrap();
    assert_eq!(v.dtype(), DType::BF16);
    let st = opt.state_tensors().unwrap();
    assert_eq!(st["w.exp_avg"].dtype(), DType::F32);
    // First Adam step moves each weight by ~lr against its gradient sign (plus decay).
    let got: Vec<Vec<f32>> = v
        .as_tensor()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let want = [
        [
            1.0 * (1.0 - 0.1 * 0.01) - 0.1,
            -2.0 * (1.0 - 0.1 * 0.01) + 0.1,
        ],
        [
            0.5 * (1.0 - 0.1 * 0.01) - 0.1,
            3.0 * (1.0 - 0.1 * 0.01) + 0.1,
        ],
    ];
    for (r, w) in got.iter().zip(want) {
        for (a, b) in r.iter().zip(w) {
            // bf16 has 8 bits of mantissa.
            assert!((a - b).abs() <= b.abs() * 1e-2, "{a} vs {b}");
        }
    }
}
