//! The cascade end to end with REAL teachers: Whisper, ECAPA and EnCodec from their tiny
//! random fixtures in the published layouts, espeak-ng (Debian's) speaking the source clips and
//! the targets, and the OpenAI-compatible client talking to a real HTTP server on 127.0.0.1.
//! Each manifest (Russian in Golos' column order, English in People's Speech's) mixes espeak-ng
//! speech with broken rows; the run must produce the exact
//! per-sample layout for the good ones, log the broken ones, and resume without redoing work.

use std::path::{Path, PathBuf};

use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_cascade::builtin::BuiltinTeachers;
use vaak_cascade::{run_invocation, Invocation, Outcome, Overrides};
use vaak_data::npy;
use vaak_teachers::mt::loopback::{LoopbackChatServer, TAG};
use vaak_teachers::tts::{EspeakConfig, EspeakTts};
use vaak_teachers::{Lang, Tts, TtsRequest};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data");

/// Clips short enough for the tiny Whisper's 2 s window, under `data/<lang>/`.
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
    let out = tts.synthesize(&reqs).unwrap();
    std::fs::create_dir_all(data.join(lang.code())).unwrap();
    out.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.unwrap();
            assert!(s.samples.len() < 32_000, "clip {i} is longer than 2 s");
            // Backslashes, as Windows-made manifests have them.
            let rel = format!("{lang}\\clip_{i}.wav");
            write_wav(
                data.join(lang.code()).join(format!("clip_{i}.wav")),
                &s.samples,
                16_000,
                WavFormat::Pcm16,
            )
            .unwrap();
            (rel, s.samples.len() as f64 / 16_000.0)
        })
        .collect()
}

fn config(root: &Path, server: &str, lang: Lang, direction: &str) -> String {
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
models:
  asr:
    kind: whisper
    weights: {whisper}
  translator:
    kind: openai
    weights: null
    options: {{base_url: '{server}', model: test-mt, api_key: test-key, max_retries: 0}}
  speaker:
    kind: ecapa
    weights: {ecapa}
  tts:
    kind: espeak
    weights: null
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

/// Manifest lines in each corpus's own column order (Golos for ru, People's Speech for en), with
/// an extra column, then broken rows: an empty file, a text file, a path out of `data_root`, and
/// a row of another tier.
fn manifest(lang: Lang, clips: &[(String, f64)], data: &Path) -> String {
    std::fs::write(data.join("empty.wav"), b"").unwrap();
    std::fs::write(data.join("notes.wav"), "not audio").unwrap();
    let first = &clips[0].0;
    let mut rows: Vec<(String, String, f64, &str)> = clips
        .iter()
        .enumerate()
        .map(|(i, (rel, dur))| (format!("corpus/{i} крупно"), rel.clone(), *dur, "Gold"))
        .collect();
    rows.push(("broken-empty".into(), "empty.wav".into(), 1.0, "Gold"));
    rows.push(("broken-text".into(), "notes.wav".into(), 1.0, "Gold"));
    rows.push(("escape".into(), "../../etc/passwd".into(), 1.0, "Gold"));
    rows.push(("silver".into(), first.clone(), clips[0].1, "Silver"));
    let l = lang.code();
    let mut csv = match lang {
        Lang::En => "id,lang,dataset,split,tier,tier_rank,audio_path,duration_s,text,speaker\n",
        _ => "id,lang,dataset,split,audio_path,duration_s,text,tier,tier_rank,speaker\n",
    }
    .to_string();
    for (id, rel, dur, tier) in rows {
        csv.push_str(&match lang {
            Lang::En => format!("{id},{l},ps,train,{tier},1,{rel},{dur:.3},text,s\n"),
            _ => format!("{id},{l},golos,train,{rel},{dur:.3},text,{tier},1,s\n"),
        });
    }
    csv
}

fn run_direction(lang: Lang, direction: &str, texts: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    let clips = speak_clips(&data, lang, texts);
    std::fs::write(root.join("manifest.csv"), manifest(lang, &clips, &data)).unwrap();

    let server = LoopbackChatServer::start().unwrap();
    let cfg_path = root.join("config.yaml");
    std::fs::write(&cfg_path, config(root, server.base_url(), lang, direction)).unwrap();
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
    assert_eq!(s.errored, 3, "{s:?}");
    assert_eq!(s.filtered, 1, "{s:?}");
    let log = std::fs::read_to_string(&s.errors_log).unwrap();
    for id in ["broken-empty", "broken-text", "escape"] {
        assert!(log.contains(id), "{id} not in the error log:\n{log}");
    }

    let dirs: Vec<PathBuf> = std::fs::read_dir(root.join("out/data/parallel").join(direction))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), clips.len(), "{dirs:?}");
    let mut translated = 0;
    for d in &dirs {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "DONE",
                "meta.json",
                "spk.npy",
                "src.txt",
                "src.wav",
                "tgt.txt",
                "tgt.wav",
                "tokens.npy"
            ],
            "{}",
            d.display()
        );
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["src_lang"], lang.code());
        assert_eq!(meta["tgt_lang"], &direction[2..]);
        assert_eq!(
            meta["manifest"]["speaker"], "s",
            "extra manifest columns are kept"
        );
        let spk = npy::read_npy(&d.join("spk.npy")).unwrap();
        assert_eq!(spk.shape, vec![24], "tiny ECAPA's lin_neurons");
        assert!(spk.to_f32().unwrap().iter().all(|v| v.is_finite()));
        // A random tiny Whisper is unsure of every token, so its transcripts carry
        // `asr:low_logprob` and the samples are `bad`; the files are complete either way.
        let flags = meta["quality_flags"].to_string();
        assert!(meta["status"] == "ok" || flags.contains("asr:"), "{meta}");
        let tgt_text = std::fs::read_to_string(d.join("tgt.txt")).unwrap();
        if !tgt_text.is_empty() {
            translated += 1;
            let tgt = std::fs::read_to_string(d.join("tgt.txt")).unwrap();
            assert!(tgt.starts_with(TAG), "{tgt}");
            let wav = decode_file(d.join("tgt.wav"), None).unwrap();
            assert_eq!(wav.sample_rate, 24_000);
            assert!(wav.samples.len() > 2_400, "espeak-ng speech, not silence");
            let tokens = npy::read_npy(&d.join("tokens.npy")).unwrap();
            assert_eq!(
                tokens.shape[0], 1,
                "the tiny EnCodec's 9 kbps is one codebook"
            );
            assert_eq!(meta["tokens_shape"], serde_json::json!(tokens.shape));
            assert!(tokens.shape[1] > 0);
            assert!(tokens
                .to_i64()
                .unwrap()
                .iter()
                .all(|&c| (0..64).contains(&c)));
        }
        for key in ["models", "timings_s"] {
            assert!(meta.get(key).is_some(), "meta.json lacks {key}: {meta}");
        }
    }
    let requests = server.requests();
    assert_eq!(
        requests, translated,
        "one request per sample with a transcript"
    );
    assert!(translated > 0, "no transcript reached the translator");

    // A second run resumes: everything is skipped, no model call is repeated.
    let Outcome::Ran(s2) = run_invocation(&inv, &BuiltinTeachers, |_| None).unwrap() else {
        panic!("expected a run")
    };
    assert_eq!(s2.skipped, clips.len(), "{s2:?}");
    assert_eq!(s2.ok + s2.bad, 0);
    assert_eq!(server.requests(), requests);
}

#[test]
fn russian_golos_layout_to_english() {
    run_direction(
        Lang::Ru,
        "ruen",
        &["привет", "добрый день", "один два три", "спасибо большое"],
    );
}

#[test]
fn english_peoples_speech_layout_to_russian() {
    run_direction(
        Lang::En,
        "enru",
        &["hello", "good morning", "one two three"],
    );
}
