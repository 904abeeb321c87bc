//! Parity with transformers' `MimiModel` on a tiny random checkpoint in the published flat
//! layout (`tools/fixtures/codec_mimi.py`), and Mimi streaming.

use candle_core::{DType, Device, IndexOp, Tensor};
use vaak_codec::{Codec, EdgeMode, HfCodecConfig, HfMimiConfig, Preset};
use vaak_nn::streaming::{max_abs_diff, StreamMask};
use vaak_nn::weights::LoadOptions;

mod common;
use common::*;

/// Streamed vs whole-clip.
const STREAM_TOL: f32 = 1e-4;

fn load() -> Codec {
    Codec::load(
        &format!("{DIR}/mimi"),
        Preset::Mimi,
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn mimi_codes_latent_and_audio_match_transformers() {
    let r = reference("mimi");
    let mut codec = load();
    assert_eq!(codec.max_codebooks(), 4);
    assert_eq!(codec.num_codebooks(), 4);
    assert_eq!(codec.hop_length(), 32);
    assert_eq!(codec.frame_rate(), 750.0);
    let lat = codec.encode_latent(&r["audio"]).unwrap();
    let err = max_abs_diff(&lat, &r["latents"]).unwrap();
    eprintln!("mimi latent max abs err {err:e}");
    assert!(err <= LATENT_TOL);
    for nq in [4usize, 2] {
        codec.set_num_codebooks(nq).unwrap();
        let want = codes_vec(&r[&format!("codes_q{nq}")]);
        for (q, n) in distinct_per_stage(&want).into_iter().enumerate() {
            assert!(n > MIN_DISTINCT, "stage {q}: {n} distinct");
        }
        let got = codec.encode(&r["audio"]).unwrap();
        assert_eq!(codes_vec(&got), want, "{nq} codebooks");
        let dec = codec.decode(&got).unwrap();
        let want_dec = &r[&format!("decoded_q{nq}")];
        let err = max_abs_diff(&dec, want_dec).unwrap();
        eprintln!(
            "mimi q{nq} decode max abs err {err:e} (peak {})",
            peak(want_dec)
        );
        assert!(err <= AUDIO_TOL);
        assert!(err <= REL_AUDIO_TOL * peak(want_dec));
    }
}

#[test]
fn mimi_streaming_equals_causal_whole_clip_and_resets_per_slot() {
    let r = reference("mimi");
    let codec = load();
    let mut whole = codec.clone();
    whole.set_edge_mode(EdgeMode::Causal);
    let audio = &r["audio"]; // [2, 1, 1600], 50 frames of 32 samples
    let want = whole.encode(audio).unwrap();
    assert_eq!(want.dims(), &[2, 4, 50]);
    // Uneven chunks, unmasked.
    let mut st = codec.streamer(2).unwrap();
    let mut outs = Vec::new();
    let (mut pos, mut k) = (0, 0);
    let sizes = [32usize, 7, 100, 64, 1];
    while pos < 1600 {
        let n = sizes[k % sizes.len()].min(1600 - pos);
        k += 1;
        if let Some(c) = st
            .encode_step(&audio.narrow(2, pos, n).unwrap(), &StreamMask::All)
            .unwrap()
        {
            outs.push(c);
        }
        pos += n;
    }
    let got = Tensor::cat(&outs, 2).unwrap();
    assert_eq!(codes_vec(&got), codes_vec(&want));
    // Against transformers' whole clip: Mimi's encoder is causal throughout, and the one
    // replicate-padded conv (the downsampling) replicates a stream's first sample too, so every
    // frame, frame 0 included, must match transformers exactly, streamed and whole-clip causal.
    let hf = codes_vec(&r["codes_q4"]);
    let streamed = codes_vec(&got);
    let same = streamed
        .iter()
        .flatten()
        .flatten()
        .zip(hf.iter().flatten().flatten())
        .filter(|(a, b)| a == b)
        .count();
    eprintln!("mimi streamed vs transformers: {same} of 400 codes equal");
    assert_eq!(streamed, hf, "streamed vs transformers");
    assert_eq!(codes_vec(&want), hf, "causal whole clip vs transformers");
    // Decoding is causal in transformers too (zero padding, causal attention): a stream of
    // single frames equals transformers' whole-clip decode.
    let mut st = codec.streamer(2).unwrap();
    let mut outs = Vec::new();
    for f in 0..50 {
        outs.push(
            st.decode_step(&want.narrow(2, f, 1).unwrap(), &StreamMask::All)
                .unwrap()
                .unwrap(),
        );
    }
    let got_audio = Tensor::cat(&outs, 2).unwrap();
    let err = max_abs_diff(&got_audio, &codec.decode(&want).unwrap()).unwrap();
    eprintln!("mimi streamed decode vs whole clip max abs err {err:e}");
    assert!(err <= STREAM_TOL);

    // Reset slot 1 after 20 frames and restart it from the clip's beginning; slot 0 continues.
    let mut st = codec.streamer(2).unwrap();
    let mut dec = codec.streamer(2).unwrap();
    let mut c0 = Vec::new();
    let mut c1 = Vec::new();
    let mut a0 = Vec::new();
    let mut a1 = Vec::new();
    for f in 0..50 {
        if f == 20 {
            st.reset_slot(1).unwrap();
            dec.reset_slot(1).unwrap();
        }
        let f1 = if f < 20 { f } else { f - 20 };
        let x = Tensor::cat(
            &[
                &audio.i((0..1, .., f * 32..(f + 1) * 32)).unwrap(),
                &audio.i((1..2, .., f1 * 32..(f1 + 1) * 32)).unwrap(),
            ],
            0,
        )
        .unwrap();
        let c = st.encode_step(&x, &StreamMask::All).unwrap().unwrap();
        let y = dec.decode_step(&c, &StreamMask::All).unwrap().unwrap();
        c0.push(c.i(0..1).unwrap());
        a0.push(y.i(0..1).unwrap());
        if f >= 20 {
            c1.push(c.i(1..2).unwrap());
            a1.push(y.i(1..2).unwrap());
        }
    }
    let want0 = want.i(0..1).unwrap();
    assert_eq!(codes_vec(&Tensor::cat(&c0, 2).unwrap()), codes_vec(&want0));
    let want1 = whole
        .encode(&audio.i((1..2, .., 0..30 * 32)).unwrap())
        .unwrap();
    assert_eq!(codes_vec(&Tensor::cat(&c1, 2).unwrap()), codes_vec(&want1));
    let e0 = max_abs_diff(
        &Tensor::cat(&a0, 2).unwrap(),
        &whole.decode(&want0).unwrap(),
    )
    .unwrap();
    let e1 = max_abs_diff(
        &Tensor::cat(&a1, 2).unwrap(),
        &whole.decode(&want1).unwrap(),
    )
    .unwrap();
    assert!(e0 <= STREAM_TOL && e1 <= STREAM_TOL, "{e0} {e1}");
}

/// kyutai/mimi's published `config.json` keys that differ from transformers 5's output.
#[test]
fn published_mimi_config_keys_parse() {
    let text = r#"{"model_type": "mimi", "frame_rate": 12.5, "rope_theta": 10000.0,
        "sampling_rate": 24000, "upsampling_ratios": [8, 6, 5, 4], "hidden_size": 512,
        "num_quantizers": 32, "codebook_size": 2048, "codebook_dim": 256,
        "vector_quantization_hidden_dimension": 256, "sliding_window": 250}"#;
    let cfg = HfMimiConfig::from_json(text, "config.json")
        .unwrap()
        .to_codec_config("config.json")
        .unwrap();
    assert_eq!(cfg.latent_stride, 2);
    assert_eq!(cfg.hop_length(), 1920);
    assert_eq!(cfg.frame_rate(), 12.5);
    let l = cfg.latent.unwrap();
    assert_eq!(l.transformer.context, Some(250));
    assert_eq!(l.num_semantic, 1);
    assert_eq!(l.upsample_groups, 512);
}

#[test]
fn mimi_masked_steps_freeze_inactive_slots() {
    let r = reference("mimi");
    let codec = load();
    let mut whole = codec.clone();
    whole.set_edge_mode(EdgeMode::Causal);
    let audio = &r["audio"];
    let frame = codec.hop_length();
    let mut st = codec.streamer(2).unwrap();
    let mut dec = codec.streamer(2).unwrap();
    let (mut c1, mut a1, mut pos1) = (Vec::new(), Vec::new(), 0usize);
    for f in 0..50 {
        // Slot 1 sits out every third step (encoder and decoder KV caches must not advance).
        let active1 = f % 3 != 1;
        let x0 = audio.i((0..1, .., f * frame..(f + 1) * frame)).unwrap();
        let x1 = if active1 {
            audio.i((1..2, .., pos1..pos1 + frame)).unwrap()
        } else {
            Tensor::zeros((1, 1, frame), DType::F32, &Device::Cpu).unwrap()
        };
        let mask = StreamMask::from_slots(&[true, active1]);
        let c = st
            .encode_step(&Tensor::cat(&[&x0, &x1], 0).unwrap(), &mask)
            .unwrap()
            .unwrap();
        let y = dec.decode_step(&c, &mask).unwrap().unwrap();
        if active1 {
            c1.push(c.i(1..2).unwrap());
            a1.push(y.i(1..2).unwrap());
            pos1 += frame;
        }
    }
    let want1 = whole
        .encode(&audio.i((1..2, .., 0..pos1)).unwrap())
        .unwrap();
    let got1 = Tensor::cat(&c1, 2).unwrap();
    assert_eq!(codes_vec(&got1), codes_vec(&want1));
    let err = max_abs_diff(
        &Tensor::cat(&a1, 2).unwrap(),
        &whole.decode(&want1).unwrap(),
    )
    .unwrap();
    assert!(err <= STREAM_TOL, "{err}");
}

#[test]
fn streamer_rejects_bad_chunks_and_masks() {
    let codec = load();
    let mut st = codec.streamer(2).unwrap();
    let dev = Device::Cpu;
    let wrong_batch = Tensor::zeros((3, 1, 32), DType::F32, &dev).unwrap();
    assert!(matches!(
        st.encode_step(&wrong_batch, &StreamMask::All),
        Err(vaak_codec::CodecError::BadInput { .. })
    ));
    let ok = Tensor::zeros((2, 1, 32), DType::F32, &dev).unwrap();
    assert!(matches!(
        st.encode_step(&ok, &StreamMask::from_slots(&[true])),
        Err(vaak_codec::CodecError::BadInput { .. })
    ));
    assert!(st.reset_slot(2).is_err());
    let bad_codes = Tensor::new(&[[[64u32]], [[0]]], &dev).unwrap();
    assert!(matches!(
        st.decode_step(&bad_codes, &StreamMask::All),
        Err(vaak_codec::CodecError::CodeOutOfRange { .. })
    ));
    assert!(codec.streamer(0).is_err());
    assert_eq!("mimi".parse::<Preset>().unwrap(), Preset::Mimi);
    assert!("opus".parse::<Preset>().is_err());
}
