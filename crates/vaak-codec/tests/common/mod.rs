//! Shared by the codec parity tests: the fixture directory, tolerances and code statistics.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

pub const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/codec"
);
/// Decoded audio vs transformers (f32, the same ops in another order).
pub const AUDIO_TOL: f32 = 1e-4;
/// The same error relative to the reference's peak: the tiny random models' output levels
/// (EnCodec ~0.05, Mimi ~70) make a fixed absolute bound alone too loose or too tight.
pub const REL_AUDIO_TOL: f32 = 1e-5;
/// Encoder latent vs transformers.
pub const LATENT_TOL: f32 = 1e-4;
/// Each codebook stage must use more than this many distinct codes on the fixture, so that
/// code equality is not vacuous (transformers initialises codebooks to zero).
pub const MIN_DISTINCT: usize = 20;

pub fn peak(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The reference tensors of `<name>_ref.safetensors`.
pub fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/{name}_ref.safetensors"), &Device::Cpu).unwrap()
}

pub fn codes_vec(t: &Tensor) -> Vec<Vec<Vec<i64>>> {
    t.to_dtype(DType::I64).unwrap().to_vec3::<i64>().unwrap()
}

/// Distinct code values per codebook stage, over the batch and time.
pub fn distinct_per_stage(codes: &[Vec<Vec<i64>>]) -> Vec<usize> {
    let nq = codes[0].len();
    (0..nq)
        .map(|q| {
            let mut s: Vec<i64> = codes.iter().flat_map(|b| b[q].clone()).collect();
            s.sort();
            s.dedup();
            s.len()
        })
        .collect()
}
