//! Whisper ASR teacher against transformers 5.23 on tiny random checkpoints
//! (`tools/fixtures/whisper_tiny.py`): encoder, decoder logits, greedy `generate` tokens,
//! tokenizer ids, and the loader's handling of published-config quirks and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use vaak_teachers::asr::{
    compression_ratio, quality_flags, LanguagePrompt, QualityThresholds, SuppressLists, WhisperAsr,
    WhisperConfig, WhisperLoadOptions, WhisperTokenizer,
};
use vaak_teachers::{Asr, AsrOptions, AudioRef, Lang, TeacherError};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tools/fixtures/data/whisper"
);
/// Encoder output vs transformers (features computed here from the same audio).
const ENCODER_TOL: f32 = 1e-4;
/// Decoder logits vs transformers.
const LOGITS_TOL: f32 = 1e-3;
/// Prompt fed at once vs token by token through the KV cache.
const CACHE_TOL: f32 = 1e-4;
/// Probabilities (no-speech) and average log-probs vs transformers.
const PROB_TOL: f32 = 1e-4;
const LOGPROB_TOL: f32 = 1e-3;
/// flate2 (miniz) vs Python's zlib at the same level may differ by a few bytes.
const RATIO_TOL: f32 = 0.15;

const MODELS: [&str; 2] = ["tiny80", "tiny128"];

fn dir(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn load(name: &str) -> WhisperAsr {
    WhisperAsr::load(dir(name).to_str().unwrap(), &WhisperLoadOptions::default()).unwrap()
}

fn audio() -> Vec<Vec<f32>> {
    let t = candle_core::safetensors::load(dir("audio.safetensors"), &Device::Cpu).unwrap();
    (0..2)
        .map(|i| t[&format!("clip{i}")].to_vec1::<f32>().unwrap())
        .collect()
}

fn reference(name: &str) -> (HashMap<String, Tensor>, Value) {
    let t =
        candle_core::safetensors::load(dir(&format!("{name}.reference.safetensors")), &Device::Cpu)
            .unwrap();
    let j = std::fs::read_to_string(dir(&format!("{name}.reference.json"))).unwrap();
    (t, serde_json::from_str(&j).unwrap())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn encode_clips(asr: &WhisperAsr, clips: &[Vec<f32>]) -> Tensor {
    let feats: Vec<Vec<f32>> = clips
        .iter()
        .map(|c| asr.features(&AudioRef::new(c, 16_000)).unwrap())
        .collect();
    asr.encode(&feats).unwrap()
}

#[test]
fn config_quirks_parse() {
    let path = dir("tiny80/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // As transformers 5 writes it: suppress_tokens null, ffn 96 != 4 * 64.
    assert!(text.contains("\"suppress_tokens\": null"));
    let cfg = WhisperConfig::from_json(&text, &path).unwrap();
    assert_eq!(cfg.suppress_tokens, None);
    assert_eq!(
        (cfg.d_model, cfg.encoder_ffn(), cfg.decoder_ffn()),
        (64, 96, 96)
    );
    assert_eq!(cfg.n_frames(), 200);

    // Without a generation config the lists come from config.json, minus out-of-vocab ids
    // (transformers' default begin_suppress_tokens is [220, 50256] whatever the vocab).
    let lists = SuppressLists::merge(&cfg, None);
    assert_eq!(lists.always, Vec::<u32>::new());
    assert_eq!(lists.at_begin, vec![220]);
    // With one, it is the only source, as in `generate`.
    let (_, r) = reference("tiny80");
    let asr = load("tiny80");
    assert_eq!(asr.suppress_lists().always, ids(&r["suppress_tokens"]));
    assert_eq!(
        asr.suppress_lists().at_begin,
        ids(&r["begin_suppress_tokens"])
    );

    // begin_suppress_tokens null and no ffn fields (older configs): 4 * d_model.
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("begin_suppress_tokens".into(), Value::Null);
    o.remove("encoder_ffn_dim");
    o.remove("decoder_ffn_dim");
    let cfg = WhisperConfig::from_json(&v.to_string(), &path).unwrap();
    assert_eq!((cfg.encoder_ffn(), cfg.decoder_ffn()), (256, 256));
    assert_eq!(SuppressLists::merge(&cfg, None), SuppressLists::default());

    // A bad field is a config error naming the file and the field.
    o_insert_bad(&mut v, &path);
}

fn o_insert_bad(v: &mut Value, path: &Path) {
    v.as_object_mut()
        .unwrap()
        .insert("d_model".into(), Value::from(63));
    let e = WhisperConfig::from_json(&v.to_string(), path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TeacherError::Config { .. }), "{msg}");
    assert!(
        msg.contains("config.json") && msg.contains("d_model"),
        "{msg}"
    );
}

#[test]
fn encoder_matches_transformers() {
    let clips = audio();
    for name in MODELS {
        let asr = load(name);
        let (r, _) = reference(name);
        let enc = encode_clips(&asr, &clips);
        let err = max_abs_diff(&enc, &r["encoder_out"]);
        println!("{name}: encoder max abs err {err:.2e}");
        assert!(err <= ENCODER_TOL, "{name}: encoder err {err}");
    }
}

#[test]
fn decoder_logits_match_transformers_and_the_cache() {
    let clips = audio();
    for name in MODELS {
        let asr = load(name);
        let (r, j) = reference(name);
        let enc = encode_clips(&asr, &clips);
        let prompt = ids(&j["prompt"]);
        let p = prompt.len();
        let model = asr.model();

        let toks = Tensor::from_vec(
            [prompt.clone(), prompt.clone()].concat(),
            (2, p),
            &Device::Cpu,
        )
        .unwrap();
        let mut cache = model.decoder_cache(&enc).unwrap();
        let logits = model.decode(&toks, &mut cache).unwrap();
        let err = max_abs_diff(&logits, &r["prompt_logits"]);
        println!("{name}: logits max abs err {err:.2e}");
        assert!(err <= LOGITS_TOL, "{name}: logits err {err}");

        // Token by token through the cache gives the same logits.
        let mut cache = model.decoder_cache(&enc).unwrap();
        let steps: Vec<Tensor> = prompt
            .iter()
            .map(|&t| {
                let x = Tensor::from_vec(vec![t, t], (2, 1), &Device::Cpu).unwrap();
                model.decode(&x, &mut cache).unwrap()
            })
            .collect();
        let stepped = Tensor::cat(&steps, 1).unwrap();
        let err = max_abs_diff(&stepped, &logits);
        println!("{name}: cached vs one-shot max abs err {err:.2e}");
        assert!(err <= CACHE_TOL, "{name}: cache err {err}");

        // No-speech probability: softmax at the <|startoftranscript|> position.
        let ns = asr.tokenizer().no_speech.unwrap() as usize;
        let first = logits.narrow(1, 0, 1).unwrap().contiguous().unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&first)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (b, want) in j["no_speech_prob"].as_array().unwrap().iter().enumerate() {
            let got = probs[b][ns];
            assert!(
                (got - want.as_f64().unwrap() as f32).abs() <= PROB_TOL,
                "{got} vs {want}"
            );
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    let clips = audio();
    for name in MODELS {
        let asr = load(name);
        let (_, j) = reference(name);
        let enc = encode_clips(&asr, &clips);
        let eot = asr.tokenizer().eot;
        // Some row must end with EOT while its batch-mate goes on (rows leaving the batch).
        let (mut ended_rows, mut cut_rows) = (0, 0);
        for case in j["cases"].as_array().unwrap() {
            let cname = case["name"].as_str().unwrap();
            let lang: Option<Lang> = case["language"].as_str().map(|s| s.parse().unwrap());
            let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
            let prompt = asr.language_prompt(lang).unwrap();
            if lang.is_none() {
                assert_eq!(prompt, LanguagePrompt::Detect);
            }
            let decoded = asr.decode(&enc, prompt, max_new).unwrap();
            let opts = AsrOptions {
                language: lang,
                max_new_tokens: max_new,
            };
            let batch: Vec<AudioRef> = clips.iter().map(|c| AudioRef::new(c, 16_000)).collect();
            let transcripts = asr.transcribe(&batch, &opts).unwrap();
            for (b, d) in decoded.iter().enumerate() {
                let mut want = ids(&case["tokens"][b]);
                let distinct: std::collections::HashSet<_> = want.iter().collect();
                assert!(
                    distinct.len() >= 3,
                    "{name}/{cname}: degenerate reference {want:?}"
                );
                let ended = want.last() == Some(&eot);
                if ended {
                    want.pop();
                }
                assert_eq!(d.tokens, want, "{name}/{cname} clip {b}");
                if ended {
                    ended_rows += 1;
                } else {
                    cut_rows += 1;
                }
                assert_eq!(d.ended, ended);
                let want_lp = case["avg_logprob"][b].as_f64().unwrap() as f32;
                assert!(
                    (d.avg_logprob - want_lp).abs() <= LOGPROB_TOL,
                    "{name}/{cname} clip {b}: avg_logprob {} vs {want_lp}",
                    d.avg_logprob
                );
                let want_lang = match case["detected"][b].as_str() {
                    Some(tok) => tok
                        .trim_start_matches("<|")
                        .trim_end_matches("|>")
                        .to_string(),
                    None => case["language"].as_str().unwrap().to_string(),
                };

                let t = transcripts[b].as_ref().unwrap();
                assert_eq!(
                    t.text,
                    case["text"][b].as_str().unwrap(),
                    "{name}/{cname} clip {b}"
                );
                assert_eq!(t.language, want_lang, "{name}/{cname} clip {b}");
                assert_eq!(t.flags.contains(&"max_length".to_string()), !ended);
                assert!((t.avg_logprob - want_lp).abs() <= LOGPROB_TOL);
                let want_ratio = case["compression_ratio"][b].as_f64().unwrap() as f32;
                assert!(
                    (t.compression_ratio - want_ratio).abs() <= RATIO_TOL,
                    "{name}/{cname} clip {b}: ratio {} vs {want_ratio}",
                    t.compression_ratio
                );
                let want_ns = j["no_speech_prob"][b].as_f64().unwrap() as f32;
                assert!((t.no_speech_prob - want_ns).abs() <= PROB_TOL);
            }
            println!(
                "{name}/{cname}: {:?}",
                decoded.iter().map(|d| &d.tokens).collect::<Vec<_>>()
            );
        }
        assert!(
            ended_rows > 0 && cut_rows > 0,
            "{name}: {ended_rows} ended, {cut_rows} cut"
        );
    }
}

#[test]
fn tokenizer_matches_python_ids_and_round_trips() {
    let tok = WhisperTokenizer::from_file(&dir("tiny80/tokenizer.json")).unwrap();
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(dir("tokenizer_ids.json")).unwrap()).unwrap();
    let mut scripts = 0;
    for item in j.as_array().unwrap() {
        let text = item["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&item["ids"]), "{text}");
        assert_eq!(tok.decode(&got).unwrap(), text);
        scripts += text.chars().any(|c| ('\u{0400}'..='\u{04FF}').contains(&c)) as usize
            + text.chars().any(|c| ('\u{0900}'..='\u{097F}').contains(&c)) as usize
            + text.chars().any(|c| ('\u{0C00}'..='\u{0C7F}').contains(&c)) as usize;
    }
    assert!(
        scripts >= 3,
        "the set must cover Cyrillic, Devanagari and Telugu"
    );
    // Special tokens are found by name, laid out as Whisper's.
    assert_eq!(tok.sot, tok.eot + 1);
    assert_eq!(tok.language_token("en"), Some(tok.sot + 1));
    assert!(tok.no_speech.is_some() && tok.no_timestamps == tok.no_speech.unwrap() + 1);
    for l in Lang::ALL {
        assert!(tok.check_language(l).unwrap().is_some(), "{l}");
    }
    // Decoding drops special tokens.
    let hello = tok.encode("Hello").unwrap();
    let with_specials = [
        vec![tok.sot, tok.language_token("ru").unwrap()],
        hello,
        vec![tok.eot],
    ]
    .concat();
    assert_eq!(tok.decode(&with_specials).unwrap(), "Hello");
}

/// Copies the published files of a fixture model into a temp dir, minus `skip`.
fn copy_model(name: &str, skip: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        if f != skip {
            std::fs::copy(dir(name).join(f), tmp.path().join(f)).unwrap();
        }
    }
    tmp
}

#[test]
fn missing_files_are_typed_errors_naming_them() {
    for missing in ["config.json", "tokenizer.json", "model.safetensors"] {
        let tmp = copy_model("tiny80", missing);
        let e = match WhisperAsr::load(tmp.path().to_str().unwrap(), &Default::default()) {
            Ok(_) => panic!("loaded without {missing}"),
            Err(e) => e,
        };
        let msg = e.to_string();
        println!("{msg}");
        if missing == "model.safetensors" {
            assert!(matches!(e, TeacherError::Weights(_)), "{msg}");
            assert!(msg.contains(tmp.path().to_str().unwrap()), "{msg}");
        } else {
            assert!(matches!(e, TeacherError::Config { .. }), "{msg}");
            assert!(msg.contains(missing), "{msg}");
        }
    }
    // generation_config.json is optional.
    let tmp = copy_model("tiny80", "generation_config.json");
    let asr = WhisperAsr::load(tmp.path().to_str().unwrap(), &Default::default()).unwrap();
    assert_eq!(asr.suppress_lists().at_begin, vec![220]);
}

#[test]
fn hub_location_loads_from_an_offline_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--vaak-test--whisper-tiny");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(dir("tiny80").join(f), snap.join(f)).unwrap();
    }
    let opts = WhisperLoadOptions {
        hub: vaak_nn::weights::HubOptions {
            offline: true,
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        ..Default::default()
    };
    let asr = WhisperAsr::load("hf://vaak-test/whisper-tiny", &opts).unwrap();
    assert_eq!(asr.model_id().name, "vaak-test/whisper-tiny");
    assert_eq!(asr.model_id().revision.as_deref(), Some("main"));
    assert_eq!(asr.model().config().encoder_ffn(), 96);
}

#[test]
fn unsupported_language_lists_the_supported_ones() {
    // A tokenizer without <|te|> (renamed), as a model trained on fewer languages would have.
    let tmp = copy_model("tiny80", "tokenizer.json");
    let text = std::fs::read_to_string(dir("tiny80/tokenizer.json")).unwrap();
    let edited = text.replace("\"<|te|>\"", "\"<|zzz|>\"");
    assert_ne!(edited, text);
    std::fs::write(tmp.path().join("tokenizer.json"), edited).unwrap();
    let asr = WhisperAsr::load(tmp.path().to_str().unwrap(), &Default::default()).unwrap();
    let clip = audio().remove(0);
    let opts = AsrOptions {
        language: Some(Lang::Te),
        max_new_tokens: 3,
    };
    let e = asr
        .transcribe(&[AudioRef::new(&clip, 16_000)], &opts)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, TeacherError::UnsupportedLanguage { .. }),
        "{msg}"
    );
    assert!(msg.contains("'te'") && msg.contains("en, ru, hi"), "{msg}");
}

#[test]
fn bad_clips_fail_alone_and_batch_mates_are_unchanged() {
    let asr = load("tiny80");
    let (_, j) = reference("tiny80");
    let case = &j["cases"][0];
    assert_eq!(case["name"], "ru_12");
    let clips = audio();
    let nan = vec![0.1, f32::NAN, 0.2];
    let long = vec![0.01f32; asr.window_samples() + 1];
    let at_8k = vaak_audio::resample::resample(&clips[0], 16_000, 8_000).unwrap();
    let batch = [
        AudioRef::new(&clips[0], 16_000),
        AudioRef::new(&[], 16_000),
        AudioRef::new(&nan, 16_000),
        AudioRef::new(&long, 16_000),
        AudioRef::new(&clips[1], 16_000),
        AudioRef::new(&at_8k, 8_000),
    ];
    let opts = AsrOptions {
        language: Some(Lang::Ru),
        max_new_tokens: 12,
    };
    let out = asr.transcribe(&batch, &opts).unwrap();
    assert_eq!(out.len(), batch.len());
    assert_eq!(
        out[0].as_ref().unwrap().text,
        case["text"][0].as_str().unwrap()
    );
    assert_eq!(
        out[4].as_ref().unwrap().text,
        case["text"][1].as_str().unwrap()
    );
    for (i, what) in [(1, "empty"), (2, "non-finite"), (3, "longer than")] {
        let msg = out[i].as_ref().unwrap_err().to_string();
        assert!(
            msg.contains(&format!("batch item {i}")) && msg.contains(what),
            "{msg}"
        );
    }
    let t = out[5].as_ref().unwrap();
    assert_eq!(t.language, "ru");
    assert!(!t.text.is_empty());

    // A batch with no usable clip still answers per item.
    let out = asr
        .transcribe(&[AudioRef::new(&[], 16_000)], &opts)
        .unwrap();
    assert!(out[0].is_err());
    // max_new_tokens 0 is a bad request for the whole batch.
    let zero = AsrOptions {
        language: None,
        max_new_tokens: 0,
    };
    assert!(asr.transcribe(&batch[..1], &zero).is_err());
}

#[test]
fn compression_ratio_flags_repetition() {
    let looped = "the same words again ".repeat(20);
    let r = compression_ratio(&looped);
    assert!(r > 2.4, "{r}");
    let plain = "Speech to speech translation in real time.";
    assert!(compression_ratio(plain) < 2.4);
    assert_eq!(compression_ratio(""), 0.0);
}

#[test]
fn dropping_finished_rows_keeps_the_others_exact() {
    let asr = load("tiny80");
    let (_, j) = reference("tiny80");
    let clips = audio();
    let enc = encode_clips(&asr, &clips);
    let model = asr.model();
    let prompt = ids(&j["prompt"]);
    let p = prompt.len();
    let two = Tensor::from_vec(
        [prompt.clone(), prompt.clone()].concat(),
        (2, p),
        &Device::Cpu,
    )
    .unwrap();
    let one = Tensor::from_vec(prompt.clone(), (1, p), &Device::Cpu).unwrap();
    let next = Tensor::from_vec(vec![7u32], (1, 1), &Device::Cpu).unwrap();

    // Batch of two, row 0 dropped after the prompt, then one more step.
    let mut cache = model.decoder_cache(&enc).unwrap();
    model.decode(&two, &mut cache).unwrap();
    cache.retain(&[1]).unwrap();
    assert_eq!(cache.batch().unwrap(), 1);
    let kept = model.decode(&next, &mut cache).unwrap();

    // Clip 1 alone.
    let mut cache = model.decoder_cache(&enc.narrow(0, 1, 1).unwrap()).unwrap();
    model.decode(&one, &mut cache).unwrap();
    let alone = model.decode(&next, &mut cache).unwrap();
    let err = max_abs_diff(&kept, &alone);
    println!("retained row vs alone: max abs err {err:.2e}");
    assert!(err <= CACHE_TOL, "{err}");
    // And it is not clip 0's continuation.
    let mut cache = model.decoder_cache(&enc.narrow(0, 0, 1).unwrap()).unwrap();
    model.decode(&one, &mut cache).unwrap();
    let other = model.decode(&next, &mut cache).unwrap();
    assert!(max_abs_diff(&kept, &other) > 1e-2);
}

#[test]
fn quality_flags_follow_whisper_thresholds() {
    let th = QualityThresholds::default();
    let f = |ns, lp, cr, ended| quality_flags(ns, lp, cr, ended, &th);
    assert!(f(0.1, -0.3, 1.2, true).is_empty());
    // No speech needs both a high no-speech probability and a low log-prob (Whisper's rule).
    assert_eq!(f(0.9, -1.5, 1.0, true), ["no_speech", "low_logprob"]);
    assert!(f(0.9, -0.2, 1.0, true).is_empty());
    assert_eq!(f(0.1, -0.2, 3.0, true), ["hallucination"]);
    assert_eq!(f(0.1, -0.2, 1.0, false), ["max_length"]);
}
