//! Parity with transformers' `EncodecModel` on a tiny random checkpoint saved as published
//! (`tools/fixtures/codec_encodec.py`), plus config parsing and input errors.

use candle_core::{DType, Device, Tensor};
use vaak_codec::{Codec, CodecError, EdgeMode, HfCodecConfig, HfEncodecConfig, Preset};
use vaak_nn::streaming::max_abs_diff;
use vaak_nn::weights::LoadOptions;

mod common;
use common::*;

fn load(variant: &str) -> Codec {
    Codec::load(
        &format!("{DIR}/{variant}"),
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn codes_and_audio_match_transformers_for_every_bandwidth() {
    let r = reference("encodec");
    for variant in ["encodec", "encodec_legacy"] {
        let mut codec = load(variant);
        assert_eq!(codec.edge_mode(), EdgeMode::Reference);
        let audio = &r["audio"];
        for (bw, nq) in [(9.0, 1), (18.0, 2), (36.0, 4)] {
            assert_eq!(codec.set_bandwidth(bw).unwrap(), nq);
            let want = &r[&format!("codes_bw{bw}")];
            let want_v = codes_vec(want);
            let distinct = distinct_per_stage(&want_v);
            assert!(
                distinct.iter().all(|&d| d > MIN_DISTINCT),
                "reference codes too uniform: {distinct:?}"
            );
            let got = codec.encode(audio).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(codes_vec(&got), want_v, "{variant} bw {bw}: codes differ");
            let dec = codec.decode(&got).unwrap();
            let want_dec = &r[&format!("decoded_bw{bw}")];
            let err = max_abs_diff(&dec, want_dec).unwrap();
            eprintln!("{variant} bw {bw}: decode max abs err {err:e}");
            assert!(err <= AUDIO_TOL, "{variant} bw {bw}: decode err {err}");
            assert!(err <= REL_AUDIO_TOL * peak(want_dec), "relative err {err}");
        }
    }
}

#[test]
fn latent_matches_transformers() {
    let r = reference("encodec");
    let codec = load("encodec");
    let lat = codec.encode_latent(&r["audio"]).unwrap();
    let err = max_abs_diff(&lat, &r["embeddings"]).unwrap();
    eprintln!("latent max abs err {err:e}");
    assert!(err <= LATENT_TOL, "latent err {err}");
}

#[test]
fn clip_not_a_multiple_of_the_hop_matches_hf_extra_padding() {
    let r = reference("encodec");
    let mut codec = load("encodec");
    codec.set_bandwidth(18.0).unwrap();
    let audio = &r["odd_audio"];
    let got = codec.encode(audio).unwrap();
    let want = &r["odd_codes_bw18"];
    // ceil(597 / 16) = 38 frames: the last one comes from HF's right padding.
    assert_eq!(got.dims(), &[1, 2, 38]);
    assert_eq!(codes_vec(&got), codes_vec(want));
    let dec = codec.decode(&got).unwrap();
    let err = max_abs_diff(&dec, &r["odd_decoded_bw18"]).unwrap();
    eprintln!("odd clip decode max abs err {err:e}");
    assert!(err <= AUDIO_TOL);
    assert!(err <= REL_AUDIO_TOL * peak(&r["odd_decoded_bw18"]));
}

/// `facebook/encodec_24khz`'s published `config.json` (transformers 4.31).
const PUBLISHED_CONFIG: &str = r#"{
  "architectures": ["EncodecModel"], "audio_channels": 1, "chunk_length_s": null,
  "codebook_dim": 128, "codebook_size": 1024, "compress": 2, "dilation_growth_rate": 2,
  "hidden_size": 128, "kernel_size": 7, "last_kernel_size": 7, "model_type": "encodec",
  "norm_type": "weight_norm", "normalize": false, "num_filters": 32, "num_lstm_layers": 2,
  "num_residual_layers": 1, "overlap": null, "pad_mode": "reflect", "residual_kernel_size": 3,
  "sampling_rate": 24000, "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
  "torch_dtype": "float32", "transformers_version": "4.31.0.dev0", "trim_right_ratio": 1.0,
  "upsampling_ratios": [8, 5, 4, 2], "use_causal_conv": true, "use_conv_shortcut": true
}"#;

#[test]
fn published_config_gives_75hz_and_the_bandwidth_table() {
    let cfg = HfEncodecConfig::from_json(PUBLISHED_CONFIG, "config.json")
        .unwrap()
        .to_codec_config("config.json")
        .unwrap();
    assert_eq!(cfg.hop_length(), 320);
    assert_eq!(cfg.frame_rate(), 75.0);
    assert_eq!(cfg.num_quantizers, 32);
    assert_eq!(cfg.default_codebooks, 2);
    for (bw, nq) in [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)] {
        assert_eq!(cfg.codebooks_for_bandwidth(bw), nq, "bw {bw}");
    }
    // Older files lack keys: the defaults are EncodecConfig's.
    let minimal = HfEncodecConfig::from_json("{}", "x").unwrap();
    assert_eq!(minimal.to_codec_config("x").unwrap(), cfg);
}

#[test]
fn unstreamable_configs_are_typed_errors_naming_the_field() {
    for (patch, field) in [
        (r#""normalize": true"#, "normalize"),
        (r#""use_causal_conv": false"#, "use_causal_conv"),
        (r#""norm_type": "time_group_norm""#, "norm_type"),
        (r#""chunk_length_s": 1.0"#, "chunk_length_s"),
        (r#""trim_right_ratio": 0.5"#, "trim_right_ratio"),
    ] {
        let text = format!("{{{patch}}}");
        let err = HfEncodecConfig::from_json(&text, "c.json")
            .unwrap()
            .to_codec_config("c.json")
            .unwrap_err();
        match err {
            CodecError::Unsupported { field: f, .. } => assert_eq!(f, field),
            other => panic!("{patch}: {other}"),
        }
    }
    let err = HfEncodecConfig::from_json("{\"hidden_size\": \"x\"}", "c.json").unwrap_err();
    assert!(matches!(err, CodecError::ConfigFile { .. }), "{err}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut codec = load("encodec");
    let dev = Device::Cpu;
    // Wrong channel count, rank, length, dtype.
    let stereo = Tensor::zeros((1, 2, 64), DType::F32, &dev).unwrap();
    assert!(matches!(
        codec.encode(&stereo),
        Err(CodecError::BadInput { .. })
    ));
    let flat = Tensor::zeros(64, DType::F32, &dev).unwrap();
    assert!(matches!(
        codec.encode(&flat),
        Err(CodecError::BadInput { .. })
    ));
    let empty = Tensor::zeros((1, 1, 0), DType::F32, &dev).unwrap();
    assert!(matches!(
        codec.encode(&empty),
        Err(CodecError::BadInput { .. })
    ));
    let ints = Tensor::zeros((1, 1, 64), DType::U32, &dev).unwrap();
    assert!(matches!(
        codec.encode(&ints),
        Err(CodecError::BadInput { .. })
    ));
    // Codes out of range name their position.
    let codes = Tensor::new(&[[[1u32, 2, 64], [0, 0, 0]]], &dev).unwrap();
    match codec.decode(&codes) {
        Err(CodecError::CodeOutOfRange {
            value: 64,
            batch: 0,
            codebook: 0,
            frame: 2,
            size: 64,
        }) => {}
        other => panic!("{other:?}"),
    }
    let neg = Tensor::new(&[[[1i64, -1]]], &dev).unwrap();
    assert!(matches!(
        codec.decode(&neg),
        Err(CodecError::CodeOutOfRange { .. })
    ));
    let floats = Tensor::zeros((1, 1, 3), DType::F32, &dev).unwrap();
    assert!(matches!(
        codec.decode(&floats),
        Err(CodecError::BadInput { .. })
    ));
    let too_many = Tensor::zeros((1, 5, 3), DType::U32, &dev).unwrap();
    assert!(matches!(
        codec.decode(&too_many),
        Err(CodecError::BadInput { .. })
    ));
    assert!(matches!(
        codec.set_bandwidth(6.0),
        Err(CodecError::UnsupportedBandwidth { .. })
    ));
    assert!(matches!(
        codec.set_num_codebooks(5),
        Err(CodecError::BadNumCodebooks { .. })
    ));
    // A missing directory names the file.
    let err = Codec::load(
        "/nonexistent/encodec",
        Preset::Encodec24khz,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/encodec"), "{err}");
}
