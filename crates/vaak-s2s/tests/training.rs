//! The training forward (differentiable ops) equals the inference forward used by generation,
//! and the loss is the masked per-codebook cross-entropy it claims to be.

mod common;

use candle_core::{Device, IndexOp, D};
use vaak_s2s::{HeadKind, LossWeights, S2sModel};

#[test]
fn training_forward_equals_inference_forward() {
    for head in [HeadKind::Delay, HeadKind::Depth] {
        let cfg = common::tiny(head, true);
        let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
        let batch = [common::sample(&cfg, 1, 7, 5), common::sample(&cfg, 2, 4, 2)];
        let a = model.forward_batch(&batch, false).unwrap();
        let b = model.forward_batch(&batch, true).unwrap();
        let d = common::max_diff(&a.logits, &b.logits);
        assert!(d < 1e-4, "{head:?}: {d}");
        let d = common::max_diff(
            a.text_logits.as_ref().unwrap(),
            b.text_logits.as_ref().unwrap(),
        );
        assert!(d < 1e-4, "{head:?} text: {d}");
    }
}

#[test]
fn loss_is_the_masked_mean_cross_entropy_per_codebook() {
    let cfg = common::tiny(HeadKind::Delay, true);
    let (model, _) = S2sModel::init_seeded(&cfg, &Device::Cpu, 7).unwrap();
    let batch = [common::sample(&cfg, 3, 6, 4), common::sample(&cfg, 4, 5, 1)];
    let tf = model.forward_batch(&batch, false).unwrap();
    let k = cfg.codec.num_codebooks;
    let mut w = LossWeights::uniform(k);
    w.codebooks[1] = 0.0;
    w.text = 0.5;
    let loss = model.loss(&tf, &w).unwrap();
    let layouts: Vec<_> = batch
        .iter()
        .enumerate()
        .map(|(i, s)| model.layout(i, s).unwrap())
        .collect();
    let mut expect_total = 0.0f64;
    for c in 0..k {
        let lsm = candle_nn::ops::log_softmax(&tf.codebook_logits(c).unwrap(), D::Minus1).unwrap();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for (row, l) in layouts.iter().enumerate() {
            for (s, t) in l.targets.iter().enumerate() {
                if let Some(t) = t[c] {
                    sum -= lsm
                        .i((row, s, t as usize))
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap() as f64;
                    n += 1;
                }
            }
        }
        let ce = sum / n as f64;
        let got = loss.per_codebook[c].to_scalar::<f32>().unwrap() as f64;
        assert!((ce - got).abs() < 1e-4, "codebook {c}: {ce} vs {got}");
        expect_total += w.codebooks[c] * ce;
    }
    let text_ce = loss.text_ce.as_ref().unwrap().to_scalar::<f32>().unwrap() as f64;
    expect_total += 0.5 * text_ce;
    let total = loss.total.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (total - expect_total).abs() < 1e-4,
        "{total} vs {expect_total}"
    );
    // Codebook 0 has the end-of-turn target; the others do not: the delay layout.
    let eot = cfg.audio_specials().eot;
    for l in &layouts {
        let eots: Vec<usize> = (0..k)
            .map(|c| l.targets.iter().filter(|t| t[c] == Some(eot)).count())
            .collect();
        assert_eq!(eots[0], 1);
        assert!(eots[1..].iter().all(|&n| n == 0));
    }
    for a in &loss.accuracy {
        let a = a.to_scalar::<f32>().unwrap();
        assert!((0.0..=1.0).contains(&a));
    }
}
