//! Discriminators and adversarial losses vs an independent PyTorch implementation
//! (`tools/fixtures/codec_disc.py`, float64 from float32 values, batch 2): every
//! sub-discriminator's logits and features, each loss's value, and the gradients of every
//! parameter and of both input waveforms. Plus a tiny GAN sanity run and the error paths.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use vaak_codec::train::disc::{
    disc_loss, feature_matching_loss, gen_adv_loss, AdvLoss, DiscConfig, DiscOutput, Discriminators,
};
use vaak_codec::CodecError;
use vaak_nn::train::{AdamW, AdamWConfig, DecayFilter};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/codec_disc"
);

/// Max |ours - torch| relative to max |torch| of the same tensor (float32 vs float64).
const OUT_REL_TOL: f32 = 1e-5;
/// Same, for loss values and gradients.
const GRAD_REL_TOL: f32 = 1e-4;

struct Fixture {
    cfg: DiscConfig,
    t: HashMap<String, Tensor>,
    losses: Vec<String>,
    num_features: Vec<usize>,
    param_names: BTreeSet<String>,
}

fn fixture() -> Fixture {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/config.json")).unwrap())
            .unwrap();
    let cfg: DiscConfig = serde_json::from_value(meta["config"].clone()).unwrap();
    let t =
        candle_core::safetensors::load(format!("{DIR}/disc.safetensors"), &Device::Cpu).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    Fixture {
        cfg,
        t,
        losses: strings(&meta["losses"]),
        num_features: meta["num_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() as usize)
            .collect(),
        param_names: strings(&meta["param_names"]).into_iter().collect(),
    }
}

/// Builds the discriminators in a fresh VarMap and sets every variable from the fixture;
/// the VarMap must hold exactly the fixture's parameters.
fn load(f: &Fixture) -> (VarMap, Discriminators) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let disc = Discriminators::new(&f.cfg, vb).unwrap();
    {
        let data = vm.data().lock().unwrap();
        let ours: BTreeSet<String> = data.keys().cloned().collect();
        assert_eq!(ours, f.param_names, "parameter names differ from PyTorch's");
        for (name, var) in data.iter() {
            var.set(&f.t[&format!("param.{name}")]).unwrap();
        }
    }
    (vm, disc)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Floor of the error scale, so an exactly-zero reference gradient (which occurs, see below)
/// tolerates float noise but not a real gradient.
const ABS_FLOOR: f32 = 1e-6;

/// `max|a - b| / max(max|b|, ABS_FLOOR)` (b the reference), after checking the shapes agree.
fn rel_err(what: &str, a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let scale = max_abs(b).max(ABS_FLOOR);
    max_abs(&(a - b).unwrap()) / scale
}

#[test]
fn logits_and_features_match_pytorch() {
    let f = fixture();
    let (_vm, disc) = load(&f);
    assert_eq!(disc.len(), f.num_features.len());
    let mut worst = 0f32;
    for tag in ["real", "fake"] {
        let outs = disc.forward(&f.t[tag]).unwrap();
        assert_eq!(outs.len(), f.num_features.len());
        for (k, o) in outs.iter().enumerate() {
            let reference = &f.t[&format!("out.{k}.{tag}.logits")];
            // Non-trivial logits: hinge masks and the features below carry signal.
            assert!(
                max_abs(reference) > 0.1,
                "sub-discriminator {k}: tiny logits"
            );
            let e = rel_err(&format!("{tag} {k} logits"), &o.logits, reference);
            assert!(
                e < OUT_REL_TOL,
                "{tag} sub-discriminator {k} logits: rel err {e}"
            );
            worst = worst.max(e);
            assert_eq!(o.features.len(), f.num_features[k], "sub-discriminator {k}");
            for (l, feat) in o.features.iter().enumerate() {
                let r = &f.t[&format!("out.{k}.{tag}.feat.{l}")];
                let e = rel_err(&format!("{tag} {k} feat {l}"), feat, r);
                assert!(
                    e < OUT_REL_TOL,
                    "{tag} sub-discriminator {k} feature {l}: rel err {e}"
                );
                worst = worst.max(e);
            }
        }
    }
    println!("max relative error of logits and features: {worst:e}");
}

fn loss_by_name(name: &str, real: &[DiscOutput], fake: &[DiscOutput]) -> Tensor {
    match name {
        "disc_hinge" => disc_loss(real, fake, AdvLoss::Hinge),
        "disc_ls" => disc_loss(real, fake, AdvLoss::LeastSquares),
        "gen_hinge" => gen_adv_loss(fake, AdvLoss::Hinge),
        "gen_ls" => gen_adv_loss(fake, AdvLoss::LeastSquares),
        "fm" => feature_matching_loss(real, fake),
        other => panic!("fixture lists an unknown loss {other}"),
    }
    .unwrap()
}

#[test]
fn loss_values_and_gradients_match_pytorch() {
    let f = fixture();
    let (vm, disc) = load(&f);
    let real = Var::from_tensor(&f.t["real"]).unwrap();
    let fake = Var::from_tensor(&f.t["fake"]).unwrap();
    let r_out = disc.forward(real.as_tensor()).unwrap();
    let f_out = disc.forward(fake.as_tensor()).unwrap();
    let vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert_eq!(f.losses.len(), 5);
    let (mut worst_loss, mut worst_param, mut worst_input) = (0f32, 0f32, 0f32);
    for name in &f.losses {
        let loss = loss_by_name(name, &r_out, &f_out);
        assert_eq!(
            loss.dims(),
            [] as [usize; 0],
            "{name}: loss must be a scalar"
        );
        let e = rel_err(
            name,
            &loss.reshape(1).unwrap(),
            &f.t[&format!("loss.{name}")],
        );
        assert!(e < GRAD_REL_TOL, "{name}: loss value rel err {e}");
        worst_loss = worst_loss.max(e);
        let grads = loss.backward().unwrap();
        for (pname, var) in &vars {
            let reference = &f.t[&format!("grad.{name}.param.{pname}")];
            let ours = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => reference.zeros_like().unwrap(),
            };
            // Every conv weight reaches every loss (the generator losses through the fake
            // branch), except the STFT discriminators' conv_post under feature matching: its
            // output is logits, not a feature (EnCodec). Biases may legitimately cancel (a
            // conv_post bias under hinge when every logit is inside (-1, 1)).
            let unused = name == "fm" && pname.starts_with("msstft") && pname.contains("conv_post");
            if pname.ends_with("weight_v") {
                assert_eq!(
                    max_abs(reference) > 0.0,
                    !unused,
                    "{name}: reference gradient of {pname}"
                );
            }
            let e = rel_err(&format!("{name} d/d{pname}"), &ours, reference);
            assert!(e < GRAD_REL_TOL, "{name}: grad of {pname}: rel err {e}");
            worst_param = worst_param.max(e);
        }
        for (tag, var) in [("real", &real), ("fake", &fake)] {
            let key = format!("grad.{name}.{tag}");
            match (f.t.get(&key), grads.get(var.as_tensor())) {
                (Some(reference), Some(ours)) => {
                    assert!(max_abs(reference) > 0.0, "{key}: zero reference");
                    let e = rel_err(&key, ours, reference);
                    assert!(e < GRAD_REL_TOL, "{key}: rel err {e}");
                    worst_input = worst_input.max(e);
                }
                (None, None) => assert!(name.starts_with("gen") && tag == "real"),
                (Some(_), None) => panic!("{key}: PyTorch has a gradient, we have none"),
                (None, Some(g)) => assert_eq!(max_abs(g), 0.0, "{key}: should not flow"),
            }
        }
    }
    println!(
        "max relative errors: loss values {worst_loss:e}, parameter grads {worst_param:e}, \
         input grads {worst_input:e}"
    );
}

/// Deterministic uniform numbers in [-1, 1) (an LCG; the test needs no rand crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `n` clips of `t` samples: sums of two sines ("real") or white noise ("fake").
fn batch(rng: &mut Lcg, n: usize, t: usize, real: bool) -> Tensor {
    let mut v = Vec::with_capacity(n * t);
    for _ in 0..n {
        let (f1, f2) = (0.02 + 0.05 * rng.next().abs(), 0.1 + 0.1 * rng.next().abs());
        let (p1, p2) = (3.0 * rng.next(), 3.0 * rng.next());
        for i in 0..t {
            let x = if real {
                0.4 * (std::f32::consts::TAU * f1 * i as f32 + p1).sin()
                    + 0.2 * (std::f32::consts::TAU * f2 * i as f32 + p2).sin()
            } else {
                0.35 * rng.next()
            };
            v.push(x);
        }
    }
    Tensor::from_vec(v, (n, 1, t), &Device::Cpu).unwrap()
}

/// Redraws every `weight_v` and `bias` uniform in `±1/sqrt(fan_in)` (the init
/// `Discriminators::new` uses, but from `rng`, so the run is reproducible).
fn seeded_init(vm: &VarMap, rng: &mut Lcg) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let fan_in: usize = match name.strip_suffix("bias") {
            Some(prefix) => data[&format!("{prefix}weight_v")].dims()[1..]
                .iter()
                .product(),
            None if name.ends_with("weight_v") => var.dims()[1..].iter().product(),
            None => continue,
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let v: Vec<f32> = (0..var.elem_count()).map(|_| bound * rng.next()).collect();
        var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

/// A few AdamW steps on the discriminators alone separate sines from noise: the loss drops
/// on the training batch and on a held-out batch, for both loss kinds.
#[test]
fn gan_sanity_discriminator_learns_real_from_fake() {
    let cfg = DiscConfig {
        periods: vec![2, 3],
        mpd_channels: vec![4, 8],
        stft_scales: vec![(64, 16)],
        stft_filters: 4,
        stft_max_filters: 8,
        stft_dilations: vec![1, 2],
        stft_kernel: (3, 5),
        ..DiscConfig::default()
    };
    const T: usize = 192;
    const STEPS: usize = 25;
    const SEED: u64 = 7;
    for kind in [AdvLoss::Hinge, AdvLoss::LeastSquares] {
        let mut rng = Lcg(SEED);
        let vm = VarMap::new();
        let disc =
            Discriminators::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
                .unwrap();
        seeded_init(&vm, &mut rng);
        let mut opt = AdamW::from_varmap(
            &vm,
            AdamWConfig {
                lr: 3e-2,
                weight_decay: 0.0,
                no_decay: DecayFilter::None,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let (real_val, fake_val) = (batch(&mut rng, 4, T, true), batch(&mut rng, 4, T, false));
        let eval = |r: &Tensor, f: &Tensor| {
            let l = disc_loss(&disc.forward(r).unwrap(), &disc.forward(f).unwrap(), kind).unwrap();
            scalar(&l)
        };
        let first_val = eval(&real_val, &fake_val);
        // Fresh clips every step: the discriminators must learn "sines vs noise", not the
        // particular clips.
        let mut train = Vec::with_capacity(STEPS);
        for _ in 0..STEPS {
            let (real, fake) = (batch(&mut rng, 4, T, true), batch(&mut rng, 4, T, false));
            let loss = disc_loss(
                &disc.forward(&real).unwrap(),
                &disc.forward(&fake).unwrap(),
                kind,
            )
            .unwrap();
            train.push(scalar(&loss));
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let last_val = eval(&real_val, &fake_val);
        let (first, last) = (train[0], train[STEPS - 3..].iter().sum::<f32>() / 3.0);
        println!("{kind:?}: train {first} -> {last} (last 3), held out {first_val} -> {last_val}");
        assert!(last < 0.5 * first, "{kind:?}: train loss {first} -> {last}");
        assert!(
            last_val < 0.5 * first_val,
            "{kind:?}: held-out loss {first_val} -> {last_val}"
        );
        // A discriminator blind to its input (any constant logits) scores at best 2 (hinge)
        // or 0.5 (least squares); below that it tells held-out sines from noise. (Least
        // squares learns more slowly here: over seeds it ends at 0.3-0.47, hinge at 0.3-0.6.)
        let bound = match kind {
            AdvLoss::Hinge => 0.5 * 2.0,
            AdvLoss::LeastSquares => 0.5,
        };
        assert!(
            last_val < bound,
            "{kind:?}: held-out loss {last_val}, needs < {bound}"
        );
    }
}

#[test]
fn default_config_round_trips_and_rejects_unknown_fields() {
    let cfg = DiscConfig::default();
    assert_eq!(cfg.periods, [2, 3, 5, 7, 11]);
    let json = serde_json::to_string(&cfg).unwrap();
    let back: DiscConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
    let partial: DiscConfig = serde_json::from_str(r#"{"periods": [3]}"#).unwrap();
    assert_eq!(partial.periods, [3]);
    assert_eq!(partial.stft_scales, cfg.stft_scales);
    assert!(serde_json::from_str::<DiscConfig>(r#"{"period": [3]}"#).is_err());
    let kind: AdvLoss = serde_json::from_str(r#""least_squares""#).unwrap();
    assert_eq!(kind, AdvLoss::LeastSquares);
}

#[test]
fn bad_configs_inputs_and_output_lists_are_typed_errors() {
    let vb = || VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let empty = DiscConfig {
        periods: vec![],
        stft_scales: vec![],
        ..DiscConfig::default()
    };
    assert!(matches!(
        Discriminators::new(&empty, vb()),
        Err(CodecError::BadConfig {
            field: "periods",
            ..
        })
    ));
    let zero_period = DiscConfig {
        periods: vec![2, 0],
        ..DiscConfig::default()
    };
    assert!(matches!(
        Discriminators::new(&zero_period, vb()),
        Err(CodecError::BadConfig { .. })
    ));

    let f = fixture();
    let (_vm, disc) = load(&f);
    let short = Tensor::zeros((2, 1, 40), DType::F32, &Device::Cpu).unwrap();
    match disc.forward(&short) {
        Err(CodecError::BadInput { what, .. }) => assert_eq!(what, "discriminator input length"),
        other => panic!("expected BadInput, got {other:?}"),
    }
    let stereo = Tensor::zeros((2, 2, 400), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        disc.forward(&stereo),
        Err(CodecError::BadInput { .. })
    ));
    let ints = Tensor::zeros((2, 1, 400), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        disc.forward(&ints),
        Err(CodecError::BadInput { .. })
    ));

    let outs = disc.forward(&f.t["real"]).unwrap();
    assert!(matches!(
        disc_loss(&outs, &outs[1..], AdvLoss::Hinge),
        Err(CodecError::BadInput { .. })
    ));
    assert!(matches!(
        gen_adv_loss(&[], AdvLoss::Hinge),
        Err(CodecError::BadInput { .. })
    ));
    let mut fewer = outs.clone();
    fewer[0].features.pop();
    assert!(matches!(
        feature_matching_loss(&outs, &fewer),
        Err(CodecError::BadInput { .. })
    ));
    // Outputs of a different batch size do not pair up.
    let single = disc.forward(&f.t["real"].narrow(0, 0, 1).unwrap()).unwrap();
    assert!(matches!(
        disc_loss(&outs, &single, AdvLoss::LeastSquares),
        Err(CodecError::BadInput { .. })
    ));
    // Identical real and fake features match perfectly.
    let zero = scalar(&feature_matching_loss(&outs, &outs).unwrap());
    assert_eq!(zero, 0.0);
}
