//! `vaak data prepare|augment|split|shard` as real processes: prepare killed mid-run and rerun
//! loses and duplicates nothing; a shard directory trains the tiny codec.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_data::corpus::{read_corpus, write_corpus, CorpusRow};

mod common;

use common::{ok, vaak};

/// `n` speech-like clips of `secs` at `rate` under `dir/wav`, and `dir/m.jsonl`.
fn corpus(dir: &Path, n: usize, secs: f64, rate: u32) -> Vec<CorpusRow> {
    std::fs::create_dir_all(dir.join("wav")).unwrap();
    let rows: Vec<CorpusRow> = (0..n)
        .map(|i| {
            let f0 = 100.0 + 7.0 * i as f32;
            let x: Vec<f32> = (0..(secs * rate as f64) as usize)
                .map(|j| {
                    let t = j as f32 / rate as f32;
                    let ph = 2.0 * std::f32::consts::PI * f0 * t;
                    0.3 * ph.sin() + 0.1 * (3.0 * ph).sin() + 0.05 * (7.0 * ph).sin()
                })
                .collect();
            let rel = format!("wav/c{i:03}.wav");
            write_wav(dir.join(&rel), &x, rate, WavFormat::Pcm16).unwrap();
            CorpusRow {
                id: format!("c{i:03}"),
                lang: "te".into(),
                dataset: "test".into(),
                split: "train".into(),
                audio_path: rel,
                duration_s: secs,
                text: format!("clip {i}"),
                speaker: Some(format!("s{}", i % 4)),
                sample_rate: Some(rate),
                channels: Some(1),
                source_id: None,
                augment: None,
            }
        })
        .collect();
    write_corpus(&dir.join("m.jsonl"), &rows).unwrap();
    rows
}

fn flacs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".flac")
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn prepare_killed_mid_run_then_rerun_loses_and_duplicates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let n = 120;
    let rows = corpus(d.path(), n, 2.0, 48_000);
    let m = d.path().join("m.jsonl").display().to_string();
    let out = d.path().join("out");
    let out_s = out.display().to_string();
    let args = [
        "data",
        "prepare",
        &m,
        "--out",
        &out_s,
        "--jobs",
        "1",
        "--no-progress",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while flacs(&out.join("audio")) < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no output appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "prepare ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = flacs(&out.join("audio"));
    assert!(done < n, "killed mid-run: {done} of {n} done");
    assert!(!out.join("manifest.jsonl").exists());

    let t = ok(vaak(&args));
    let v: serde_json::Value = serde_json::from_str(&t[..t.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(v["skipped_done"], done as u64, "{t}");
    assert_eq!(v["written"], (n - done) as u64, "{t}");
    let back = read_corpus(&out.join("manifest.jsonl")).unwrap();
    assert!(back.malformed.is_empty());
    let mut ids: Vec<&str> = back.rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
    assert_eq!(flacs(&out.join("audio")), n);
    let leftovers = std::fs::read_dir(out.join("audio"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
    for (r, src) in back.rows.iter().zip(&rows) {
        assert_eq!(r.source_id.as_deref(), Some(src.id.as_str()));
        let a = decode_file(out.join(&r.audio_path), None).unwrap();
        assert_eq!(a.sample_rate, 16_000, "{}", r.id);
        assert_eq!(r.channels, Some(1));
        assert!((a.duration_s() - 2.0).abs() < 0.01, "{}", r.id);
    }
}

const TINY_CODEC: &str = "
model:
  sample_rate: 16000
  seanet: {channels: 1, dimension: 8, n_filters: 4, n_residual_layers: 1, ratios: [4, 2],
           kernel_size: 5, last_kernel_size: 3, residual_kernel_size: 3, dilation_base: 2,
           compress: 2, lstm_layers: 0, conv_shortcut: false, pad_mode: zero, weight_norm: false}
  latent_stride: 1
  codebook_size: 32
  num_quantizers: 3
  target_bandwidths: []
  default_codebooks: 3
batch_size: 2
segment_s: 0.032
data: {val_clips: 1, val_max_s: 0.1}
quantizer: {kmeans_batches: 1}
loss:
  stft: [{n_fft: 128, hop: 32, win_length: 128}]
  mel: [{n_fft: 128, hop: 32, n_mels: 16}]
";

#[test]
fn augment_split_shard_then_train_the_tiny_codec_from_the_shards() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).display().to_string();
    corpus(d.path(), 8, 0.5, 16_000);
    let t = ok(vaak(&[
        "data",
        "augment",
        &p("m.jsonl"),
        "--out",
        &p("aug"),
        "--speed",
        "0.9,1.1",
        "--pitch",
        "-2",
        "--seed",
        "3",
        "--with-source",
        "--no-progress",
    ]));
    assert!(t.contains("\"augmented_rows\": 24"), "{t}");
    assert_eq!(
        read_corpus(&d.path().join("aug/manifest.jsonl"))
            .unwrap()
            .rows
            .len(),
        32
    );
    let t = ok(vaak(&[
        "data",
        "split",
        &p("aug/manifest.jsonl"),
        "--ratios",
        "0.5,0.25,0.25",
        "--out",
        &p("split"),
    ]));
    assert!(t.contains("speakers"), "{t}");
    let train = read_corpus(&d.path().join("split/train.jsonl"))
        .unwrap()
        .rows;
    assert!(!train.is_empty());
    ok(vaak(&[
        "data",
        "shard",
        &p("split/train.jsonl"),
        "--data-root",
        &p("aug"),
        "--out",
        &p("shards"),
        "--shard-size",
        "3",
    ]));
    assert!(d.path().join("shards/shards.json").is_file());

    std::fs::write(d.path().join("tiny.yaml"), TINY_CODEC).unwrap();
    let t = ok(vaak(&[
        "train",
        "codec",
        "--data",
        &p("shards"),
        "--config",
        &p("tiny.yaml"),
        "--out",
        &p("run"),
        "--steps",
        "2",
        "--no-progress",
    ]));
    assert!(t.contains(&format!("{} audio file(s)", train.len())), "{t}");
    assert!(
        d.path().join("run/export/model.safetensors").is_file(),
        "{t}"
    );
    // Rank 1 of 2 from the environment reads the odd shards only.
    let o = Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args([
            "train",
            "codec",
            "--data",
            &p("shards"),
            "--config",
            &p("tiny.yaml"),
            "--out",
            &p("run1"),
            "--steps",
            "2",
            "--no-progress",
        ])
        .env("RUST_LOG", "info")
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    let t = ok(o);
    assert!(t.contains("rank 1 of 2"), "{t}");
    let shards = vaak_data::shard::ShardReader::open(d.path().join("shards")).unwrap();
    let odd = shards.iter(1, 2).unwrap().count();
    assert!(t.contains(&format!("{odd} audio file(s)")), "{t}");
    assert!(d.path().join("shards/unpacked/rank1-of-2").is_dir());

    // Stage lm of the S2S trainer reads the same shard directory.
    let t = ok(vaak(&[
        "train",
        "s2s",
        "--data",
        &p("shards"),
        "--out",
        &p("lm"),
        "--steps",
        "2",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--codebooks",
        "2",
        "--no-progress",
    ]));
    assert!(t.contains("trained 2 steps of stage lm"), "{t}");
    assert!(t.contains(&format!("{} audio file(s)", train.len())), "{t}");
}
