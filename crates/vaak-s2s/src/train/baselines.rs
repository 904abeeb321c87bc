//! Per-codebook token accuracy of a model and of two trivial baselines on the same held-out
//! pairs, counted the way [`S2sModel::loss`] counts them: codebook `k` of every target frame,
//! plus the end-of-turn position after the last frame for codebook 0.
//!
//! - **unigram**: always the most frequent code of each codebook in the training targets;
//! - **copy**: target frame `f` gets the source frame `f`'s codes (a miss past the source's
//!   end and at the end of turn).
//!
//! Pooled over positions (micro average), so the three numbers divide the same counts.

use crate::cond::{Emotion, SlotCondition};
use crate::encoder::Frame;
use crate::error::{Result, S2sError};
use crate::model::{LossWeights, S2sModel, Sample};
use crate::train::data::S2sExample;

/// Hits and scored positions per codebook.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CodebookAccuracy {
    pub hits: Vec<u64>,
    pub total: Vec<u64>,
}

impl CodebookAccuracy {
    fn new(k: usize) -> Self {
        Self {
            hits: vec![0; k],
            total: vec![0; k],
        }
    }

    /// Scored positions of a target of `t` frames: `t` per codebook, one more (the end of
    /// turn) for codebook 0.
    fn add_totals(&mut self, t: usize) {
        for (c, n) in self.total.iter_mut().enumerate() {
            *n += t as u64 + u64::from(c == 0);
        }
    }

    /// Fraction of hits per codebook (0 where nothing was scored).
    pub fn accuracy(&self) -> Vec<f64> {
        self.hits
            .iter()
            .zip(&self.total)
            .map(|(&h, &n)| if n == 0 { 0.0 } else { h as f64 / n as f64 })
            .collect()
    }

    /// Mean of [`Self::accuracy`] over the codebooks.
    pub fn mean(&self) -> f64 {
        let a = self.accuracy();
        if a.is_empty() {
            0.0
        } else {
            a.iter().sum::<f64>() / a.len() as f64
        }
    }
}

fn check_frames(id: &str, what: &str, frames: &[Frame], k: usize) -> Result<()> {
    match frames.iter().position(|f| f.len() != k) {
        None => Ok(()),
        Some(i) => Err(S2sError::BadInput(format!(
            "{id}: {what} frame {i} has {} codes, expected {k}",
            frames[i].len()
        ))),
    }
}

/// The most frequent code of each of `k` codebooks over the targets of `train` (ties: the
/// smaller code).
pub fn unigram_codes(train: &[S2sExample], k: usize) -> Result<Vec<u32>> {
    let mut counts: Vec<std::collections::HashMap<u32, u64>> = vec![Default::default(); k];
    for e in train {
        check_frames(&e.id, "target", &e.target, k)?;
        for f in &e.target {
            for (c, &code) in f.iter().enumerate() {
                *counts[c].entry(code).or_default() += 1;
            }
        }
    }
    Ok(counts
        .iter()
        .map(|m| {
            m.iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map_or(0, |(&code, _)| code)
        })
        .collect())
}

/// Accuracy of always predicting `codes` (one per codebook) on the targets of `val`.
pub fn unigram_accuracy(val: &[S2sExample], codes: &[u32]) -> Result<CodebookAccuracy> {
    let k = codes.len();
    let mut acc = CodebookAccuracy::new(k);
    for e in val {
        check_frames(&e.id, "target", &e.target, k)?;
        acc.add_totals(e.target.len());
        for f in &e.target {
            for c in 0..k {
                acc.hits[c] += u64::from(f[c] == codes[c]);
            }
        }
    }
    Ok(acc)
}

/// Accuracy of predicting target frame `f` as source frame `f` on `val` (`k` codebooks).
pub fn copy_accuracy(val: &[S2sExample], k: usize) -> Result<CodebookAccuracy> {
    let mut acc = CodebookAccuracy::new(k);
    for e in val {
        check_frames(&e.id, "target", &e.target, k)?;
        check_frames(&e.id, "source", &e.source, k)?;
        acc.add_totals(e.target.len());
        for (t, s) in e.target.iter().zip(&e.source) {
            for c in 0..k {
                acc.hits[c] += u64::from(t[c] == s[c]);
            }
        }
    }
    Ok(acc)
}

/// The teacher-forced accuracy of `model` on `val` (one pair at a time, conditioned on the
/// target language only, as the `s2s` stage trains), and the mean loss over the pairs.
pub fn model_accuracy(model: &S2sModel, val: &[S2sExample]) -> Result<(CodebookAccuracy, f64)> {
    let k = model.config().codec.num_codebooks;
    let w = LossWeights::uniform(k);
    let mut acc = CodebookAccuracy::new(k);
    let mut loss = 0.0;
    for e in val {
        let sample = Sample {
            source: e.source.clone(),
            target: e.target.clone(),
            text: e.text.clone(),
            cond: SlotCondition {
                speaker: None,
                emotion: Emotion::Neutral,
                language: e.language,
                prosody: [0.0; 3],
            },
        };
        let tf = model.forward_batch(std::slice::from_ref(&sample), false)?;
        let l = model.loss(&tf, &w)?;
        loss += l.total.to_scalar::<f32>()? as f64;
        acc.add_totals(e.target.len());
        for (c, (hits, a)) in acc.hits.iter_mut().zip(&l.accuracy).enumerate() {
            // Positions this pair scores: its frames, plus the end of turn for codebook 0.
            let n = e.target.len() + usize::from(c == 0);
            *hits += (a.to_scalar::<f32>()? as f64 * n as f64).round() as u64;
        }
    }
    Ok((
        acc,
        if val.is_empty() {
            0.0
        } else {
            loss / val.len() as f64
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str, source: Vec<Frame>, target: Vec<Frame>) -> S2sExample {
        S2sExample {
            id: id.into(),
            source,
            target,
            ..Default::default()
        }
    }

    #[test]
    fn baselines_count_like_the_loss() {
        let train = vec![
            ex(
                "a",
                vec![vec![1, 1]],
                vec![vec![5, 7], vec![5, 8], vec![6, 8]],
            ),
            ex("b", vec![vec![1, 1]], vec![vec![5, 9]]),
        ];
        assert_eq!(unigram_codes(&train, 2).unwrap(), vec![5, 8]);
        // 3 target frames: codebook 0 scores 4 positions (with the end of turn), codebook 1 3.
        let val = vec![ex(
            "v",
            vec![vec![5, 0], vec![2, 8]],
            vec![vec![5, 8], vec![5, 8], vec![1, 2]],
        )];
        let u = unigram_accuracy(&val, &[5, 8]).unwrap();
        assert_eq!(u.hits, vec![2, 2]);
        assert_eq!(u.total, vec![4, 3]);
        assert_eq!(u.accuracy(), vec![0.5, 2.0 / 3.0]);
        let c = copy_accuracy(&val, 2).unwrap();
        // Frame 0: 5 == 5 (cb 0), 0 != 8; frame 1: 2 != 5, 8 == 8; frame 2: no source frame.
        assert_eq!(c.hits, vec![1, 1]);
        assert_eq!(c.total, vec![4, 3]);
        assert!(unigram_codes(&[ex("bad", vec![], vec![vec![1]])], 2).is_err());
    }

    #[test]
    fn model_accuracy_counts_the_same_positions() {
        let cfg = crate::config::S2sConfig::preset(
            "tiny",
            crate::config::CodecSpec {
                num_codebooks: 2,
                cardinality: 16,
                frame_rate: 25.0,
            },
        )
        .unwrap();
        let (model, _) = S2sModel::init_seeded(&cfg, &candle_core::Device::Cpu, 3).unwrap();
        let val = vec![
            ex("v", vec![vec![1, 2], vec![3, 4]], vec![vec![5, 6]; 3]),
            ex("w", vec![vec![1, 2]], vec![vec![7, 8]; 2]),
        ];
        let (acc, loss) = model_accuracy(&model, &val).unwrap();
        assert_eq!(acc.total, vec![4 + 3, 3 + 2]);
        assert!(acc.hits.iter().zip(&acc.total).all(|(h, n)| h <= n));
        assert!(loss.is_finite() && loss > 0.0);
    }
}
