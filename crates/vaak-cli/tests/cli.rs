//! End-to-end tests of the `vaak` binary: real processes, real files.

use std::path::Path;
use std::process::{Command, Output};
use vaak_audio::io::{write_wav, WavFormat};

fn vaak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args(args)
        .env("RUST_LOG", "warn")
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

#[test]
fn help_lists_only_implemented_commands() {
    let o = vaak(&["--help"]);
    assert!(o.status.success());
    let t = text(&o);
    let section = t
        .split("\nCommands:\n")
        .nth(1)
        .expect("a Commands: section");
    let listed: Vec<&str> = section
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .collect();
    for cmd in [
        "info", "audio", "cascade", "codec", "data", "train", "bench", "s2s", "serve", "check",
    ] {
        assert!(
            listed.contains(&cmd),
            "--help misses {cmd}: {listed:?}\n{t}"
        );
    }
    for l in &listed {
        assert!(
            [
                "info", "audio", "cascade", "codec", "data", "train", "bench", "s2s", "serve",
                "check", "help"
            ]
            .contains(l),
            "--help lists {l}, which this build does not implement"
        );
    }
}

#[test]
fn info_json_names_the_cpu() {
    let o = vaak(&["info", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["devices"][0], "cpu");
    assert_eq!(v["candle_version"], "0.11.1");
}

#[test]
fn convert_then_probe_reports_the_new_rate() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.wav");
    let dst = dir.path().join("b.wav");
    tone(&src, 0.5, 44_100);
    let o = vaak(&[
        "audio",
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--rate",
        "16000",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = vaak(&["audio", "probe", "--json", dst.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sample_rate"], 16000);
    assert_eq!(v["frames"], 8000);
}

#[test]
fn probe_of_a_non_audio_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.wav");
    std::fs::write(&bad, "this is not audio at all\n").unwrap();
    let o = vaak(&["audio", "probe", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("notes.wav"), "{}", text(&o));
}

#[test]
fn features_writes_an_npy_of_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.wav");
    tone(&src, 1.0, 16_000);
    let out = dir.path().join("mel.npy");
    let o = vaak(&[
        "audio",
        "features",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--kind",
        "whisper80",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = candle_core::Tensor::read_npy(&out).unwrap();
    assert_eq!(t.dims(), &[80, 3000]);
}

#[test]
fn bench_audio_writes_a_report_with_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = vaak(&[
        "bench",
        "audio",
        "--no-peer",
        "--synth-files",
        "2",
        "--synth-seconds",
        "0.5",
        "--min-time",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5, "{v}");
    for c in cases {
        assert!(c["vaak"]["throughput"].as_f64().unwrap() > 0.0);
    }
    assert!(text(&o).contains("decode+resample->16k"));
}

#[test]
fn codec_roundtrip_on_the_encodec_fixture_reports_quality_and_tokens() {
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/codec/encodec"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.wav");
    tone(&src, 0.5, 16_000);
    let out = dir.path().join("out.wav");
    let tokens = dir.path().join("tokens.npy");
    let o = vaak(&[
        "codec",
        "roundtrip",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        weights,
        "--num-codebooks",
        "2",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = candle_core::Tensor::read_npy(&tokens).unwrap();
    assert_eq!(t.dims()[0], 2, "{:?}", t.dims());
    let decoded = dir.path().join("decoded.wav");
    let o = vaak(&[
        "codec",
        "decode",
        tokens.to_str().unwrap(),
        decoded.to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        weights,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let a = vaak_audio::io::decode_file(&out, None).unwrap();
    let b = vaak_audio::io::decode_file(&decoded, None).unwrap();
    assert_eq!(a.sample_rate, 24_000);
    assert_eq!(a.samples.len(), b.samples.len());
}

#[test]
fn codec_decode_refuses_out_of_range_tokens() {
    let weights = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/fixtures/data/codec/encodec"
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("bad.npy");
    candle_core::Tensor::new(&[[0i64, 5, 100_000]], &candle_core::Device::Cpu)
        .unwrap()
        .write_npy(&tokens)
        .unwrap();
    let o = vaak(&[
        "codec",
        "decode",
        tokens.to_str().unwrap(),
        dir.path().join("x.wav").to_str().unwrap(),
        "--preset",
        "encodec_24khz",
        "--weights",
        weights,
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("100000"), "{}", text(&o));
}

#[test]
fn bench_cascade_runs_the_real_pipeline_and_reports_stage_shares() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cascade.json");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/fixtures/data");
    let o = vaak(&[
        "bench",
        "cascade",
        "--clips",
        "3",
        "--fixtures",
        fixtures,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["samples_written"], 3, "{v}");
    assert_eq!(v["samples_errored"], 2, "the two broken rows: {v}");
    let share = v["model_share"].as_f64().unwrap();
    assert!(share > 0.0 && share <= 1.0, "{v}");
    for stage in ["asr", "translate", "speaker", "tts", "codec"] {
        assert!(v["stage_s"][stage].as_f64().unwrap() > 0.0, "{stage}: {v}");
    }
}

#[test]
fn a_user_error_prints_its_causes_but_no_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wav");
    let out = dir.path().join("out.wav");
    for var in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"] {
        let o = Command::new(env!("CARGO_BIN_EXE_vaak"))
            .args(["audio", "convert", missing.to_str().unwrap()])
            .arg(&out)
            .env("RUST_LOG", "warn")
            .env(var, "1")
            .output()
            .expect("the vaak binary starts");
        let t = text(&o);
        assert!(!o.status.success(), "{var}=1: {t}");
        assert!(t.contains("Error: "), "{var}=1: {t}");
        assert!(t.contains("missing.wav"), "{var}=1: {t}");
        assert!(t.contains("Caused by:"), "{var}=1: {t}");
        assert!(
            !t.to_lowercase().contains("backtrace"),
            "{var}=1 printed a backtrace: {t}"
        );
    }
}

#[test]
fn cascade_names_a_missing_manifest_once_on_the_first_line_even_in_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let manifest = dir.path().join("nope/golos.csv");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_root: {:?}\noutput_root: {:?}\nmanifests:\n  ru: {:?}\n",
            data.display().to_string(),
            dir.path().join("out").display().to_string(),
            manifest.display().to_string()
        ),
    )
    .unwrap();
    let o = vaak(&["cascade", "--config", cfg.to_str().unwrap(), "--dry-run"]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    let first = t.lines().find(|l| l.starts_with("Error: ")).unwrap_or("");
    assert_eq!(
        first,
        format!(
            "Error: the manifest for ru does not exist: {} (config key manifests.ru)",
            manifest.display()
        ),
        "{t}"
    );
    assert_eq!(t.matches("golos.csv").count(), 1, "reported once: {t}");

    // A data_root that does not exist fails the dry run too, naming the flag it came from.
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, "id,lang,audio_path,duration_s\n").unwrap();
    let o = vaak(&[
        "cascade",
        "--config",
        cfg.to_str().unwrap(),
        "--data-root",
        dir.path().join("no-data").to_str().unwrap(),
        "--dry-run",
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    let first = t.lines().find(|l| l.starts_with("Error: ")).unwrap_or("");
    assert!(
        first.starts_with("Error: data_root does not exist: ") && first.contains("(--data-root)"),
        "{t}"
    );
}
