//! Parity of the OpenVoice V2 tone-colour converter with openvoice-cli 0.0.5, on the tiny random
//! converter made by `tools/fixtures/openvoice.py` (published `converter/` layout, weight norm
//! as weight_g/weight_v, float16 tensors).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use vaak_teachers::vc::{
    ConvertItem, ConverterOptions, OpenVoiceConfig, ToneColorConverter, CONFIG_FILE,
};
use vaak_teachers::{AudioRef, SpeakerEncoder, TeacherError};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/openvoice"
);

/// Linear spectrogram vs `spectrogram_torch` (values up to ~20).
const SPEC_TOL: f32 = 1e-4;
/// Tone-colour embedding vs `extract_se`.
const SE_TOL: f32 = 1e-4;
/// Converted waveform vs `ToneColorConverter.convert` with the same noise.
const WAV_TOL: f32 = 1e-4;
const TAU: f32 = 0.3;

struct Fixture {
    t: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let t =
            candle_core::safetensors::load(format!("{DIR}/openvoice.safetensors"), &Device::Cpu)
                .expect("fixture");
        Self { t }
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.t[name]
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// int16 PCM clips as floats.
    fn clip(&self, name: &str) -> Vec<f32> {
        self.f32s(name).iter().map(|v| v / 32768.0).collect()
    }
}

fn converter() -> ToneColorConverter {
    ToneColorConverter::load(&format!("{DIR}/converter"), &ConverterOptions::default())
        .expect("load converter")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn std(x: &[f32]) -> f32 {
    let m = x.iter().sum::<f32>() / x.len() as f32;
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / x.len() as f32).sqrt()
}

const SR: u32 = 22050;

#[test]
fn config_loads_as_published_and_bad_configs_name_the_problem() {
    let cfg =
        OpenVoiceConfig::from_file(&Path::new(DIR).join("converter").join(CONFIG_FILE)).unwrap();
    assert_eq!(cfg.version.as_deref(), Some("v2"));
    assert!(cfg.model.zero_g);
    assert_eq!(cfg.spec_channels(), 33);
    assert_eq!(cfg.data.sampling_rate, SR);

    let text = std::fs::read_to_string(Path::new(DIR).join("converter").join(CONFIG_FILE)).unwrap();
    let bad = text.replace("\"n_speakers\": 0", "\"n_speakers\": 4");
    let err = OpenVoiceConfig::parse(&bad, Path::new("x/config.json")).unwrap_err();
    assert!(err.to_string().contains("n_speakers"), "{err}");
    assert!(err.to_string().contains("x/config.json"), "{err}");
    let bad = text.replace("\"resblock\": \"1\"", "\"resblock\": \"3\"");
    let err = OpenVoiceConfig::parse(&bad, Path::new("c.json")).unwrap_err();
    assert!(err.to_string().contains("resblock"), "{err}");
    let bad = text.replace("\"hop_length\"", "\"hop\"");
    let err = OpenVoiceConfig::parse(&bad, Path::new("c.json")).unwrap_err();
    assert!(err.to_string().contains("hop_length"), "{err}");

    let err =
        ToneColorConverter::load(&format!("{DIR}/nope"), &ConverterOptions::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn spectrogram_matches_spectrogram_torch() {
    let fx = Fixture::load();
    let conv = converter();
    let spec = conv.spectrogram(&fx.clip("src")).unwrap();
    let want = &fx.t["spec_src"];
    assert_eq!(spec.dims()[1..], want.dims()[..]);
    let got: Vec<f32> = spec.flatten_all().unwrap().to_vec1().unwrap();
    let err = max_abs_diff(&got, &fx.f32s("spec_src"));
    eprintln!("spectrogram max abs err {err:.3e}");
    assert!(err < SPEC_TOL, "spectrogram max abs err {err}");
}

#[test]
fn extract_se_matches_reference() {
    let fx = Fixture::load();
    let conv = converter();
    let src = fx.clip("src");
    let (a, b) = (fx.clip("tgt_a"), fx.clip("tgt_b"));
    let se_src = conv.extract_se(&[AudioRef::new(&src, SR)]).unwrap();
    let se_tgt = conv
        .extract_se(&[AudioRef::new(&a, SR), AudioRef::new(&b, SR)])
        .unwrap();
    let e1 = max_abs_diff(&se_src, &fx.f32s("se_src"));
    let e2 = max_abs_diff(&se_tgt, &fx.f32s("se_tgt"));
    eprintln!("extract_se max abs err: one clip {e1:.3e}, mean of two {e2:.3e}");
    assert!(e1 < SE_TOL && e2 < SE_TOL, "{e1} {e2}");
    // Non-vacuous: the embeddings differ between voices by far more than the tolerance.
    assert!(max_abs_diff(&se_src, &se_tgt) > 10.0 * SE_TOL);

    // The SpeakerEncoder view gives per-clip embeddings whose mean is extract_se.
    let per = conv
        .embed(&[
            AudioRef::new(&a, SR),
            AudioRef::new(&b, SR),
            AudioRef::new(&a[..10], SR),
        ])
        .unwrap();
    let (ea, eb) = (per[0].as_ref().unwrap(), per[1].as_ref().unwrap());
    let mean: Vec<f32> = ea.iter().zip(eb).map(|(x, y)| (x + y) / 2.0).collect();
    assert!(max_abs_diff(&mean, &se_tgt) < 1e-6);
    assert!(matches!(&per[2], Err(TeacherError::BadInput(m)) if m.starts_with("item 2")));
}

#[test]
fn convert_with_fixed_noise_matches_reference_with_and_without_zero_g() {
    let fx = Fixture::load();
    let mut conv = converter();
    let src = fx.clip("src");
    let (se_src, se_tgt) = (fx.f32s("se_src"), fx.f32s("se_tgt"));
    let noise = fx.t["noise"].clone();
    let src_ref = AudioRef::new(&src, SR);
    assert_eq!(noise.dims(), [4, conv.n_frames(src.len())]);

    let out = conv
        .convert_with_noise(src_ref, &se_src, &se_tgt, TAU, &noise)
        .unwrap();
    let want = fx.f32s("out_zero_g");
    let err = max_abs_diff(&out, &want);
    eprintln!(
        "convert (zero_g) max abs err {err:.3e}, ref std {:.3e}",
        std(&want)
    );
    assert!(err < WAV_TOL, "{err}");
    assert!(
        std(&want) > 100.0 * WAV_TOL,
        "reference output is near silent"
    );

    conv.set_zero_g(false);
    let out_g = conv
        .convert_with_noise(src_ref, &se_src, &se_tgt, TAU, &noise)
        .unwrap();
    let want_g = fx.f32s("out_g");
    let err_g = max_abs_diff(&out_g, &want_g);
    eprintln!("convert (g) max abs err {err_g:.3e}");
    assert!(err_g < WAV_TOL, "{err_g}");
    // zero_g changes the output well beyond the tolerance, so both paths are exercised.
    assert!(max_abs_diff(&want, &want_g) > 10.0 * WAV_TOL);
}

#[test]
fn seeded_convert_is_deterministic_and_batches_keep_going() {
    let fx = Fixture::load();
    let conv = converter();
    let src = fx.clip("src");
    let (se_src, se_tgt) = (fx.f32s("se_src"), fx.f32s("se_tgt"));
    let r = AudioRef::new(&src, SR);
    let a = conv.convert(r, &se_src, &se_tgt, TAU, 1).unwrap();
    let b = conv.convert(r, &se_src, &se_tgt, TAU, 1).unwrap();
    let c = conv.convert(r, &se_src, &se_tgt, TAU, 2).unwrap();
    assert_eq!(a, b);
    assert!(max_abs_diff(&a, &c) > 0.0);
    assert_eq!(a.len(), conv.n_frames(src.len()) * conv.samples_per_frame());
    // tau = 0 removes the noise, so seeds no longer matter.
    let z1 = conv.convert(r, &se_src, &se_tgt, 0.0, 1).unwrap();
    let z2 = conv.convert(r, &se_src, &se_tgt, 0.0, 2).unwrap();
    assert_eq!(z1, z2);

    // A 16 kHz input is resampled to the model rate first.
    let s16 = vaak_audio::resample::resample(&src, SR, 16_000).unwrap();
    let o16 = conv
        .convert(AudioRef::new(&s16, 16_000), &se_src, &se_tgt, TAU, 1)
        .unwrap();
    assert!(o16.iter().all(|v| v.is_finite()) && !o16.is_empty());

    let short = [0.1f32; 5];
    let wrong_dim = vec![0.0f32; 3];
    let items = [
        ConvertItem {
            src: r,
            src_se: &se_src,
            tgt_se: &se_tgt,
            tau: TAU,
            seed: 1,
        },
        ConvertItem {
            src: AudioRef::new(&short, SR),
            src_se: &se_src,
            tgt_se: &se_tgt,
            tau: TAU,
            seed: 1,
        },
        ConvertItem {
            src: r,
            src_se: &se_src,
            tgt_se: &wrong_dim,
            tau: TAU,
            seed: 1,
        },
        ConvertItem {
            src: r,
            src_se: &se_src,
            tgt_se: &se_tgt,
            tau: TAU,
            seed: 2,
        },
    ];
    let out = conv.convert_batch(&items);
    assert_eq!(out[0].as_ref().unwrap(), &a);
    assert!(
        matches!(&out[1], Err(TeacherError::BadInput(m)) if m.starts_with("item 1") && m.contains("too short"))
    );
    assert!(
        matches!(&out[2], Err(TeacherError::BadInput(m)) if m.starts_with("item 2") && m.contains("target"))
    );
    assert_eq!(out[3].as_ref().unwrap(), &c);

    let bad_noise = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = conv
        .convert_with_noise(r, &se_src, &se_tgt, TAU, &bad_noise)
        .unwrap_err();
    assert!(err.to_string().contains("noise"), "{err}");
}

#[test]
fn loads_from_an_offline_hub_cache_as_published() {
    // The published layout: hf://myshell-ai/OpenVoiceV2/converter/{config.json,checkpoint.pth}.
    let cache = tempfile::tempdir().unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--myshell-ai--OpenVoiceV2");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), sha).unwrap();
    let snap = repo.join("snapshots").join(sha).join("converter");
    std::fs::create_dir_all(&snap).unwrap();
    for f in [CONFIG_FILE, vaak_teachers::vc::CHECKPOINT_FILE] {
        std::fs::copy(Path::new(DIR).join("converter").join(f), snap.join(f)).unwrap();
    }
    let opts = ConverterOptions {
        device: Device::Cpu,
        hub: vaak_nn::weights::HubOptions {
            offline: true,
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
    };
    let conv = ToneColorConverter::load("hf://myshell-ai/OpenVoiceV2/converter", &opts).unwrap();
    assert_eq!(conv.id().revision.as_deref(), Some("main"));
    let fx = Fixture::load();
    let src = fx.clip("src");
    let se = conv.extract_se(&[AudioRef::new(&src, SR)]).unwrap();
    assert!(max_abs_diff(&se, &fx.f32s("se_src")) < SE_TOL);
    // A file missing from the cache is an error naming it, not a download.
    let err = ToneColorConverter::load("hf://myshell-ai/OpenVoiceV2/other", &opts).unwrap_err();
    assert!(err.to_string().contains("other/config.json"), "{err}");
}
