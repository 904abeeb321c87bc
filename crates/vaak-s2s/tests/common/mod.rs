//! Shared fixtures: tiny configs and seeded random samples.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaak_s2s::{CodecSpec, Emotion, Frame, HeadKind, Language, S2sConfig, Sample, SlotCondition};

pub const TEXT_VOCAB: usize = 11;

/// The `tiny` preset on a 3-codebook, 16-code codec.
pub fn tiny(head: HeadKind, text: bool) -> S2sConfig {
    let mut cfg = S2sConfig::preset(
        "tiny",
        CodecSpec {
            num_codebooks: 3,
            cardinality: 16,
            frame_rate: 12.5,
        },
    )
    .unwrap();
    cfg.head = head;
    cfg.text_vocab_size = text.then_some(TEXT_VOCAB);
    cfg.speaker_dim = 8;
    cfg.max_source_frames = 64;
    cfg.max_target_frames = 32;
    cfg
}

pub fn frames(rng: &mut ChaCha8Rng, n: usize, k: usize, card: usize) -> Vec<Frame> {
    (0..n)
        .map(|_| (0..k).map(|_| rng.random_range(0..card as u32)).collect())
        .collect()
}

pub fn cond(rng: &mut ChaCha8Rng, speaker_dim: usize) -> SlotCondition {
    SlotCondition {
        speaker: Some(
            (0..speaker_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect(),
        ),
        emotion: Emotion::ALL[rng.random_range(0..Emotion::ALL.len())],
        language: Language::ALL[rng.random_range(0..Language::ALL.len())],
        prosody: [
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        ],
    }
}

pub fn sample(cfg: &S2sConfig, seed: u64, src: usize, tgt: usize) -> Sample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k = cfg.codec.num_codebooks;
    let card = cfg.codec.cardinality;
    Sample {
        source: frames(&mut rng, src, k, card),
        target: frames(&mut rng, tgt, k, card),
        text: cfg
            .text_vocab_size
            .map(|v| (0..tgt).map(|_| rng.random_range(0..v as u32)).collect()),
        cond: cond(&mut rng, cfg.speaker_dim),
    }
}

/// Max |a - b| over two tensors of the same shape.
pub fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    vaak_nn::streaming::max_abs_diff(a, b).unwrap()
}
