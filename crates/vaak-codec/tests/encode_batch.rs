//! `Codec::encode_batch`: clips of different lengths encoded as one padded batch give each clip
//! the latent (within 1e-5) and codes it gets alone, on the tiny EnCodec fixture in both edge
//! modes and on a random vaak-16k.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vaak_codec::{Codec, CodecConfig, EdgeMode, Preset};
use vaak_nn::streaming::max_abs_diff;
use vaak_nn::weights::LoadOptions;

mod common;
use common::*;

const TOL: f32 = 1e-5;

fn clip(n: usize, seed: u64) -> Tensor {
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / 24_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (180.0 + 70.0 * seed as f32) * t).sin()
                + 0.1 * ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 1000.0
        })
        .collect();
    Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap()
}

fn check(codec: &Codec, lens: &[usize], what: &str) {
    let clips: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| clip(n, i as u64))
        .collect();
    let lat = codec.encode_latent_batch(&clips).unwrap();
    let codes = codec.encode_batch(&clips).unwrap();
    for (i, c) in clips.iter().enumerate() {
        let alone = codec.encode_latent(&c.unsqueeze(0).unwrap()).unwrap();
        let alone = alone.squeeze(0).unwrap();
        assert_eq!(lat[i].dims(), alone.dims(), "{what}: clip {i} latent shape");
        let scale = alone
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_abs_diff(&lat[i], &alone).unwrap();
        assert!(
            d <= TOL * scale.max(1.0),
            "{what}: clip {i} latent diff {d}"
        );
        let want = codec
            .encode(&c.unsqueeze(0).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_eq!(
            codes[i]
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec2::<u32>()
                .unwrap(),
            want.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap(),
            "{what}: clip {i} codes"
        );
    }
}

#[test]
fn encodec_batch_equals_one_by_one_in_both_edge_modes() {
    let mut codec = Codec::load(
        &format!("{DIR}/encodec"),
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .unwrap();
    // Lengths off the hop and off every stride, one shorter than a frame's padding.
    let hop = codec.hop_length();
    let lens = [7 * hop + 13, 3 * hop, 11 * hop + 1, hop + 5, 5 * hop - 1];
    check(&codec, &lens, "encodec reference");
    codec.set_edge_mode(EdgeMode::Causal);
    check(&codec, &lens, "encodec causal");
}

#[test]
fn vaak16k_batch_equals_one_by_one() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let codec = Codec::new(CodecConfig::vaak_16k(), Preset::Vaak16k, vb).unwrap();
    let hop = codec.hop_length();
    check(
        &codec,
        &[4 * hop + 7, 2 * hop, 3 * hop + hop / 2],
        "vaak-16k",
    );
}

#[test]
fn a_clip_shorter_than_a_frame_is_an_error() {
    let mut codec = Codec::load(
        &format!("{DIR}/encodec"),
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .unwrap();
    codec.set_edge_mode(EdgeMode::Causal);
    let hop = codec.hop_length();
    let clips = [clip(3 * hop, 0), clip(hop / 2, 1)];
    let err = codec.encode_batch(&clips).unwrap_err().to_string();
    assert!(err.contains("one frame"), "{err}");
}
