//! `vaak codec eval` and the codec commands' bad-input paths, as real processes on committed
//! fixtures (tiny random EnCodec / Mimi checkpoints, the audio_io clips).

use std::path::Path;
use std::process::{Command, Output};
use vaak_audio::io::{write_wav, WavFormat};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data");

fn encodec() -> String {
    format!("{FIXTURES}/codec/encodec")
}

fn mimi() -> String {
    format!("{FIXTURES}/codec/mimi")
}

fn audio_dir() -> String {
    format!("{FIXTURES}/audio_io")
}

fn vaak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("the vaak binary starts")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tone(path: &Path, seconds: f32, sr: u32) {
    let n = (seconds * sr as f32) as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / sr as f32).sin())
        .collect();
    write_wav(path, &x, sr, WavFormat::Pcm16).unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn eval_over_a_directory_scores_every_clip_and_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eval.json");
    let weights = encodec();
    let input = audio_dir();
    let o = vaak(&[
        "codec",
        "eval",
        &input,
        "--preset",
        "encodec_24khz",
        "--model",
        &weights,
        "--codebooks",
        "2",
        "--per-clip",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v = read_json(&json);
    // flac, wav x3, mp3, ogg: every audio file, and not the .json / .safetensors next to them.
    assert_eq!(v["clips_ok"], 6, "{v:#}");
    assert_eq!(v["clips_failed"], 0, "{v:#}");
    let (nq, size, fr) = (
        v["num_codebooks"].as_f64().unwrap(),
        v["codebook_size"].as_f64().unwrap(),
        v["frame_rate"].as_f64().unwrap(),
    );
    assert_eq!(nq, 2.0);
    assert!((v["bitrate_bps"].as_f64().unwrap() - nq * size.log2() * fr).abs() < 1e-6);
    for c in v["clips"].as_array().unwrap() {
        let snr = c["snr_db"].as_f64().unwrap();
        let mel = c["mel_distance"].as_f64().unwrap();
        assert!(snr.is_finite() && mel > 0.0, "{c}");
        assert!(c["encode_rtf"].as_f64().unwrap() > 0.0);
        assert!(c["decode_rtf"].as_f64().unwrap() > 0.0);
        assert!((c["seconds"].as_f64().unwrap() - 0.3).abs() < 1e-3, "{c}");
    }
    let s = &v["summary"]["snr_db"];
    assert_eq!(s["count"], 6);
    assert!(s["min"].as_f64().unwrap() <= s["median"].as_f64().unwrap());
    assert!(s["median"].as_f64().unwrap() <= s["max"].as_f64().unwrap());
    let t = text(&o);
    assert!(t.contains("mean") && t.contains("median"), "{t}");
    assert!(t.contains("flac_16k_stereo.flac"), "per-clip rows: {t}");
    // The 16 kHz / 22.05 kHz / stereo inputs were converted with a logged note.
    assert!(t.contains("downmixing and resampling"), "{t}");
}

#[test]
fn eval_over_a_manifest_carries_on_past_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir_all(&clips).unwrap();
    tone(&clips.join("a.wav"), 0.4, 24_000);
    tone(&clips.join("b.wav"), 0.5, 24_000);
    let manifest = dir.path().join("m.csv");
    std::fs::write(
        &manifest,
        "id,lang,audio_path,duration_s\n\
         a,en,clips/a.wav,0.4\n\
         b,en,clips\\b.wav,0.5\n\
         gone,en,clips/missing.wav,1.0\n\
         escape,en,../outside.wav,1.0\n\
         broken,en,clips/a.wav,not-a-number\n",
    )
    .unwrap();
    let json = dir.path().join("eval.json");
    let weights = mimi();
    let o = vaak(&[
        "codec",
        "eval",
        manifest.to_str().unwrap(),
        "--preset",
        "mimi",
        "--weights",
        &weights,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v = read_json(&json);
    assert_eq!(v["clips_ok"], 2, "{v:#}");
    assert_eq!(v["clips_failed"], 1, "the missing file: {v:#}");
    let failed: Vec<&serde_json::Value> = v["clips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("error").is_some())
        .collect();
    assert_eq!(failed[0]["name"], "gone");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("missing.wav"),
        "{v:#}"
    );
    let notes = v["notes"].to_string();
    assert!(notes.contains("..") && notes.contains("line"), "{notes}");
    assert!(
        notes.contains("not-a-number") || notes.contains("duration"),
        "{notes}"
    );
    assert_eq!(v["preset"], "mimi");
}

#[test]
fn eval_of_a_directory_without_audio_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "no audio here").unwrap();
    let weights = encodec();
    let o = vaak(&[
        "codec",
        "eval",
        dir.path().to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        &weights,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no audio clips"), "{}", text(&o));
}

#[test]
fn strict_refuses_a_wrong_rate_or_channel_count_naming_both() {
    let weights = encodec();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.npy");
    for (file, what) in [
        ("float32_16k.wav", "16000 Hz"),
        ("pcm16_16k_stereo.wav", "2 channel"),
    ] {
        let input = format!("{}/{file}", audio_dir());
        let o = vaak(&[
            "codec",
            "encode",
            &input,
            out.to_str().unwrap(),
            "--preset",
            "encodec_24khz",
            "--weights",
            &weights,
            "--strict",
        ]);
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains(file) && t.contains(what) && t.contains("24000 Hz"),
            "{t}"
        );
        assert!(!out.exists());
        // Without --strict the same file is converted and encoded.
        let o = vaak(&[
            "codec",
            "encode",
            &input,
            out.to_str().unwrap(),
            "--preset",
            "encodec_24khz",
            "--weights",
            &weights,
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("downmixing and resampling"));
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn zero_length_audio_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wav");
    write_wav(&empty, &[], 24_000, WavFormat::Pcm16).unwrap();
    let weights = encodec();
    let o = vaak(&[
        "codec",
        "encode",
        empty.to_str().unwrap(),
        dir.path().join("t.npy").to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        &weights,
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("empty.wav"), "{t}");
    assert!(t.contains("zero-length") || t.contains("no audio"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn decode_refuses_npy_of_the_wrong_dtype_or_shape() {
    let weights = encodec();
    let dir = tempfile::tempdir().unwrap();
    let dev = candle_core::Device::Cpu;
    let cases: Vec<(&str, candle_core::Tensor, &str)> = vec![
        (
            "float.npy",
            candle_core::Tensor::zeros((2, 5), candle_core::DType::F32, &dev).unwrap(),
            "F32",
        ),
        (
            "rank1.npy",
            candle_core::Tensor::zeros(5, candle_core::DType::I64, &dev).unwrap(),
            "[5]",
        ),
        (
            "rank3.npy",
            candle_core::Tensor::zeros((1, 2, 5), candle_core::DType::I64, &dev).unwrap(),
            "[1, 2, 5]",
        ),
        (
            "too_many_codebooks.npy",
            candle_core::Tensor::zeros((999, 5), candle_core::DType::I64, &dev).unwrap(),
            "999",
        ),
        (
            "no_frames.npy",
            candle_core::Tensor::zeros((2, 0), candle_core::DType::I64, &dev).unwrap(),
            "frame",
        ),
        (
            "negative.npy",
            candle_core::Tensor::new(&[[0i64, -3, 1]], &dev).unwrap(),
            "-3",
        ),
    ];
    for (name, t, needle) in cases {
        let path = dir.path().join(name);
        t.write_npy(&path).unwrap();
        let o = vaak(&[
            "codec",
            "decode",
            path.to_str().unwrap(),
            dir.path().join("x.wav").to_str().unwrap(),
            "--preset",
            "encodec_24khz",
            "--weights",
            &weights,
        ]);
        assert!(!o.status.success(), "{name}");
        let t = text(&o);
        assert!(t.contains(name) && t.contains(needle), "{name}: {t}");
        assert!(!t.contains("panicked"), "{t}");
    }
    // Not an .npy at all.
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"definitely not numpy").unwrap();
    let o = vaak(&[
        "codec",
        "decode",
        junk.to_str().unwrap(),
        dir.path().join("x.wav").to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        &weights,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("junk.npy"), "{}", text(&o));
}
