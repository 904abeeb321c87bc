//! Half-precision step weights ([`Codec::set_step_weights`]: Mimi's latent transformers and
//! the SEANet convs at the latent frame rate): the streamed codes and audio stay close to the
//! f32 stream, F32 restores it bit for bit, and whole-clip calls never change.

use candle_core::Tensor;
use vaak_codec::{Codec, Preset, StepWeights};
use vaak_nn::streaming::{max_abs_diff, StreamMask};
use vaak_nn::weights::LoadOptions;

mod common;
use common::*;

/// Streams `audio` `[B, 1, T]` one frame at a time: the codes `[B, n_q, F]` and the audio
/// decoded from `codes` (the stream's own codes when `None`).
fn stream(codec: &Codec, audio: &Tensor, codes: Option<&Tensor>) -> (Tensor, Tensor) {
    let hop = codec.hop_length();
    let frames = audio.dim(2).unwrap() / hop;
    let mut st = codec.streamer(audio.dim(0).unwrap()).unwrap();
    let (mut cs, mut ys) = (Vec::new(), Vec::new());
    for f in 0..frames {
        let c = st
            .encode_step(&audio.narrow(2, f * hop, hop).unwrap(), &StreamMask::All)
            .unwrap()
            .expect("one frame per hop");
        let c_in = match codes {
            Some(all) => all.narrow(2, f, 1).unwrap(),
            None => c.clone(),
        };
        ys.push(st.decode_step(&c_in, &StreamMask::All).unwrap().unwrap());
        cs.push(c);
    }
    (Tensor::cat(&cs, 2).unwrap(), Tensor::cat(&ys, 2).unwrap())
}

#[test]
fn half_step_weights_stay_close_to_f32_and_f32_restores_it() {
    let r = reference("mimi");
    let audio = &r["audio"]; // [2, 1, 1600], 50 frames
    let mut codec = Codec::load(
        &format!("{DIR}/mimi"),
        Preset::Mimi,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(codec.step_weights(), StepWeights::F32);
    let (codes, y) = stream(&codec, audio, None);
    let whole = codec.decode(&codes).unwrap();
    let scale = peak(&y);
    // Relative to the decoded peak; measured 3.8e-3 (bf16) and 6.2e-4 (f16) on this fixture,
    // nearly all from the convs (the transformers alone: 9e-7 and 4e-7; the fixture's small
    // layer scales damp their share of the latent).
    for (kind, tol) in [(StepWeights::Bf16, 1e-2f32), (StepWeights::F16, 2e-3)] {
        codec.set_step_weights(kind).unwrap();
        assert_eq!(codec.step_weights(), kind);
        let (hc, _) = stream(&codec, audio, None);
        let (a, b) = (codes_vec(&codes), codes_vec(&hc));
        let pairs: Vec<(i64, i64)> = a
            .iter()
            .flatten()
            .flatten()
            .copied()
            .zip(b.iter().flatten().flatten().copied())
            .collect();
        let same = pairs.iter().filter(|(x, y)| x == y).count();
        eprintln!(
            "{kind}: {same} of {} codes equal the f32 stream",
            pairs.len()
        );
        assert!(
            same * 10 >= pairs.len() * 9,
            "{kind}: {same} of {}",
            pairs.len()
        );
        // The decoder alone, on the f32 codes: only its transformer's weights differ.
        let (_, hy) = stream(&codec, audio, Some(&codes));
        let d = max_abs_diff(&hy, &y).unwrap();
        eprintln!("{kind}: decoder max diff {d} (peak {scale})");
        assert!(d > 0.0 && d <= tol * scale, "{kind}: {d} vs peak {scale}");
        // Whole-clip decode keeps the f32 weights.
        assert_eq!(
            max_abs_diff(&codec.decode(&codes).unwrap(), &whole).unwrap(),
            0.0
        );
    }
    codec.set_step_weights(StepWeights::F32).unwrap();
    let (c2, y2) = stream(&codec, audio, None);
    assert_eq!(codes_vec(&c2), codes_vec(&codes));
    assert_eq!(max_abs_diff(&y2, &y).unwrap(), 0.0);
}

#[test]
fn codecs_without_a_latent_transformer_use_half_latent_convs() {
    let r = reference("encodec");
    let audio = &r["audio"];
    let mut codec = Codec::load(
        &format!("{DIR}/encodec"),
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .unwrap();
    let hop = codec.hop_length();
    let audio = audio
        .narrow(2, 0, audio.dim(2).unwrap() / hop * hop)
        .unwrap();
    let (codes, y) = stream(&codec, &audio, None);
    let whole = codec.decode(&codes).unwrap();
    codec.set_step_weights(StepWeights::Bf16).unwrap();
    assert_eq!(codec.step_weights(), StepWeights::Bf16);
    // The decoder alone on the f32 codes: its latent-rate conv reads bf16 weights.
    let (_, hy) = stream(&codec, &audio, Some(&codes));
    let d = max_abs_diff(&hy, &y).unwrap();
    let scale = peak(&y);
    eprintln!("encodec bf16: decoder max diff {d} (peak {scale})");
    assert!(d > 0.0 && d <= 1e-2 * scale, "{d} vs peak {scale}");
    assert_eq!(
        max_abs_diff(&codec.decode(&codes).unwrap(), &whole).unwrap(),
        0.0
    );
    codec.set_step_weights(StepWeights::F32).unwrap();
    let (c2, y2) = stream(&codec, &audio, None);
    assert_eq!(codes_vec(&c2), codes_vec(&codes));
    assert_eq!(max_abs_diff(&y2, &y).unwrap(), 0.0);
}
