//! A tiny model trained with vaak-nn's AdamW on a handful of random source -> target pairs
//! must reproduce every target exactly (codes, text and end of turn) with greedy streaming
//! generation: the training forward, the loss and the generation path agree end to end.

mod common;

use candle_core::Device;
use vaak_nn::train::{AdamW, AdamWConfig};
use vaak_nn::StreamMask;
use vaak_s2s::{Frame, GenerationConfig, HeadKind, LossWeights, S2sModel, S2sStream, Sample};

/// Greedy replies (frames, text) of every sample, all slots batched.
fn generate(model: &S2sModel, samples: &[Sample]) -> Vec<(Vec<Frame>, Vec<u32>)> {
    let b = samples.len();
    let gen = GenerationConfig {
        max_frames: 16,
        ..GenerationConfig::greedy()
    };
    let mut st = S2sStream::new(model, b, gen).unwrap();
    for (i, s) in samples.iter().enumerate() {
        st.start(i, s.cond.clone(), i as u64).unwrap();
    }
    // Sources stream in 2 frames at a time, as while the user speaks.
    let longest = samples.iter().map(|s| s.source.len()).max().unwrap();
    for start in (0..longest).step_by(2) {
        let frames: Vec<Vec<Frame>> = samples
            .iter()
            .map(|s| s.source[start.min(s.source.len())..(start + 2).min(s.source.len())].to_vec())
            .collect();
        st.push_source(&frames).unwrap();
    }
    for i in 0..b {
        st.end_source(i).unwrap();
    }
    let mut out = vec![(Vec::new(), Vec::new()); b];
    let mut steps = 0;
    while (0..b).any(|i| !st.is_finished(i)) {
        for (i, o) in st.step(&StreamMask::All).unwrap().into_iter().enumerate() {
            if let Some(o) = o {
                out[i].0.extend(o.frames);
                out[i].1.extend(o.text);
            }
        }
        steps += 1;
        assert!(steps < 64);
    }
    out
}

fn overfit(head: HeadKind, text: bool, max_steps: usize) {
    let cfg = common::tiny(head, text);
    let dev = Device::Cpu;
    let (model, vars) = S2sModel::init_seeded(&cfg, &dev, 7).unwrap();
    // One shared conditioning: only the source tells the pairs apart, so the model must
    // learn to read it through cross-attention.
    let shared = common::sample(&cfg, 7, 1, 1).cond;
    let samples: Vec<Sample> = (0..4)
        .map(|i| Sample {
            cond: shared.clone(),
            ..common::sample(&cfg, 40 + i, 5 + i as usize % 2, 4 + i as usize % 3)
        })
        .collect();
    let mut opt = AdamW::from_varmap(
        &vars,
        AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let weights = LossWeights::uniform(cfg.codec.num_codebooks);
    let mut first_loss = None;
    for step in 1..=max_steps {
        let tf = model.forward_batch(&samples, true).unwrap();
        let loss = model.loss(&tf, &weights).unwrap();
        let l = loss.total.to_scalar::<f32>().unwrap();
        assert!(l.is_finite(), "step {step}: loss {l}");
        first_loss.get_or_insert(l);
        opt.step(&loss.total.backward().unwrap()).unwrap();
        if step % 20 == 0 {
            let acc: Vec<f32> = loss
                .accuracy
                .iter()
                .chain(loss.text_accuracy.iter())
                .map(|a| a.to_scalar::<f32>().unwrap())
                .collect();
            if acc.iter().all(|&a| a >= 1.0) {
                let replies = generate(&model, &samples);
                if replies.iter().zip(&samples).all(|(r, s)| {
                    r.0 == s.target
                        && (!text || r.1[..s.target.len()] == s.text.as_ref().unwrap()[..])
                }) {
                    eprintln!(
                        "{head:?}: reproduced after {step} steps, loss {first_loss:?} -> {l}"
                    );
                    return;
                }
            }
        }
    }
    let replies = generate(&model, &samples);
    for (i, (r, s)) in replies.iter().zip(&samples).enumerate() {
        assert_eq!(
            r.0, s.target,
            "{head:?}: sample {i} not reproduced (first loss {first_loss:?})"
        );
    }
}

#[test]
fn tiny_delay_model_with_text_overfits_four_pairs() {
    overfit(HeadKind::Delay, true, 400);
}

#[test]
fn tiny_depth_model_overfits_four_pairs() {
    overfit(HeadKind::Depth, false, 400);
}

/// Every parameter gets a gradient from the training loss (no fused op without a backward
/// on the training path, no dead branch), for both heads with text and a speaker-less row.
#[test]
fn backward_reaches_every_parameter() {
    for head in [HeadKind::Delay, HeadKind::Depth] {
        let cfg = common::tiny(head, true);
        let (model, vars) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
        let mut b = vec![common::sample(&cfg, 1, 5, 4), common::sample(&cfg, 2, 3, 2)];
        b[1].cond.speaker = None;
        let tf = model.forward_batch(&b, true).unwrap();
        let loss = model
            .loss(&tf, &LossWeights::uniform(cfg.codec.num_codebooks))
            .unwrap();
        let grads = loss.total.backward().unwrap();
        let data = vars.data().lock().unwrap();
        let mut missing: Vec<&String> = data
            .iter()
            .filter(|(_, v)| match grads.get(v.as_tensor()) {
                None => true,
                Some(g) => {
                    g.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        == 0.0
                }
            })
            .map(|(n, _)| n)
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "{head:?}: no gradient for {missing:?}");
    }
}
