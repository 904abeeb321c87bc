//! `EspeakTts` against the real espeak-ng program (Debian package `espeak-ng`). These tests fail,
//! never skip, when it is missing: CI installs it.

use vaak_teachers::tts::{EspeakConfig, EspeakTts};
use vaak_teachers::{AudioRef, Lang, Speech, TeacherError, Tts, TtsRequest};

/// RMS below this is treated as silence (espeak-ng's speech sits around 0.05-0.2).
const MIN_RMS: f32 = 0.01;
/// Plausible length of one short sentence, in seconds.
const SHORT_SENTENCE_S: std::ops::RangeInclusive<f64> = 0.3..=10.0;

fn tts_with(cfg: EspeakConfig) -> EspeakTts {
    EspeakTts::new(cfg).unwrap_or_else(|e| {
        panic!("espeak-ng is required for these tests (Debian: apt-get install espeak-ng): {e}")
    })
}

fn tts() -> EspeakTts {
    tts_with(EspeakConfig::default())
}

fn req(text: &str, lang: Lang) -> TtsRequest<'_> {
    TtsRequest {
        text,
        lang,
        reference: None,
    }
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

fn duration(s: &Speech) -> f64 {
    s.samples.len() as f64 / s.sample_rate as f64
}

fn one(t: &EspeakTts, text: &str, lang: Lang) -> Speech {
    let mut out = t.synthesize(&[req(text, lang)]).unwrap();
    out.remove(0)
        .unwrap_or_else(|e| panic!("{lang}: {text:?}: {e}"))
}

const SENTENCES: [(Lang, &str); 4] = [
    (Lang::En, "The quick brown fox jumps over the lazy dog."),
    (Lang::Ru, "Съешь же ещё этих мягких французских булок."),
    (Lang::Hi, "आज मौसम बहुत अच्छा है।"),
    (Lang::Te, "ఈ రోజు వాతావరణం చాలా బాగుంది."),
];

#[test]
fn every_language_speaks_its_own_script_at_24_khz() {
    let t = tts();
    for lang in Lang::ALL {
        assert!(t.supports(lang));
    }
    let batch: Vec<_> = SENTENCES.iter().map(|&(l, s)| req(s, l)).collect();
    let out = t.synthesize(&batch).unwrap();
    assert_eq!(out.len(), SENTENCES.len());
    for ((lang, text), res) in SENTENCES.iter().zip(out) {
        let s = res.unwrap_or_else(|e| panic!("{lang}: {e}"));
        assert_eq!(s.sample_rate, 24_000);
        let d = duration(&s);
        let r = rms(&s.samples);
        eprintln!("{lang}: {d:.2} s, rms {r:.3}");
        assert!(SHORT_SENTENCE_S.contains(&d), "{lang} {text:?}: {d} s");
        assert!(r > MIN_RMS, "{lang}: rms {r}");
        assert!(s.samples.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    }
}

#[test]
fn batch_results_are_in_input_order_and_equal_single_calls() {
    let t = tts_with(EspeakConfig {
        max_concurrency: 3,
        ..Default::default()
    });
    let texts = [
        (Lang::En, "One."),
        (Lang::Ru, "Два, три, четыре, пять."),
        (Lang::Te, "ఒకటి రెండు"),
        (
            Lang::En,
            "This one is the longest sentence of the whole batch, by far.",
        ),
        (Lang::Hi, "छह"),
        (Lang::En, "One."),
    ];
    let batch: Vec<_> = texts.iter().map(|&(l, s)| req(s, l)).collect();
    let out: Vec<Speech> = t
        .synthesize(&batch)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, &(lang, text)) in texts.iter().enumerate() {
        assert_eq!(out[i].samples, one(&t, text, lang).samples, "item {i}");
    }
    assert_eq!(out[0].samples, out[5].samples, "espeak-ng is deterministic");
    assert_ne!(out[0].samples, out[1].samples);
}

#[test]
fn longer_text_gives_longer_audio_and_rate_changes_speed() {
    let t = tts();
    let short = one(&t, "Hello.", Lang::En);
    let long = one(
        &t,
        "Hello. This is a much longer sentence, with many more words in it, so it takes longer to say.",
        Lang::En,
    );
    assert!(
        duration(&long) > 2.5 * duration(&short),
        "{} vs {}",
        duration(&long),
        duration(&short)
    );
    let text = "Speaking rate is measured in words per minute.";
    let slow = one(
        &tts_with(EspeakConfig {
            rate_wpm: 120,
            ..Default::default()
        }),
        text,
        Lang::En,
    );
    let fast = one(
        &tts_with(EspeakConfig {
            rate_wpm: 300,
            ..Default::default()
        }),
        text,
        Lang::En,
    );
    assert!(duration(&slow) > 1.5 * duration(&fast));
    let high = one(
        &tts_with(EspeakConfig {
            pitch: 90,
            ..Default::default()
        }),
        text,
        Lang::En,
    );
    assert_ne!(high.samples, one(&t, text, Lang::En).samples);
}

#[test]
fn output_rate_is_configurable() {
    let text = "Resampled output.";
    let a = one(&tts(), text, Lang::En);
    let b = one(
        &tts_with(EspeakConfig {
            output_rate: 16_000,
            ..Default::default()
        }),
        text,
        Lang::En,
    );
    assert_eq!(b.sample_rate, 16_000);
    // Same speech, two rates: lengths scale by 16/24 (to a frame of rounding).
    let want = (a.samples.len() as f64 * 16.0 / 24.0).round() as i64;
    assert!((b.samples.len() as i64 - want).abs() <= 1);
}

#[test]
fn text_that_looks_like_options_is_spoken_not_parsed() {
    let t = tts();
    for text in [
        "-v xx --help",
        "--version",
        "-w /tmp/x.wav -s 80",
        "[[h@l'oU]] -q",
    ] {
        let s = one(&t, text, Lang::En);
        assert!(rms(&s.samples) > MIN_RMS, "{text:?}");
        assert!(duration(&s) > 0.5, "{text:?}: {} s", duration(&s));
    }
}

#[test]
fn empty_text_is_a_per_item_error() {
    let t = tts();
    let out = t
        .synthesize(&[
            req("Fine.", Lang::En),
            req("", Lang::Ru),
            req(" \n\t", Lang::Hi),
            req("...", Lang::En),
            req("Хорошо.", Lang::Ru),
        ])
        .unwrap();
    assert!(out[0].is_ok() && out[4].is_ok());
    for i in [1, 2, 3] {
        match &out[i] {
            Err(TeacherError::BadInput(m)) => assert!(m.contains(&format!("item {i}")), "{m}"),
            other => panic!("item {i}: expected BadInput, got {other:?}"),
        }
    }
}

#[test]
fn reference_audio_is_ignored_by_the_base_voice() {
    let t = tts();
    let noise: Vec<f32> = (0..16_000)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let with_ref = TtsRequest {
        text: "Same voice either way.",
        lang: Lang::En,
        reference: Some(AudioRef::new(&noise, 16_000)),
    };
    let out = t
        .synthesize(&[with_ref, req("Same voice either way.", Lang::En)])
        .unwrap();
    assert_eq!(
        out[0].as_ref().unwrap().samples,
        out[1].as_ref().unwrap().samples
    );
}

#[test]
fn model_id_carries_the_program_version() {
    let t = tts();
    let id = t.model_id();
    assert_eq!(id.name, "espeak-ng");
    let rev = id.revision.unwrap();
    let out = std::process::Command::new("espeak-ng")
        .arg("--version")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        rev.starts_with(|c: char| c.is_ascii_digit()) && printed.contains(&format!(": {rev} ")),
        "{rev:?} vs {printed:?}"
    );
    assert_eq!(t.version(), rev);
}

#[test]
fn a_bad_voice_fails_at_construction_naming_language_and_voice() {
    let mut cfg = EspeakConfig::default();
    cfg.voices.te = "xx-no-such-voice".into();
    let e = EspeakTts::new(cfg).unwrap_err().to_string();
    assert!(
        e.contains("voices.te") && e.contains("xx-no-such-voice") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_missing_program_names_the_debian_package() {
    let e = EspeakTts::new(EspeakConfig {
        program: "/nonexistent/bin/espeak-ng".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("/nonexistent/bin/espeak-ng") && e.contains("apt-get install espeak-ng"),
        "{e}"
    );
}

/// A stand-in for espeak-ng that hangs or fails on cue and otherwise hands over to the real one.
#[cfg(unix)]
const FAKE_ESPEAK: &str = r#"#!/bin/sh
if [ "$1" = "--version" ]; then exec espeak-ng --version; fi
text=$(cat)
case "$text" in
  "hang here") exec sleep 30 ;;
  "fail here") echo "synthetic failure for the test" >&2; exit 3 ;;
esac
printf '%s' "$text" | exec espeak-ng "$@"
"#;

#[cfg(unix)]
#[test]
fn a_failing_or_hanging_process_fails_only_its_item() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("fake-espeak-ng");
    std::fs::write(&program, FAKE_ESPEAK).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = EspeakConfig {
        program: program.clone(),
        timeout_ms: 3_000,
        max_concurrency: 3,
        ..Default::default()
    };
    // Another test's fork may briefly hold the new script open for writing ("Text file busy").
    let mut attempt = 0;
    let t = loop {
        match EspeakTts::new(cfg.clone()) {
            Err(e) if e.to_string().contains("busy") && attempt < 50 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let out = t
        .synthesize(&[
            req("This one is fine.", Lang::En),
            req("hang here", Lang::En),
            req("fail here", Lang::En),
        ])
        .unwrap();
    assert!(rms(&out[0].as_ref().unwrap().samples) > MIN_RMS);
    let hang = out[1].as_ref().unwrap_err().to_string();
    assert!(
        hang.contains("item 1") && hang.contains("timeout_ms = 3000"),
        "{hang}"
    );
    let fail = out[2].as_ref().unwrap_err().to_string();
    assert!(
        fail.contains("item 2")
            && fail.contains("exit status: 3")
            && fail.contains("synthetic failure for the test"),
        "{fail}"
    );
}
