//! KV-cache streaming of the transformer stack must equal whole-sequence recomputation, for
//! single streams and for batched slots that start, stop and reset independently.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use vaak_nn::streaming::{max_abs_diff, slot, stream_in_chunks, StreamingModule};
use vaak_nn::transformer::{
    FfnKind, NormKind, RopeKind, StreamingTransformer, Transformer, TransformerConfig,
    TransformerOptions,
};
use vaak_nn::StreamMask;

/// Streamed vs recomputed outputs, f32.
const STREAM_TOL: f32 = 1e-5;
/// Fused inference ops vs the differentiable training formulation, f32.
const TRAIN_TOL: f32 = 1e-5;

fn base_cfg() -> TransformerConfig {
    TransformerConfig {
        d_model: 16,
        num_heads: 4,
        num_layers: 2,
        dim_feedforward: 32,
        max_seq_len: 64,
        ..Default::default()
    }
}

fn rich_cfg() -> TransformerConfig {
    TransformerConfig {
        norm: NormKind::RmsNorm,
        ffn: FfnKind::SwiGlu,
        rope: RopeKind::Interleaved,
        layer_scale: Some(0.5),
        final_norm: true,
        bias: true,
        ..base_cfg()
    }
}

fn randn(shape: &[usize], std: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n = Normal::new(0.0, std).unwrap();
    let v: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| n.sample(rng) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A model whose every parameter (norm gains and biases included) is seeded random.
fn model(cfg: &TransformerConfig, seed: u64) -> Result<(Transformer, VarMap)> {
    model_with(cfg, &TransformerOptions::default(), seed)
}

fn model_with(
    cfg: &TransformerConfig,
    opts: &TransformerOptions,
    seed: u64,
) -> Result<(Transformer, VarMap)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = Transformer::with_options(cfg, opts, vb)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let mut t = randn(var.dims(), 0.3, &mut rng)?;
        if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("norm_out.weight")
        {
            t = (t + 1.0)?;
        }
        var.set(&t)?;
    }
    drop(data);
    Ok((m, vm))
}

fn input(b: usize, t: usize, d: usize, seed: u64) -> Result<Tensor> {
    randn(&[b, t, d], 1.0, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// Streams `x` through a fresh single-stream cache in the given chunk sizes (cycled).
fn stream_rotating(m: &Transformer, x: &Tensor, chunks: &[usize]) -> Result<Tensor> {
    let mut cache = m.rotating_cache(x.dim(0)?)?;
    let t = x.dim(1)?;
    let (mut start, mut outs, mut i) = (0, vec![], 0);
    while start < t {
        let n = chunks[i % chunks.len()].min(t - start);
        outs.push(m.step(&x.narrow(1, start, n)?, &mut cache)?);
        assert_eq!(cache.offset(), start + n);
        start += n;
        i += 1;
    }
    Tensor::cat(&outs, 1)
}

fn check_streaming(cfg: &TransformerConfig, t: usize, seed: u64) -> Result<()> {
    let (m, _vm) = model(cfg, seed)?;
    let x = input(2, t, cfg.d_model, seed + 100)?;
    let full = m.forward(&x)?;
    let one = stream_rotating(&m, &x, &[1])?;
    let d1 = max_abs_diff(&full, &one)?;
    assert!(d1 <= STREAM_TOL, "token by token: {d1}");
    let uneven = stream_rotating(&m, &x, &[3, 1, 7, 2, 11, 5])?;
    let d2 = max_abs_diff(&full, &uneven)?;
    assert!(d2 <= STREAM_TOL, "uneven chunks: {d2}");
    let mut sm = StreamingTransformer::new(m.clone(), 2)?;
    let via_trait = stream_in_chunks(&mut sm, &x, 1, 4)?.into_option().unwrap();
    let d3 = max_abs_diff(&full, &via_trait)?;
    assert!(d3 <= STREAM_TOL, "StreamingModule: {d3}");
    // After a full reset the same stream replays to the same output.
    sm.reset_state();
    assert!(sm.cache().positions().iter().all(|&p| p == 0));
    let again = stream_in_chunks(&mut sm, &x, 1, 6)?.into_option().unwrap();
    let d4 = max_abs_diff(&full, &again)?;
    assert!(d4 <= STREAM_TOL, "after reset_state: {d4}");
    println!("{cfg:?}\n  max diffs: {d1:e} {d2:e} {d3:e} {d4:e}");
    Ok(())
}

#[test]
fn causal_full_context_stream_equals_recompute() -> Result<()> {
    check_streaming(&base_cfg(), 37, 1)
}

#[test]
fn limited_context_ring_wraps_many_times() -> Result<()> {
    // 60 frames through a 5-entry ring: 12 wraps, chunks both shorter and longer than it.
    let cfg = TransformerConfig {
        context: Some(5),
        ..base_cfg()
    };
    check_streaming(&cfg, 60, 2)?;
    // The window really limits attention: a different distant past gives the same output.
    let (m, _vm) = model(&cfg, 2)?;
    let x = input(1, 30, 16, 7)?;
    let y = input(1, 30, 16, 8)?;
    let spliced = Tensor::cat(&[y.narrow(1, 0, 20)?, x.narrow(1, 20, 10)?], 1)?;
    let a = m.forward(&x)?.narrow(1, 29, 1)?;
    let b = m.forward(&spliced)?.narrow(1, 29, 1)?;
    // Two layers of a 5-wide window reach back 8 frames: frame 29 depends on 21..=29 only.
    assert!(max_abs_diff(&a, &b)? <= STREAM_TOL);
    let c = m.forward(&x)?.narrow(1, 20, 1)?;
    let d = m.forward(&spliced)?.narrow(1, 20, 1)?;
    assert!(max_abs_diff(&c, &d)? > 1e-3, "the window reaches the past");
    Ok(())
}

#[test]
fn rich_variant_streams_equal_recompute() -> Result<()> {
    check_streaming(&rich_cfg(), 30, 3)?;
    let cfg = TransformerConfig {
        context: Some(7),
        ..rich_cfg()
    };
    check_streaming(&cfg, 45, 4)
}

#[test]
fn gqa_streams_equal_recompute() -> Result<()> {
    for kv in [2, 1] {
        let cfg = TransformerConfig {
            num_kv_heads: Some(kv),
            ..base_cfg()
        };
        check_streaming(&cfg, 25, 5)?;
        let cfg = TransformerConfig {
            num_kv_heads: Some(kv),
            context: Some(6),
            ..rich_cfg()
        };
        check_streaming(&cfg, 40, 6)?;
    }
    // GQA with one KV head must equal full MHA whose K/V heads are copies of it.
    let gqa_cfg = TransformerConfig {
        num_kv_heads: Some(1),
        num_layers: 1,
        ..base_cfg()
    };
    let (gqa, gvm) = model(&gqa_cfg, 9)?;
    let mha_cfg = TransformerConfig {
        num_kv_heads: None,
        ..gqa_cfg.clone()
    };
    let (mha, mvm) = model(&mha_cfg, 10)?;
    {
        let g = gvm.data().lock().unwrap();
        let m = mvm.data().lock().unwrap();
        for (name, var) in m.iter() {
            let src = g[name].as_tensor();
            if name.contains("k_proj") || name.contains("v_proj") {
                let rep: Vec<Tensor> = (0..4).map(|_| src.clone()).collect();
                var.set(&Tensor::cat(&rep, 0)?)?;
            } else {
                var.set(src)?;
            }
        }
    }
    let x = input(2, 12, 16, 11)?;
    let d = max_abs_diff(&gqa.forward(&x)?, &mha.forward(&x)?)?;
    assert!(d <= STREAM_TOL, "gqa vs replicated mha: {d}");
    Ok(())
}

/// Schedule of a batched run: per step, the chunk length and which slots are live.
struct Schedule {
    steps: Vec<(usize, Vec<bool>)>,
}

impl Schedule {
    fn frames(&self, s: usize) -> usize {
        self.steps
            .iter()
            .filter(|(_, m)| m[s])
            .map(|(t, _)| t)
            .sum()
    }
}

fn staggered() -> Schedule {
    // Slot 0 starts first and stops early, slot 1 joins at step 2, slot 2 at step 4; chunk
    // lengths vary so slots sit at unequal ring offsets.
    let mut steps = vec![];
    let lens = [1, 2, 1, 3, 1, 1, 4, 2, 1, 1, 5, 1, 2, 1, 1, 3];
    for (i, &t) in lens.iter().enumerate() {
        let live = vec![i < 11, i >= 2, i >= 4 && i != 9];
        steps.push((t, live));
    }
    Schedule { steps }
}

fn run_slots(cfg: &TransformerConfig, seed: u64) -> Result<()> {
    let (m, _vm) = model(cfg, seed)?;
    let sched = staggered();
    let b = 3;
    let seqs: Vec<Tensor> = (0..b)
        .map(|s| input(1, sched.frames(s), cfg.d_model, seed + 10 + s as u64))
        .collect::<Result<_>>()?;
    let mut cache = m.slot_cache(b)?;
    let mut cursor = vec![0usize; b];
    let mut outs: Vec<Vec<Tensor>> = vec![vec![]; b];
    let mut junk = ChaCha8Rng::seed_from_u64(seed + 99);
    for (t, live) in &sched.steps {
        let rows = (0..b)
            .map(|s| {
                if live[s] {
                    seqs[s].narrow(1, cursor[s], *t)
                } else {
                    // Inactive rows carry garbage; it must not leak anywhere.
                    randn(&[1, *t, cfg.d_model], 5.0, &mut junk)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let y = m.step_slots(
            &Tensor::cat(&rows, 0)?,
            &mut cache,
            &StreamMask::from_slots(live),
        )?;
        for s in 0..b {
            if live[s] {
                outs[s].push(slot(&y, s)?);
                cursor[s] += t;
            }
        }
        assert_eq!(cache.positions(), &cursor[..]);
    }
    for s in 0..b {
        let solo = m.forward(&seqs[s])?;
        let got = Tensor::cat(&outs[s], 1)?;
        let d = max_abs_diff(&solo, &got)?;
        assert!(d <= STREAM_TOL, "slot {s}: {d}");
    }
    Ok(())
}

#[test]
fn batched_slots_with_different_starts_equal_solo_runs() -> Result<()> {
    run_slots(&base_cfg(), 20)?;
    let ctx = TransformerConfig {
        context: Some(4),
        ..base_cfg()
    };
    run_slots(&ctx, 21)?;
    let gqa = TransformerConfig {
        context: Some(3),
        num_kv_heads: Some(2),
        ..rich_cfg()
    };
    run_slots(&gqa, 22)
}

/// Bit-exact snapshot of every layer's K/V rows for slot `s`.
fn slot_state(
    m: &Transformer,
    cache: &vaak_nn::transformer::SlotKvCache,
    s: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut v = vec![];
    for l in 0..m.config().num_layers {
        let (k, vv) = cache.layer_kv(l).unwrap();
        v.push(slot(k, s)?.flatten_all()?.to_vec1::<f32>()?);
        v.push(slot(vv, s)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(v)
}

fn bits(v: &[Vec<f32>]) -> Vec<u32> {
    v.iter().flatten().map(|x| x.to_bits()).collect()
}

#[test]
fn masked_step_leaves_inactive_slots_untouched() -> Result<()> {
    for context in [None, Some(3)] {
        let cfg = TransformerConfig {
            context,
            ..base_cfg()
        };
        let (m, _vm) = model(&cfg, 30)?;
        let mut cache = m.slot_cache(3)?;
        // Warm up with unequal positions so the scatter path runs, then wrap the ring.
        m.step_slots(&input(3, 2, 16, 31)?, &mut cache, &StreamMask::All)?;
        m.step_slots(
            &input(3, 3, 16, 32)?,
            &mut cache,
            &StreamMask::from_slots(&[true, false, true]),
        )?;
        let before = bits(&slot_state(&m, &cache, 1)?);
        let pos_before = cache.positions().to_vec();
        for (t, seed) in [(1, 33), (4, 34), (2, 35)] {
            m.step_slots(
                &input(3, t, 16, seed)?,
                &mut cache,
                &StreamMask::from_slots(&[true, false, true]),
            )?;
        }
        assert_eq!(bits(&slot_state(&m, &cache, 1)?), before, "{context:?}");
        assert_eq!(cache.positions()[1], pos_before[1]);
        assert_eq!(cache.positions()[0], pos_before[0] + 7);
    }
    Ok(())
}

#[test]
fn reset_of_one_slot_leaves_others_bit_identical() -> Result<()> {
    let cfg = TransformerConfig {
        context: Some(4),
        ..base_cfg()
    };
    let (m, _vm) = model(&cfg, 40)?;
    let mut sm = StreamingTransformer::new(m.clone(), 3)?;
    let x = input(3, 9, 16, 41)?;
    stream_in_chunks(&mut sm, &x, 1, 2)?;
    let keep0 = bits(&slot_state(&m, sm.cache(), 0)?);
    let keep2 = bits(&slot_state(&m, sm.cache(), 2)?);
    sm.reset_batch_idx(1, 3)?;
    assert_eq!(sm.cache().positions(), &[9, 0, 9]);
    assert_eq!(bits(&slot_state(&m, sm.cache(), 0)?), keep0);
    assert_eq!(bits(&slot_state(&m, sm.cache(), 2)?), keep2);
    assert!(bits(&slot_state(&m, sm.cache(), 1)?)
        .iter()
        .all(|&b| b == 0));

    // Slot 1 now restarts while 0 and 2 continue; each equals its own uninterrupted run.
    let y = input(3, 7, 16, 42)?;
    let cont = stream_in_chunks(&mut sm, &y, 1, 3)?.into_option().unwrap();
    let whole = m.forward(&Tensor::cat(&[&x, &y], 1)?)?.narrow(1, 9, 7)?;
    for s in [0, 2] {
        let d = max_abs_diff(&slot(&cont, s)?, &slot(&whole, s)?)?;
        assert!(d <= STREAM_TOL, "continued slot {s}: {d}");
    }
    let fresh = m.forward(&slot(&y, 1)?)?;
    let d = max_abs_diff(&slot(&cont, 1)?, &fresh)?;
    assert!(d <= STREAM_TOL, "restarted slot: {d}");

    // reset_slots with a multi-slot mask, then reset_state.
    sm.reset_slots(&StreamMask::from_slots(&[true, false, true]))?;
    assert_eq!(sm.cache().positions(), &[0, 7, 0]);
    sm.reset_state();
    assert_eq!(sm.cache().positions(), &[0, 0, 0]);
    Ok(())
}

#[test]
fn empty_chunk_is_a_no_op() -> Result<()> {
    let (m, _vm) = model(&base_cfg(), 50)?;
    let mut sm = StreamingTransformer::new(m, 1)?;
    let out = sm.step(&vaak_nn::StreamTensor::empty(), &StreamMask::All)?;
    assert!(out.is_empty());
    assert_eq!(sm.cache().positions(), &[0]);
    Ok(())
}

#[test]
fn forward_train_equals_forward() -> Result<()> {
    for cfg in [
        base_cfg(),
        rich_cfg(),
        TransformerConfig {
            context: Some(5),
            num_kv_heads: Some(2),
            ..rich_cfg()
        },
        TransformerConfig {
            causal: false,
            context: Some(4),
            ..base_cfg()
        },
    ] {
        let (m, _vm) = model(&cfg, 60)?;
        let x = input(2, 13, 16, 61)?;
        let d = max_abs_diff(&m.forward(&x)?, &m.forward_train(&x)?)?;
        println!("train vs inference: {d:e}");
        assert!(d <= TRAIN_TOL, "{cfg:?}: {d}");
    }
    Ok(())
}

/// candle 0.11.1's CPU matmul is wrong for a transposed batched left side against a
/// batch-broadcast right side, which is what `candle_nn::Linear` does on such an input. A
/// `[B, D, T]` conv output transposed to `[B, T, D]` is exactly that input.
#[test]
fn non_contiguous_batched_input_equals_its_contiguous_copy() -> Result<()> {
    for cfg in [base_cfg(), rich_cfg()] {
        let (m, _vm) = model(&cfg, 62)?;
        let x = input(3, 16, 11, 63)?.transpose(1, 2)?;
        assert!(!x.is_contiguous());
        let xc = x.contiguous()?;
        for train in [false, true] {
            let d = max_abs_diff(&m.forward_at(&x, 0, train)?, &m.forward_at(&xc, 0, train)?)?;
            assert!(d <= STREAM_TOL, "{cfg:?} train={train}: {d}");
        }
    }
    Ok(())
}

#[test]
fn backward_reaches_every_parameter() -> Result<()> {
    for cfg in [
        base_cfg(),
        TransformerConfig {
            context: Some(4),
            num_kv_heads: Some(2),
            ..rich_cfg()
        },
    ] {
        let (m, vm) = model(&cfg, 70)?;
        let x = input(2, 9, 16, 71)?;
        let g = input(2, 9, 16, 72)?;
        let loss = (m.forward_train(&x)? * g)?.sum_all()?;
        let grads = loss.backward()?;
        let data = vm.data().lock().unwrap();
        assert!(!data.is_empty());
        for (name, var) in data.iter() {
            let gr = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = gr.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(n.is_finite() && n > 0.0, "{name}: |grad|^2 = {n}");
        }
    }
    Ok(())
}

#[test]
fn bad_input_gives_errors() -> Result<()> {
    let (m, _vm) = model(&base_cfg(), 80)?;
    // Wrong width, wrong rank, wrong dtype.
    assert!(m.forward(&input(1, 4, 15, 0)?).is_err());
    assert!(m
        .forward(&Tensor::zeros((4, 16), DType::F32, &Device::Cpu)?)
        .is_err());
    assert!(m
        .forward(&Tensor::zeros((1, 4, 16), DType::F64, &Device::Cpu)?)
        .is_err());
    let mut cache = m.slot_cache(2)?;
    assert!(m
        .step_slots(&input(3, 1, 16, 0)?, &mut cache, &StreamMask::All)
        .is_err());
    assert!(m
        .step_slots(
            &input(2, 1, 16, 0)?,
            &mut cache,
            &StreamMask::from_slots(&[true])
        )
        .is_err());
    assert!(cache.reset_slots(&StreamMask::from_slots(&[true])).is_err());
    // Full context cannot rotate: max_seq_len 64 is a hard limit, and the cache is unchanged.
    m.step_slots(&input(2, 60, 16, 1)?, &mut cache, &StreamMask::All)?;
    let err = m.step_slots(&input(2, 5, 16, 2)?, &mut cache, &StreamMask::All);
    assert!(err.unwrap_err().to_string().contains("capacity"));
    assert_eq!(cache.positions(), &[60, 60]);
    m.step_slots(&input(2, 4, 16, 3)?, &mut cache, &StreamMask::All)?;
    // A cache of another model is refused.
    let (other, _vm2) = model(
        &TransformerConfig {
            context: Some(3),
            ..base_cfg()
        },
        81,
    )?;
    let mut wrong = other.slot_cache(2)?;
    assert!(m
        .step_slots(&input(2, 1, 16, 0)?, &mut wrong, &StreamMask::All)
        .is_err());
    // A bidirectional stack cannot stream.
    let (bi, _vm3) = model(
        &TransformerConfig {
            causal: false,
            ..base_cfg()
        },
        82,
    )?;
    let mut c = bi.slot_cache(1)?;
    assert!(bi
        .step_slots(&input(1, 1, 16, 0)?, &mut c, &StreamMask::All)
        .is_err());
    // Invalid configs.
    for bad in [
        TransformerConfig {
            num_heads: 5,
            ..base_cfg()
        },
        TransformerConfig {
            num_kv_heads: Some(3),
            ..base_cfg()
        },
        TransformerConfig {
            context: Some(0),
            ..base_cfg()
        },
        TransformerConfig {
            d_model: 12,
            num_heads: 4,
            ..base_cfg()
        },
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        assert!(Transformer::new(&bad, vb).is_err(), "{bad:?}");
    }
    Ok(())
}

#[test]
fn config_deserializes_with_defaults() {
    let cfg: TransformerConfig = serde_json::from_str(
        r#"{"d_model": 64, "num_heads": 4, "num_kv_heads": 2, "norm": "rms_norm",
            "ffn": "swiglu", "context": 250, "rope": "interleaved"}"#,
    )
    .unwrap();
    assert_eq!(cfg.kv_heads(), 2);
    assert_eq!(cfg.head_dim(), 16);
    assert_eq!(cfg.norm, NormKind::RmsNorm);
    assert_eq!(cfg.ffn, FfnKind::SwiGlu);
    assert_eq!(cfg.context, Some(250));
    assert_eq!(cfg.max_period, 10_000.0);
    assert!(cfg.causal);
}

/// Output and gradients vs the independent PyTorch float64 reference, in f32.
const TORCH_TOL: f32 = 1e-4;

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tools/fixtures/data/transformer/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn check_against_torch(name: &str) -> Result<()> {
    let cfg: TransformerConfig =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap())
            .unwrap();
    let ts = candle_core::safetensors::load(fixture(&format!("{name}.safetensors")), &Device::Cpu)?;
    let mut vm = VarMap::new();
    let m = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    // Every model parameter is in the fixture and every fixture parameter is in the model.
    let fixture_params = ts
        .keys()
        .filter(|k| !k.starts_with("grad.") && !["x", "g", "y"].contains(&k.as_str()))
        .count();
    assert_eq!(fixture_params, names.len(), "{name}: parameter sets differ");
    for n in &names {
        vm.set_one(n, &ts[n])?;
    }
    let x = Var::from_tensor(&ts["x"])?;
    let y_train = m.forward_train(x.as_tensor())?;
    let y_inf = m.forward(x.as_tensor())?;
    let dy = max_abs_diff(&y_train, &ts["y"])?;
    let dyi = max_abs_diff(&y_inf, &ts["y"])?;
    // Streaming reproduces the reference too.
    let mut sm = StreamingTransformer::new(m.clone(), ts["x"].dim(0)?)?;
    let ys = stream_in_chunks(&mut sm, &ts["x"], 1, 3)?
        .into_option()
        .unwrap();
    let dys = max_abs_diff(&ys, &ts["y"])?;
    assert!(
        dy <= TORCH_TOL && dyi <= TORCH_TOL && dys <= TORCH_TOL,
        "{name}: y {dy} {dyi} {dys}"
    );
    let grads = (y_train * &ts["g"])?.sum_all()?.backward()?;
    let mut worst = max_abs_diff(grads.get(x.as_tensor()).unwrap(), &ts["grad.x"])?;
    let data = vm.data().lock().unwrap();
    for n in &names {
        let gr = grads
            .get(data[n].as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
        let want = &ts[&format!("grad.{n}")];
        let d = max_abs_diff(gr, want)?;
        assert!(d <= TORCH_TOL, "{name}: grad {n} off by {d}");
        // Guard against a vacuous comparison of two zero tensors.
        assert!(
            want.abs()?
                .max_keepdim(0)?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?
                > 1e-4
        );
        worst = worst.max(d);
    }
    println!("{name}: y {dy:e} (inference {dyi:e}, streamed {dys:e}), worst grad {worst:e}");
    Ok(())
}

#[test]
fn matches_pytorch_outputs_and_gradients() -> Result<()> {
    check_against_torch("ln_gelu_ctx")?;
    check_against_torch("rms_swiglu_full")
}

/// bf16 streaming vs the f32 whole-sequence forward (bf16 keeps 8 mantissa bits).
const BF16_TOL: f32 = 0.1;

#[test]
fn bf16_weights_stream_through_per_slot_cache() -> Result<()> {
    let cfg = TransformerConfig {
        context: Some(4),
        num_kv_heads: Some(2),
        ..rich_cfg()
    };
    let (m32, vm) = model(&cfg, 90)?;
    let ts: std::collections::HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().to_dtype(DType::BF16).unwrap()))
        .collect();
    let m16 = Transformer::new(
        &cfg,
        VarBuilder::from_tensors(ts, DType::BF16, &Device::Cpu),
    )?;
    let x = input(2, 11, 16, 91)?;
    let want = m32.forward(&x)?;
    let mut sm = StreamingTransformer::new(m16, 2)?;
    let got = stream_in_chunks(&mut sm, &x.to_dtype(DType::BF16)?, 1, 3)?
        .into_option()
        .unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let d = max_abs_diff(&got, &want)?;
    println!("bf16 vs f32: {d:e}");
    assert!(d <= BF16_TOL, "{d}");
    Ok(())
}

// ---- chunk-causal attention, padded batches and cross-attention ----

fn chunked_cfg(chunk: usize, left_chunks: usize) -> TransformerConfig {
    TransformerConfig {
        context: Some((left_chunks + 1) * chunk),
        ..base_cfg()
    }
}

fn chunk_opts(chunk: usize) -> TransformerOptions {
    TransformerOptions {
        chunk_size: Some(chunk),
        ..Default::default()
    }
}

#[test]
fn chunk_causal_mask_sees_its_chunk_and_left_chunks_only() -> Result<()> {
    let cfg = TransformerConfig {
        num_layers: 1,
        ..chunked_cfg(3, 1)
    };
    let (m, _vm) = model_with(&cfg, &chunk_opts(3), 31)?;
    let x = input(1, 12, cfg.d_model, 32)?;
    let y = m.forward(&x)?;
    // Perturb frame 4 (chunk 1): frames of chunks 1 and 2 change, chunk 0 and 3 do not.
    let bump = Tensor::zeros((1, 12, cfg.d_model), DType::F32, &Device::Cpu)?.slice_assign(
        &[0..1, 4..5, 0..cfg.d_model],
        // A random bump: a constant one is removed by the LayerNorm, and what is left of it
        // moved the visible frames by an ulp or two (or not at all).
        &input(1, 1, cfg.d_model, 33)?,
    )?;
    let y2 = m.forward(&(&x + bump)?)?;
    for t in 0..12 {
        let d = max_abs_diff(&y.narrow(1, t, 1)?, &y2.narrow(1, t, 1)?)?;
        // Frames of chunks 1 and 2 see frame 4 (chunk 3 is out of the window): clearly moved;
        // the others exactly unchanged.
        if (3..9).contains(&t) {
            assert!(d > 1e-4, "frame {t} should see frame 4 (moved {d})");
        } else {
            assert_eq!(d, 0.0, "frame {t} must not see frame 4");
        }
    }
    Ok(())
}

#[test]
fn chunk_causal_streams_in_whole_chunks_equal_recompute() -> Result<()> {
    for (chunk, left) in [(1, 2), (2, 1), (4, 2)] {
        let cfg = chunked_cfg(chunk, left);
        let (m, _vm) = model_with(&cfg, &chunk_opts(chunk), 40 + chunk as u64)?;
        let x = input(2, 6 * chunk + 1, cfg.d_model, 41)?;
        let full = m.forward(&x)?;
        // Whole chunks, then the partial last chunk.
        let streamed = stream_rotating(&m, &x, &[chunk, 2 * chunk, chunk])?;
        let d = max_abs_diff(&full, &streamed)?;
        assert!(d <= STREAM_TOL, "chunk {chunk}: {d}");
    }
    let bad = TransformerConfig {
        context: Some(3),
        ..base_cfg()
    };
    assert!(chunk_opts(2).validate(&bad).is_err());
    let non_causal = TransformerConfig {
        causal: false,
        ..base_cfg()
    };
    assert!(chunk_opts(2).validate(&non_causal).is_err());
    Ok(())
}

#[test]
fn padded_forward_equals_unpadded_rows() -> Result<()> {
    for (cfg, opts) in [
        (chunked_cfg(3, 1), chunk_opts(3)),
        (base_cfg(), TransformerOptions::default()),
        (
            TransformerConfig {
                causal: false,
                ..base_cfg()
            },
            TransformerOptions::default(),
        ),
    ] {
        let (m, _vm) = model_with(&cfg, &opts, 50)?;
        let x = input(2, 10, cfg.d_model, 51)?;
        let lens = [10, 7];
        let padded = m.forward_padded(&x, &lens, false)?;
        let train = m.forward_padded(&x, &lens, true)?;
        for (b, &n) in lens.iter().enumerate() {
            let solo = m.forward(&x.narrow(0, b, 1)?.narrow(1, 0, n)?)?;
            let got = padded.narrow(0, b, 1)?.narrow(1, 0, n)?;
            let d = max_abs_diff(&solo, &got)?;
            assert!(d <= STREAM_TOL, "{cfg:?} row {b}: {d}");
        }
        let finite = train
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "padded rows must stay finite");
    }
    Ok(())
}

fn cross_opts() -> TransformerOptions {
    TransformerOptions {
        cross_attention_dim: Some(12),
        ..Default::default()
    }
}

fn cross_cfg() -> TransformerConfig {
    TransformerConfig {
        layer_scale: Some(0.7),
        num_kv_heads: Some(2),
        ..base_cfg()
    }
}

#[test]
fn cross_attention_steps_with_growing_memory_equal_full_forward() -> Result<()> {
    use vaak_nn::transformer::cross_attention_mask;
    let cfg = cross_cfg();
    let (m, _vm) = model_with(&cfg, &cross_opts(), 60)?;
    let (b, t, s) = (2, 9, 11);
    let x = input(b, t, cfg.d_model, 61)?;
    let mem = input(b, s, 12, 62)?;
    // Slot 0 gains 1 memory frame per step from 3, slot 1 gains 2 from 1 (capped at s).
    let visible: Vec<Vec<usize>> = vec![
        (0..t).map(|i| (3 + i).min(s)).collect(),
        (0..t).map(|i| (1 + 2 * i).min(s)).collect(),
    ];
    let mask = cross_attention_mask(&visible, s, &Device::Cpu)?;
    let full = m.forward_with_memory(&x, 0, false, &mem, Some(&mask))?;
    let train = m.forward_with_memory(&x, 0, true, &mem, Some(&mask))?;
    let dt = max_abs_diff(&full, &train)?;
    assert!(dt <= TRAIN_TOL, "train vs inference: {dt}");

    let mut cache = m.slot_cache(b)?;
    let mut cross = m.cross_cache(b, s)?;
    let mut outs = Vec::new();
    for (i, xi) in (0..t).map(|i| (i, x.narrow(1, i, 1))) {
        // Each slot appends its own new frames (one slot at a time under a mask).
        for (slot, vis) in visible.iter().enumerate() {
            let have = cross.lens()[slot];
            let need = vis[i];
            if need > have {
                let chunk = Tensor::zeros((b, need - have, 12), DType::F32, &Device::Cpu)?
                    .slice_assign(
                        &[slot..slot + 1, 0..need - have, 0..12],
                        &mem.narrow(0, slot, 1)?.narrow(1, have, need - have)?,
                    )?;
                m.append_memory(&mut cross, &chunk, &StreamMask::only(slot, b))?;
            }
        }
        assert_eq!(cross.lens(), &[visible[0][i], visible[1][i]]);
        outs.push(m.step_slots_with_memory(&xi?, &mut cache, &StreamMask::All, &cross)?);
    }
    let streamed = Tensor::cat(&outs, 1)?;
    let d = max_abs_diff(&full, &streamed)?;
    assert!(d <= STREAM_TOL, "cross-attention streaming: {d}");
    // The memory is needed, and has to fit.
    assert!(m.forward(&x).is_err());
    assert!(m
        .append_memory(&mut cross, &input(b, 1, 12, 63)?, &StreamMask::All)
        .is_err());
    Ok(())
}

#[test]
fn cross_memory_reset_of_one_slot_leaves_the_other_bit_identical() -> Result<()> {
    let cfg = cross_cfg();
    let (m, _vm) = model_with(&cfg, &cross_opts(), 70)?;
    let mem = input(2, 6, 12, 71)?;
    let mut cross = m.cross_cache(2, 8)?;
    m.append_memory(&mut cross, &mem, &StreamMask::All)?;
    let before = m.step_slots_with_memory(
        &input(2, 1, cfg.d_model, 72)?,
        &mut m.slot_cache(2)?,
        &StreamMask::All,
        &cross,
    )?;
    cross.reset_slots(&StreamMask::only(1, 2))?;
    assert_eq!(cross.lens(), &[6, 0]);
    // Slot 1 has no memory: stepping it is an error, stepping slot 0 alone is fine.
    let x = input(2, 1, cfg.d_model, 72)?;
    assert!(m
        .step_slots_with_memory(&x, &mut m.slot_cache(2)?, &StreamMask::All, &cross)
        .is_err());
    let after =
        m.step_slots_with_memory(&x, &mut m.slot_cache(2)?, &StreamMask::only(0, 2), &cross)?;
    assert_eq!(
        bits(&before.narrow(0, 0, 1)?.squeeze(0)?.to_vec2::<f32>()?),
        bits(&after.narrow(0, 0, 1)?.squeeze(0)?.to_vec2::<f32>()?)
    );
    Ok(())
}
