//! `VoiceConvertingTts`: base TTS + the tiny OpenVoice converter fixture. A scripted base TTS
//! checks batching, per-item errors and the base-embedding cache; espeak-ng checks the real
//! pairing (these tests fail, never skip, without espeak-ng, like tests/tts_espeak.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vaak_teachers::tts::{EspeakConfig, EspeakTts, VoiceConvertingTts, VoiceConvertingTtsConfig};
use vaak_teachers::vc::{ConverterOptions, ToneColorConverter};
use vaak_teachers::{
    AudioRef, ItemResult, Lang, ModelId, Result, Speech, TeacherError, Tts, TtsRequest,
};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/openvoice"
);
const BASE_RATE: u32 = 16_000;
const OUT_RATE: u32 = 24_000;

fn converter() -> Arc<ToneColorConverter> {
    Arc::new(
        ToneColorConverter::load(&format!("{DIR}/converter"), &ConverterOptions::default())
            .unwrap(),
    )
}

/// A base TTS that hums: 0.05 s per character at a pitch set by the language; fails on
/// text "FAIL". Counts requests so the cache can be checked.
#[derive(Default)]
struct Hum {
    requests: AtomicUsize,
}

fn tone(seconds: f64, f0: f64, rate: u32) -> Vec<f32> {
    let n = (seconds * rate as f64) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let x: f64 = (1..6)
                .map(|k| (2.0 * std::f64::consts::PI * f0 * k as f64 * t).sin() / k as f64)
                .sum();
            (0.3 * x * (1.0 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin())) as f32
        })
        .collect()
}

impl Tts for Hum {
    fn model_id(&self) -> ModelId {
        ModelId {
            name: "hum".into(),
            revision: None,
        }
    }

    fn supports(&self, _lang: Lang) -> bool {
        true
    }

    fn synthesize(&self, batch: &[TtsRequest<'_>]) -> Result<Vec<ItemResult<Speech>>> {
        self.requests.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.text == "FAIL" {
                    return Err(TeacherError::BadInput(format!("item {i}: cannot say that")));
                }
                let f0 = match r.lang {
                    Lang::En => 120.0,
                    Lang::Ru => 150.0,
                    Lang::Hi => 180.0,
                    Lang::Te => 210.0,
                };
                Ok(Speech {
                    samples: tone(0.05 * r.text.chars().count() as f64, f0, BASE_RATE),
                    sample_rate: BASE_RATE,
                })
            })
            .collect())
    }
}

fn req<'a>(text: &'a str, lang: Lang, reference: Option<AudioRef<'a>>) -> TtsRequest<'a> {
    TtsRequest {
        text,
        lang,
        reference,
    }
}

fn bad_input(r: &ItemResult<Speech>, item: usize, needle: &str) -> bool {
    matches!(r, Err(TeacherError::BadInput(m)) if m.starts_with(&format!("item {item}:")) && m.contains(needle))
}

#[test]
fn converts_each_item_and_bad_items_fail_alone() {
    let tts = VoiceConvertingTts::new(Hum::default(), converter(), Default::default()).unwrap();
    let voice_a = tone(1.5, 220.0, 44_100);
    let voice_b = tone(1.2, 95.0, 16_000);
    let short = tone(0.5, 220.0, 16_000);
    let silent = vec![0.0f32; 32_000];
    let a = Some(AudioRef::new(&voice_a, 44_100));
    let b = Some(AudioRef::new(&voice_b, 16_000));
    let batch = [
        req("hello there my friend", Lang::En, a),
        req("no reference", Lang::En, None),
        req("too short", Lang::En, Some(AudioRef::new(&short, 16_000))),
        req("silence", Lang::En, Some(AudioRef::new(&silent, 16_000))),
        req("privet", Lang::Ru, b),
        req("FAIL", Lang::En, a),
        req("hello there my friend", Lang::En, b),
    ];
    let out = tts.synthesize(&batch).unwrap();
    assert_eq!(out.len(), batch.len());
    for i in [0, 4, 6] {
        let s = out[i].as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert_eq!(s.sample_rate, OUT_RATE);
        let want = 0.05 * batch[i].text.chars().count() as f64;
        let got = s.samples.len() as f64 / OUT_RATE as f64;
        // The converter emits whole frames of `hop` samples at 22.05 kHz.
        assert!(
            (got - want).abs() < 0.01,
            "item {i}: {got} s, base {want} s"
        );
        assert!(s.samples.iter().all(|v| v.is_finite()));
        assert!(s.samples.iter().any(|&v| v.abs() > 1e-4));
    }
    assert!(bad_input(&out[1], 1, "no reference"));
    assert!(bad_input(&out[2], 2, "shorter than"));
    assert!(bad_input(&out[3], 3, "silent"));
    assert!(bad_input(&out[5], 5, "cannot say that"));
    // Same text and base voice, other reference: other output. (The tiny random converter's
    // embeddings are small, so the difference is small; runs are bit-exact, see below.)
    let (x, y) = (
        &out[0].as_ref().unwrap().samples,
        &out[6].as_ref().unwrap().samples,
    );
    assert_eq!(x.len(), y.len());
    let diff = x
        .iter()
        .zip(y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    eprintln!("max diff between two references: {diff:.3e}");
    assert!(diff > 0.0);
    // Invalid items never reach the base TTS: 4 valid items + 2 calibrations (en, ru).
    assert_eq!(tts.base().requests.load(Ordering::SeqCst), 6);

    // The base embeddings are cached: a second batch only synthesizes its own items, and gives
    // the same audio for the same request.
    let again = tts.synthesize(&batch[..1]).unwrap();
    assert_eq!(tts.base().requests.load(Ordering::SeqCst), 7);
    assert_eq!(again[0].as_ref().unwrap().samples, *x);
}

#[test]
fn preset_base_embedding_skips_calibration_and_config_is_checked() {
    let conv = converter();
    let dim = conv.embedding_dim();
    let tts = VoiceConvertingTts::new(Hum::default(), conv.clone(), Default::default()).unwrap();
    tts.set_base_embedding(Lang::Te, vec![0.01; dim]).unwrap();
    assert!(tts
        .set_base_embedding(Lang::Te, vec![0.0; dim + 1])
        .is_err());
    let voice = tone(1.1, 180.0, 22_050);
    let out = tts
        .synthesize(&[req(
            "namaskaram",
            Lang::Te,
            Some(AudioRef::new(&voice, 22_050)),
        )])
        .unwrap();
    assert!(out[0].is_ok());
    assert_eq!(tts.base().requests.load(Ordering::SeqCst), 1);

    let cfg = VoiceConvertingTtsConfig {
        output_rate: 0,
        ..Default::default()
    };
    let err = VoiceConvertingTts::new(Hum::default(), conv, cfg)
        .err()
        .unwrap();
    assert!(err.to_string().contains("output_rate"), "{err}");
}

#[test]
fn espeak_base_voice_is_converted() {
    let espeak = EspeakTts::new(EspeakConfig::default()).unwrap_or_else(|e| {
        panic!("espeak-ng is required for these tests (Debian: apt-get install espeak-ng): {e}")
    });
    let tts = VoiceConvertingTts::new(espeak, converter(), Default::default()).unwrap();
    let voice = tone(1.3, 200.0, 16_000);
    let out = tts
        .synthesize(&[req(
            "Good morning.",
            Lang::En,
            Some(AudioRef::new(&voice, 16_000)),
        )])
        .unwrap();
    let s = out[0].as_ref().unwrap();
    assert_eq!(s.sample_rate, OUT_RATE);
    assert!(
        s.samples.len() > OUT_RATE as usize / 4,
        "{} samples",
        s.samples.len()
    );
    assert!(s.samples.iter().all(|v| v.is_finite()));
    assert!(tts.model_id().name.starts_with("espeak-ng + openvoice-v2"));
}
