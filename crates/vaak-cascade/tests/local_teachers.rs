//! The local translators (`m2m100`, `nllb`, `marian`) and the voice-preserving TTS
//! (`espeak+openvoice`) wired into the cascade from config: end-to-end runs over espeak-ng
//! speech with the tiny random fixtures in their published layouts, plus the factory's refusals
//! (unknown option keys, bad values, languages or directions a checkpoint cannot serve).

use std::path::{Path, PathBuf};

use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_cascade::builtin::BuiltinTeachers;
use vaak_cascade::config::ModelSpec;
use vaak_cascade::{run_invocation, Invocation, Outcome, Overrides, TeacherFactory};
use vaak_teachers::tts::{EspeakConfig, EspeakTts};
use vaak_teachers::{Lang, Tts, TtsRequest};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data");

fn fixture(rel: &str) -> String {
    PathBuf::from(FIXTURES).join(rel).display().to_string()
}

fn m2m_dir() -> String {
    fixture("mt_m2m100/e2e_m2m")
}
fn nllb_dir() -> String {
    fixture("mt_m2m100/e2e_nllb")
}
fn marian_dir() -> String {
    fixture("mt_marian/opus-tiny")
}
fn converter_dir() -> String {
    fixture("openvoice/converter")
}

fn spec(kind: &str, weights: Option<&str>, options: &str) -> ModelSpec {
    ModelSpec {
        kind: kind.into(),
        weights: weights.map(Into::into),
        revision: None,
        options: serde_yaml::from_str(options).unwrap(),
    }
}

fn err_of<T>(r: Result<T, String>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// Espeak-ng clips short enough for the tiny Whisper's 2 s window, under `data/<lang>/`.
fn speak_clips(data: &Path, lang: Lang, texts: &[&str]) -> Vec<(String, f64)> {
    let tts = EspeakTts::new(EspeakConfig {
        rate_wpm: 260,
        output_rate: 16_000,
        ..EspeakConfig::default()
    })
    .expect("espeak-ng is installed (apt-get install espeak-ng)");
    let reqs: Vec<TtsRequest> = texts
        .iter()
        .map(|t| TtsRequest {
            text: t,
            lang,
            reference: None,
        })
        .collect();
    std::fs::create_dir_all(data.join(lang.code())).unwrap();
    tts.synthesize(&reqs)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.unwrap();
            assert!(s.samples.len() < 32_000, "clip {i} is longer than 2 s");
            let rel = format!("{lang}/clip_{i}.wav");
            write_wav(data.join(&rel), &s.samples, 16_000, WavFormat::Pcm16).unwrap();
            (rel, s.samples.len() as f64 / 16_000.0)
        })
        .collect()
}

/// A run config with `translator` and `tts` given as YAML blocks (indented under `models`).
fn config(root: &Path, lang: Lang, direction: &str, translator: &str, tts: &str) -> String {
    let q = |p: PathBuf| format!("'{}'", p.display());
    format!(
        r#"data_root: {data}
output_root: {out}
manifests:
  {lang}: {manifest}
pipeline:
  min_duration: 0.1
  max_duration: 20.0
  direction: {direction}
  tier: Gold
compute:
  num_workers: 2
  device: cpu
  log_interval: 2
  progress_bar: false
# The clips stay under 2 s to keep the test fast; accept them as voice references.
quality:
  min_reference_s: 0.3
models:
  asr:
    kind: whisper
    weights: {whisper}
  translator:
{translator}
  speaker:
    kind: ecapa
    weights: {ecapa}
  tts:
{tts}
  codec:
    kind: encodec
    weights: {encodec}
    options: {{bandwidth: 9.0}}
"#,
        data = q(root.join("data")),
        out = q(root.join("out")),
        manifest = q(root.join("manifest.csv")),
        whisper = q(PathBuf::from(FIXTURES).join("whisper/tiny80")),
        ecapa = q(PathBuf::from(FIXTURES).join("ecapa/model")),
        encodec = q(PathBuf::from(FIXTURES).join("codec/encodec")),
    )
}

const ESPEAK: &str = "    kind: espeak\n    weights: null";

/// Runs the cascade over espeak-ng speech of `texts` and checks every sample is complete and
/// credited to the configured translator (`tr_name`) and TTS (`tts_name`).
fn run_cascade(
    lang: Lang,
    direction: &str,
    texts: &[&str],
    translator: &str,
    tts: &str,
    tr_name: &str,
    tts_name: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let clips = speak_clips(&root.join("data"), lang, texts);
    let mut csv = String::from("id,lang,dataset,split,audio_path,duration_s,text,tier\n");
    for (i, (rel, dur)) in clips.iter().enumerate() {
        csv.push_str(&format!("s{i},{lang},t,train,{rel},{dur:.3},x,Gold\n"));
    }
    std::fs::write(root.join("manifest.csv"), csv).unwrap();
    let cfg_path = root.join("config.yaml");
    std::fs::write(&cfg_path, config(root, lang, direction, translator, tts)).unwrap();
    let inv = Invocation {
        config: Some(cfg_path),
        lang: Some(lang),
        overrides: Overrides::default(),
        ..Default::default()
    };
    let Outcome::Ran(s) = run_invocation(&inv, &BuiltinTeachers, |_| None).unwrap() else {
        panic!("expected a run")
    };
    assert_eq!(s.ok + s.bad, clips.len(), "{s:?}");
    assert_eq!(s.errored, 0, "{s:?}");

    let mut translated = 0;
    for d in std::fs::read_dir(root.join("out/data/parallel").join(direction)).unwrap() {
        let d = d.unwrap().path();
        for f in ["DONE", "meta.json", "tgt.txt", "tgt.wav", "tokens.npy"] {
            assert!(d.join(f).is_file(), "{} lacks {f}", d.display());
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["tgt_lang"], &direction[2..]);
        let models = &meta["models"];
        assert!(
            models["translator"].to_string().contains(tr_name),
            "{models}"
        );
        assert!(models["tts"].to_string().contains(tts_name), "{models}");
        let tgt = std::fs::read_to_string(d.join("tgt.txt")).unwrap();
        if !tgt.trim().is_empty() {
            translated += 1;
            let wav = decode_file(d.join("tgt.wav"), None).unwrap();
            assert_eq!(wav.sample_rate, 24_000);
            assert!(wav.samples.len() > 2_400, "speech, not silence");
            assert!(wav.samples.iter().all(|v| v.is_finite()));
        }
    }
    assert!(translated > 0, "no sample got a translation");
}

#[test]
fn m2m100_translates_and_openvoice_speaks_in_the_source_voice() {
    run_cascade(
        Lang::En,
        "enru",
        &["hello there", "good morning"],
        &format!(
            "    kind: m2m100\n    weights: '{}'\n    options: {{num_beams: 2, \
             length_penalty: 1.0, max_length: 12, batch_size: 2, allow_truncated: true}}",
            m2m_dir()
        ),
        &format!(
            "    kind: espeak+openvoice\n    weights: '{}'\n    options: {{tau: 0.3, seed: 7, \
             min_reference_s: 0.2, base: {{rate_wpm: 220}}}}",
            converter_dir()
        ),
        "e2e_m2m",
        "openvoice",
    );
}

#[test]
fn nllb_translates_english_to_hindi() {
    run_cascade(
        Lang::En,
        "enhi",
        &["one two three", "thank you"],
        &format!(
            "    kind: nllb\n    weights: '{}'\n    options: {{max_length: 10, allow_truncated: true}}",
            nllb_dir()
        ),
        ESPEAK,
        "e2e_nllb",
        "espeak",
    );
}

#[test]
fn marian_translates_its_own_pair() {
    run_cascade(
        Lang::Ru,
        "ruen",
        &["привет", "спасибо"],
        &format!(
            "    kind: marian\n    weights: '{}'\n    options: {{max_length: 12, batch_size: 4}}",
            marian_dir()
        ),
        ESPEAK,
        "opus-tiny",
        "espeak",
    );
}

#[test]
fn a_direction_the_translator_cannot_serve_fails_before_any_audio() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // No clips at all: the run must fail while the teachers are built.
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(
        root.join("manifest.csv"),
        "id,lang,dataset,split,audio_path,duration_s,text,tier\n",
    )
    .unwrap();
    let cases = [
        (
            Lang::En,
            "enru",
            format!("    kind: marian\n    weights: '{}'", marian_dir()),
            &["ru->en", "en->ru"][..],
        ),
        (
            Lang::En,
            "ente",
            format!("    kind: m2m100\n    weights: '{}'", m2m_dir()),
            &[
                "'te'",
                "__te__",
                "en (__en__)",
                "ru (__ru__)",
                "hi (__hi__)",
            ][..],
        ),
    ];
    for (lang, direction, tr, needles) in cases {
        let cfg_path = root.join("config.yaml");
        std::fs::write(&cfg_path, config(root, lang, direction, &tr, ESPEAK)).unwrap();
        let inv = Invocation {
            config: Some(cfg_path),
            lang: Some(lang),
            ..Default::default()
        };
        let e = match run_invocation(&inv, &BuiltinTeachers, |_| None) {
            Ok(_) => panic!("{direction}: the run must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("translator"), "{e}");
        for n in needles {
            assert!(e.contains(n), "{direction}: '{n}' not in: {e}");
        }
        assert!(!root.join("out/data").exists(), "nothing is written");
    }
}

#[test]
fn each_kind_builds_and_serves_its_languages() {
    let f = BuiltinTeachers;
    let m2m = f
        .translator_for(
            &spec("m2m100", Some(&m2m_dir()), "{}"),
            &candle_core::Device::Cpu,
            Lang::Ru,
            Lang::En,
        )
        .unwrap();
    assert!(m2m.supports(Lang::Hi) && !m2m.supports(Lang::Te));
    let nllb = f
        .translator_for(
            &spec("nllb", Some(&nllb_dir()), "{}"),
            &candle_core::Device::Cpu,
            Lang::En,
            Lang::Te,
        )
        .unwrap();
    assert!(Lang::ALL.into_iter().all(|l| nllb.supports(l)));
    let marian = f
        .translator(
            &spec("marian", Some(&marian_dir()), "{}"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert!(marian.supports(Lang::Ru) && marian.supports(Lang::En) && !marian.supports(Lang::Hi));
    let tts = f
        .tts(
            &spec("espeak+openvoice", Some(&converter_dir()), "{tau: 0.0}"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
    assert!(Lang::ALL.into_iter().all(|l| tts.supports(l)));
    assert!(tts.model_id().name.contains("openvoice"));
}

#[test]
fn the_kind_must_match_the_checkpoint() {
    let f = BuiltinTeachers;
    let e = err_of(f.translator(
        &spec("m2m100", Some(&nllb_dir()), "{}"),
        &candle_core::Device::Cpu,
    ));
    assert!(e.contains("use kind 'nllb'"), "{e}");
    let e = err_of(f.translator(
        &spec("nllb", Some(&m2m_dir()), "{}"),
        &candle_core::Device::Cpu,
    ));
    assert!(e.contains("use kind 'm2m100'"), "{e}");
    let e = err_of(f.translator(&spec("marian", None, "{}"), &candle_core::Device::Cpu));
    assert!(e.contains("models.translator.weights is required"), "{e}");
    let e = err_of(f.translator(&spec("deepl", None, "{}"), &candle_core::Device::Cpu));
    assert!(
        e.contains("deepl") && e.contains("m2m100, nllb, marian"),
        "{e}"
    );
    let e = err_of(f.tts(
        &spec("espeak+openvoice", None, "{}"),
        &candle_core::Device::Cpu,
    ));
    assert!(e.contains("models.tts.weights is required"), "{e}");
}

#[test]
fn bad_options_are_refused_by_name() {
    let f = BuiltinTeachers;
    let m2m = m2m_dir();
    let marian = marian_dir();
    let conv = converter_dir();
    let tr_cases = [
        ("m2m100", &m2m, "{beam_size: 4}", "beam_size"),
        (
            "nllb",
            &nllb_dir(),
            "{num_beams: 0}",
            "options.num_beams is 0",
        ),
        ("m2m100", &m2m, "{max_length: 1}", "options.max_length is 1"),
        ("m2m100", &m2m, "{dtype: f8}", "options.dtype 'f8'"),
        ("m2m100", &m2m, "{length_penalty: .nan}", "length_penalty"),
        // Marian decodes greedily: beams are not an option there.
        ("marian", &marian, "{num_beams: 2}", "num_beams"),
        (
            "marian",
            &marian,
            "{batch_size: 0}",
            "options.batch_size is 0",
        ),
        ("marian", &marian, "{pair: ru-xx}", "options.pair 'ru-xx'"),
    ];
    for (kind, w, opts, needle) in tr_cases {
        let e = err_of(f.translator(&spec(kind, Some(w), opts), &candle_core::Device::Cpu));
        assert!(
            e.contains("models.translator.options"),
            "{kind} {opts}: {e}"
        );
        assert!(e.contains(needle), "{kind} {opts}: '{needle}' not in {e}");
    }
    let tts_cases = [
        ("{tua: 0.5}", "tua"),
        ("{tau: -1.0}", "tau"),
        ("{base: {rate: 100}}", "rate"),
        ("{calibration_texts: {fr: bonjour}}", "fr"),
    ];
    for (opts, needle) in tts_cases {
        let e = err_of(f.tts(
            &spec("espeak+openvoice", Some(&conv), opts),
            &candle_core::Device::Cpu,
        ));
        assert!(e.contains("models.tts.options"), "{opts}: {e}");
        assert!(e.contains(needle), "{opts}: '{needle}' not in {e}");
    }
    // Devices are parsed once, before any factory sees them (vaak_nn::parse_device).
    let e = vaak_nn::parse_device("tpu").unwrap_err().to_string();
    assert!(e.contains("tpu"), "{e}");
}

#[test]
fn a_marian_pair_option_overrides_the_checkpoint_and_must_match_the_run() {
    let f = BuiltinTeachers;
    // The fixture's tokenizer_config says ru->en; an explicit pair wins (for checkpoints that
    // say nothing), and the run's direction is checked against it.
    let s = spec("marian", Some(&marian_dir()), "{pair: enru}");
    assert!(f
        .translator_for(&s, &candle_core::Device::Cpu, Lang::En, Lang::Ru)
        .is_ok());
    let e = err_of(f.translator_for(&s, &candle_core::Device::Cpu, Lang::Ru, Lang::En));
    assert!(e.contains("en->ru only") && e.contains("ru->en"), "{e}");
}
