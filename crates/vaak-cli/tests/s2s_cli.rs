//! `vaak train s2s` and `vaak s2s translate|reply` as real processes: a tiny model trained for
//! a few steps on generated WAVs (stage lm), continued on a generated parallel layout (stage
//! s2s with --init, a broken sample skipped and counted), resumed, then used to translate a
//! WAV; and the bad-input paths.

use std::path::Path;

use vaak_audio::io::{probe_info, write_wav, WavFormat};

mod common;

use common::{ok, text, vaak};

fn tone(path: &Path, f0: f32, seconds: f32) {
    let sr = 16_000;
    let n = (seconds * sr as f32) as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / sr as f32;
            0.3 * (2.0 * std::f32::consts::PI * (f0 + 80.0 * t) * t).sin()
        })
        .collect();
    write_wav(path, &x, sr, WavFormat::Pcm16).unwrap();
}

/// `parallel/ruen/<id>/` samples as the cascade writes them; `broken` lacks its tgt.wav.
fn parallel(root: &Path) {
    for (i, id) in ["s0", "s1", "s2", "broken"].iter().enumerate() {
        let d = root.join("parallel/ruen").join(id);
        std::fs::create_dir_all(&d).unwrap();
        tone(&d.join("src.wav"), 150.0 + 30.0 * i as f32, 0.6);
        if *id != "broken" {
            tone(&d.join("tgt.wav"), 200.0 + 30.0 * i as f32, 0.5);
        }
        let spk: Vec<f32> = (0..192).map(|j| ((i * 7 + j) % 5) as f32 * 0.1).collect();
        candle_core::Tensor::from_vec(spk, 192, &candle_core::Device::Cpu)
            .unwrap()
            .write_npy(d.join("spk.npy"))
            .unwrap();
        let meta = serde_json::json!({
            "id": id, "safe_id": id, "manifest_line": i, "direction": "ruen",
            "src_lang": "ru", "tgt_lang": "en", "status": "ok",
            "manifest": {"emotion": "calm"}
        });
        std::fs::write(d.join("meta.json"), meta.to_string()).unwrap();
        std::fs::write(d.join("DONE"), "").unwrap();
    }
}

#[test]
fn train_stages_then_translate_writes_a_wav_at_the_codec_rate() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    std::fs::create_dir_all(dir.path().join("clips")).unwrap();
    for (i, f) in [170.0, 210.0, 250.0, 290.0].iter().enumerate() {
        tone(&dir.path().join(format!("clips/c{i}.wav")), *f, 0.8);
    }
    let (clips, cascade) = (p("clips"), p("cascade"));
    let common = [
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--codebooks",
        "2",
        "--lr",
        "0.003",
        "--no-progress",
    ];
    // Stage lm on the clips.
    let mut args = vec!["train", "s2s", "--data", &clips];
    let (out_lm, run_lm) = (p("lm"), p("lm/export"));
    args.extend(["--out", &out_lm, "--steps", "4"]);
    args.extend(common);
    let t = ok(vaak(&args));
    assert!(t.contains("trained 4 steps of stage lm"), "{t}");
    assert!(t.contains("4 used, 0 skipped"), "{t}");
    for f in ["config.json", "model.safetensors", "codec.json"] {
        assert!(dir.path().join("lm/export").join(f).is_file(), "{f}");
    }
    let metrics = std::fs::read_to_string(dir.path().join("lm/metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"val_accuracy\""), "{metrics}");

    // --resume extends the run; the codes come from the cache.
    let mut args = vec!["train", "s2s", "--data", &clips];
    args.extend(["--out", &out_lm, "--steps", "6", "--resume"]);
    args.extend(common);
    let t = ok(vaak(&args));
    assert!(t.contains("trained 6 steps"), "{t}");
    assert!(t.contains("0 encoded, 4 from the cache"), "{t}");

    // Stage s2s from the lm export on the parallel layout; the broken sample is counted.
    parallel(&dir.path().join("cascade"));
    let mut args = vec!["train", "s2s", "--stage", "s2s", "--data", &cascade];
    let out_s2s = p("s2s");
    args.extend(["--init", &run_lm, "--out", &out_s2s, "--steps", "3"]);
    args.extend(common);
    let t = ok(vaak(&args));
    assert!(t.contains("3 used, 1 skipped"), "{t}");
    assert!(t.contains("skipped broken"), "{t}");
    assert!(t.contains("trained 3 steps of stage s2s"), "{t}");

    // Stage cond from the s2s export (192-d speakers from spk.npy).
    let mut args = vec!["train", "s2s", "--stage", "cond", "--data", &cascade];
    let (out_cond, model) = (p("cond"), p("cond/export"));
    let s2s_export = p("s2s/export");
    args.extend(["--init", &s2s_export, "--out", &out_cond, "--steps", "2"]);
    args.extend(common);
    ok(vaak(&args));

    // Translate and reply with the final export.
    let input = p("clips/c0.wav");
    let spk = p("cascade/parallel/ruen/s0/spk.npy");
    let out_wav = p("out.wav");
    let t = ok(vaak(&[
        "s2s",
        "translate",
        &input,
        &out_wav,
        "--model",
        &model,
        "--lang",
        "ru",
        "--emotion",
        "happy",
        "--speaker",
        &spk,
        "--max-seconds",
        "0.6",
        "--seed",
        "3",
    ]));
    assert!(t.contains("frames in"), "{t}");
    let info = probe_info(dir.path().join("out.wav")).unwrap();
    assert_eq!((info.sample_rate, info.channels), (16_000, 1));
    // The cond export ships its training speakers as voices.
    let voices: Vec<String> = std::fs::read_dir(dir.path().join("cond/export/voices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!voices.is_empty() && voices.iter().all(|v| v.ends_with(".npy")));
    let voice = voices[0].trim_end_matches(".npy").to_string();
    ok(vaak(&[
        "s2s",
        "translate",
        &input,
        &out_wav,
        "--model",
        &model,
        "--voice",
        &voice,
        "--max-seconds",
        "0.4",
    ]));
    let o = vaak(&[
        "s2s",
        "translate",
        &input,
        &out_wav,
        "--model",
        &model,
        "--voice",
        "nobody",
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("nobody") && t.contains(&voice),
        "{t}"
    );
    let reply_wav = p("reply.wav");
    ok(vaak(&[
        "s2s",
        "reply",
        &input,
        &reply_wav,
        "--model",
        &model,
        "--max-seconds",
        "0.4",
        "--temperature",
        "0",
    ]));
    assert_eq!(
        probe_info(dir.path().join("reply.wav"))
            .unwrap()
            .sample_rate,
        16_000
    );
}

#[test]
fn bad_inputs_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("in.wav");
    tone(&wav, 200.0, 0.3);
    let w = wav.display().to_string();
    let out = dir.path().join("o.wav").display().to_string();

    // Without --model the bundled model (embedded in the binary) translates.
    let o = vaak(&[
        "s2s",
        "translate",
        &w,
        &out,
        "--lang",
        "ru",
        "--max-seconds",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(probe_info(&out).unwrap().sample_rate, 16_000);

    let o = vaak(&["s2s", "translate", &w, &out, "--emotion", "grumpy"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("grumpy") && t.contains("neutral, happy, sad"),
        "{t}"
    );

    let o = vaak(&["s2s", "translate", &w, &out, "--lang", "fr"]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("en, ru, hi, te"), "{t}");

    let o = vaak(&[
        "s2s",
        "reply",
        &w,
        &out,
        "--model",
        &dir.path().display().to_string(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("not an S2S model export"),
        "{t}"
    );

    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "optim:\n  learning_rate: 0.1\n").unwrap();
    let o = vaak(&[
        "train",
        "s2s",
        "--print-config",
        "--config",
        &cfg.display().to_string(),
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("learning_rate"), "{t}");

    let run = dir.path().join("run").display().to_string();
    let o = vaak(&[
        "train",
        "s2s",
        "--stage",
        "s2s",
        "--data",
        &dir.path().display().to_string(),
        "--out",
        &run,
        "--codebooks",
        "2",
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("parallel"), "{t}");

    let o = vaak(&["train", "s2s", "--print-config", "--preset", "tiny"]);
    let t = ok(o);
    assert!(t.contains("preset: tiny") && t.contains("stage: lm"), "{t}");
}
