//! Speaker embeddings: speechbrain's ECAPA-TDNN (`speechbrain/spkrec-ecapa-voxceleb`) loaded as
//! published, and [`cosine_similarity`] for the cascade's speaker-similarity gate.
//!
//! * [`hyperparams`] reads the published HyperPyYAML `hyperparams.yaml`.
//! * [`ecapa`] is the network (our own candle port; candle-transformers has none).
//! * [`encoder`] is the front end and batching: resample to the model rate, speechbrain `Fbank`
//!   (`vaak_audio::features::SpeechbrainFbank`, parity-tested there), sentence mean
//!   normalisation over each clip's valid frames, then the network, as
//!   `EncoderClassifier.encode_batch` does (1.1.2; `mean_var_norm_emb` is not applied because
//!   `encode_batch` only applies it with `normalize=True`).
//!
//! Parity with speechbrain on a tiny random model is in `tests/speaker_ecapa.rs`.

pub mod ecapa;
pub mod encoder;
pub mod hyperparams;

pub use ecapa::{EcapaTdnn, FrameLengths};
pub use encoder::{
    EcapaBatching, EcapaOptions, EcapaSpeakerEncoder, EMBEDDING_MODEL_FILE, HYPERPARAMS_FILE,
};
pub use hyperparams::{EcapaConfig, EcapaHyperparams, InputNormConfig};

use crate::error::{Result, TeacherError};

/// Norms below this count as zero (as `torch.nn.functional.cosine_similarity`'s eps).
const COSINE_EPS: f64 = 1e-8;

/// Cosine similarity of two embeddings, in `[-1, 1]` (accumulated in `f64`). A zero vector has
/// similarity 0 with everything. Errors: different lengths, empty or non-finite input.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(TeacherError::BadInput(format!(
            "cosine similarity of vectors of lengths {} and {}",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(TeacherError::BadInput(
            "cosine similarity of empty vectors".into(),
        ));
    }
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return Err(TeacherError::BadInput(
            "cosine similarity of a non-finite vector".into(),
        ));
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let c = dot / (na.sqrt().max(COSINE_EPS) * nb.sqrt().max(COSINE_EPS));
    Ok(c.clamp(-1.0, 1.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::cosine_similarity;

    #[test]
    fn cosine_basics() {
        let a = [1.0f32, 2.0, -3.0];
        assert!((cosine_similarity(&a, &a).unwrap() - 1.0).abs() < 1e-7);
        let neg: Vec<f32> = a.iter().map(|v| -2.5 * v).collect();
        assert!((cosine_similarity(&a, &neg).unwrap() + 1.0).abs() < 1e-7);
        let orth = [2.0f32, -1.0, 0.0];
        assert!(cosine_similarity(&a, &orth).unwrap().abs() < 1e-7);
        // 45 degrees
        let c = cosine_similarity(&[1.0, 0.0], &[1.0, 1.0]).unwrap();
        assert!((c - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]).unwrap(), 0.0);
        assert!(cosine_similarity(&[1.0], &[1.0, 2.0]).is_err());
        assert!(cosine_similarity(&[], &[]).is_err());
        assert!(cosine_similarity(&[f32::NAN], &[1.0]).is_err());
    }
}
