//! Orchestration tests of the cascade with TEST DOUBLES (see `common/mod.rs`): real files on
//! disk, real threads, fake teachers.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use common::*;
use serde_json::Value;
use vaak_audio::io::{decode_file, write_wav, WavFormat};
use vaak_cascade::config::SrcAudioMode;
use vaak_cascade::pipeline::{logs_dir, samples_dir};
use vaak_cascade::{plan, run, Config, Shard, Summary, Teachers};
use vaak_data::npy::read_npy;
use vaak_data::parallel::{DONE_FILE, SAMPLE_FILES};
use vaak_data::safe_id::safe_id;
use vaak_data::Lang;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    factory: DoubleFactory,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("data")).unwrap();
        Self {
            _tmp: tmp,
            root,
            factory: DoubleFactory::default(),
        }
    }
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn config(&self, models_extra: &str) -> Config {
        Config::from_yaml_str(&config_yaml(&self.root, models_extra, ""), "test").unwrap()
    }
    fn manifest(&self, lines: &[String]) {
        let mut s = RU_HEADER.to_string();
        for l in lines {
            s.push_str(l);
        }
        std::fs::write(self.root.join("manifest.csv"), s).unwrap();
    }
    fn run(&self, cfg: &Config) -> Summary {
        self.run_shard(cfg, Shard { idx: 0, count: 1 })
    }
    fn run_shard(&self, cfg: &Config, shard: Shard) -> Summary {
        let teachers = Teachers::build(cfg, &self.factory).unwrap();
        let p = plan(cfg, Lang::Ru, shard).unwrap();
        let s = run(cfg, p, &teachers).unwrap();
        assert_eq!(
            s.accounted(),
            s.shard_rows,
            "every row accounted once: {s:?}"
        );
        s
    }
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn meta(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap()
}

fn error_log(cfg: &Config, shard: usize) -> Vec<Value> {
    let p = logs_dir(cfg).join(format!("errors_{shard}.log"));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn writes_the_exact_layout_with_batched_stages() {
    let env = Env::new();
    let mut lines = Vec::new();
    for i in 0..7 {
        let rel = format!("keep\\ru\\golos\\train\\c{i}.wav");
        write_clip(
            &env.data(),
            &rel.replace('\\', "/"),
            2.0 + i as f64 * 0.5,
            0.5,
        );
        lines.push(ru_line(&format!("c{i}"), &rel, 2.0 + i as f64 * 0.5));
    }
    env.manifest(&lines);
    let mut cfg = env.config("");
    cfg.batch.asr = 4;
    cfg.batch.tts = 3;
    let s = env.run(&cfg);
    assert_eq!(
        (s.ok, s.bad, s.errored, s.skipped, s.filtered),
        (7, 0, 0, 0, 0),
        "{s:?}"
    );
    let expect_hours: f64 = (0..7).map(|i| 2.0 + i as f64 * 0.5).sum::<f64>() / 3600.0;
    assert!((s.hours_processed - expect_hours).abs() < 1e-6);
    // Stages really ran in batches.
    assert_eq!(env.factory.calls.asr_max_batch.load(Ordering::SeqCst), 4);
    assert_eq!(env.factory.calls.tts_max_batch.load(Ordering::SeqCst), 3);
    assert_eq!(env.factory.calls.asr_items.load(Ordering::SeqCst), 7);

    let dir = samples_dir(&cfg);
    assert!(dir.ends_with("out/data/parallel/ruen"));
    let names: BTreeSet<String> = (0..7).map(|i| format!("c{i}")).collect();
    assert_eq!(entries(&dir), names, "no temp dirs or extras left");
    let mut want: BTreeSet<String> = SAMPLE_FILES.iter().map(|s| s.to_string()).collect();
    want.insert(DONE_FILE.into());

    let d = dir.join("c2");
    assert_eq!(entries(&d), want);
    let src_path = env.data().join("keep/ru/golos/train/c2.wav");
    assert_eq!(
        std::fs::read(d.join("src.wav")).unwrap(),
        std::fs::read(&src_path).unwrap()
    );
    let src_txt = std::fs::read_to_string(d.join("src.txt")).unwrap();
    assert_eq!(src_txt, "w0 w1 w2 w3 w4 w5");
    let tgt_txt = std::fs::read_to_string(d.join("tgt.txt")).unwrap();
    assert_eq!(tgt_txt, "w5 w4 w3 w2 w1 w0");
    let tgt = decode_file(d.join("tgt.wav"), None).unwrap();
    assert_eq!(tgt.sample_rate, 24_000);
    let tgt_secs = tgt_txt.chars().count() as f64 * TTS_SECONDS_PER_CHAR;
    assert_eq!(tgt.samples.len(), (tgt_secs * 24_000.0).round() as usize);

    let spk = read_npy(&d.join("spk.npy")).unwrap();
    assert_eq!(spk.shape, vec![4]);
    let want_spk = clip_stats(
        &decode_file(&src_path, Some(16_000)).unwrap().samples,
        16_000,
    );
    assert_eq!(spk.to_f32().unwrap(), want_spk);

    let tok = read_npy(&d.join("tokens.npy")).unwrap();
    // The codec saw the TTS output itself, before PCM16 quantisation in tgt.wav.
    let want_codes = frame_codes(&sine(tgt_secs, 24_000, 220.0, 0.5));
    let frames = want_codes[0].len();
    assert_eq!(tok.shape, vec![2, frames]);
    let flat: Vec<i64> = want_codes.iter().flatten().map(|&c| c as i64).collect();
    assert_eq!(tok.to_i64().unwrap(), flat, "C order, [codebook, frame]");

    let m = meta(&d);
    assert_eq!(m["id"], "c2");
    assert_eq!(m["status"], "ok");
    assert_eq!(m["quality_flags"], serde_json::json!([]));
    assert_eq!(m["src_lang"], "ru");
    assert_eq!(m["tgt_lang"], "en");
    assert_eq!(m["direction"], "ruen");
    assert_eq!(m["manifest"]["dataset"], "golos");
    assert_eq!(m["manifest"]["tier_rank"], "1");
    assert_eq!(
        m["manifest"]["audio_path"],
        "keep\\ru\\golos\\train\\c2.wav"
    );
    assert_eq!(m["src_duration_s"].as_f64().unwrap(), 3.0);
    assert!((m["tgt_duration_s"].as_f64().unwrap() - tgt_secs).abs() < 1e-6);
    assert_eq!(m["src_text_len"], 17);
    assert_eq!(m["tgt_text_len"], 17);
    assert_eq!(m["tokens_shape"], serde_json::json!([2, frames]));
    assert_eq!(m["models"]["asr"]["name"], "test-double/asr");
    assert_eq!(m["models"]["codec"]["revision"], "1");
    for st in ["load", "asr", "translate", "speaker", "tts", "codec"] {
        assert!(
            m["timings_s"][st].as_f64().is_some(),
            "timing {st} missing: {m}"
        );
    }
    assert_eq!(m["src_wav"], "copy");

    let sum: Summary =
        serde_json::from_slice(&std::fs::read(logs_dir(&cfg).join("summary_0.json")).unwrap())
            .unwrap();
    assert_eq!(sum.ok, 7);
    assert!(error_log(&cfg, 0).is_empty());
}

#[test]
fn resume_skips_done_and_redoes_half_written_samples() {
    let env = Env::new();
    let mut lines = Vec::new();
    for i in 0..6 {
        write_clip(&env.data(), &format!("r{i}.wav"), 3.0, 0.5);
        lines.push(ru_line(&format!("r{i}"), &format!("r{i}.wav"), 3.0));
    }
    env.manifest(&lines);
    let cfg = env.config("");
    let s = env.run(&cfg);
    assert_eq!(s.ok, 6);
    let dir = samples_dir(&cfg);
    let before = std::fs::metadata(dir.join("r0/DONE"))
        .unwrap()
        .modified()
        .unwrap();

    // Crash leftovers: r1 renamed into place but DONE not yet written; r2 a stale temp dir
    // whose final dir never appeared; r3 a temp dir holding a DONE file (must not count).
    std::fs::remove_file(dir.join("r1/DONE")).unwrap();
    std::fs::write(dir.join("r1/meta.json"), b"{ half").unwrap();
    std::fs::remove_dir_all(dir.join("r2")).unwrap();
    std::fs::create_dir_all(dir.join(".tmp.r2")).unwrap();
    std::fs::write(dir.join(".tmp.r2/src.txt"), b"junk").unwrap();
    std::fs::remove_dir_all(dir.join("r3")).unwrap();
    std::fs::create_dir_all(dir.join(".tmp.r3")).unwrap();
    std::fs::write(dir.join(".tmp.r3/DONE"), b"ok\n").unwrap();

    let asr_before = env.factory.calls.asr_items.load(Ordering::SeqCst);
    let s = env.run(&cfg);
    assert_eq!((s.ok, s.skipped, s.errored), (3, 3, 0), "{s:?}");
    assert_eq!(
        env.factory.calls.asr_items.load(Ordering::SeqCst) - asr_before,
        3
    );
    let names: BTreeSet<String> = (0..6).map(|i| format!("r{i}")).collect();
    assert_eq!(entries(&dir), names, "temp dirs cleaned up");
    for i in 0..6 {
        let d = dir.join(format!("r{i}"));
        assert!(d.join("DONE").is_file());
        assert_eq!(meta(&d)["id"], format!("r{i}"));
        assert_eq!(entries(&d).len(), SAMPLE_FILES.len() + 1);
    }
    let after = std::fs::metadata(dir.join("r0/DONE"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a DONE sample is not rewritten");

    let s = env.run(&cfg);
    assert_eq!((s.ok, s.skipped), (0, 6));
}

fn write_float_wav_with_nan(path: &Path) {
    // write_wav refuses NaN, so build the float WAV by hand.
    let samples: Vec<f32> = (0..32_000)
        .map(|i| if i == 100 { f32::NAN } else { 0.1 })
        .collect();
    let mut b = Vec::new();
    let data_len = (samples.len() * 4) as u32;
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&64_000u32.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_inputs_are_logged_counted_and_the_run_continues() {
    let env = Env::new();
    let data = env.data();
    let mut lines = Vec::new();
    // Good ones, with awkward ids.
    let good_ids = ["ok plain", "привет мир", "..", "a/b\\c", "", "%2E%2E"];
    for (i, id) in good_ids.iter().enumerate() {
        write_clip(&data, &format!("g{i}.wav"), 2.5, 0.5);
        lines.push(ru_line(id, &format!("g{i}.wav"), 2.5));
    }
    // Duplicate of "ok plain": dropped (first kept).
    lines.push(ru_line("ok plain", "g1.wav", 2.5));
    // Load errors.
    lines.push(ru_line("missing", "nope/missing.wav", 2.0));
    std::fs::write(data.join("zero.wav"), b"").unwrap();
    lines.push(ru_line("zero", "zero.wav", 2.0));
    write_clip(&data, "full.wav", 2.0, 0.5);
    let full = std::fs::read(data.join("full.wav")).unwrap();
    std::fs::write(data.join("trunc.wav"), &full[..full.len() / 2]).unwrap();
    lines.push(ru_line("trunc", "trunc.wav", 2.0));
    std::fs::write(
        data.join("text.wav"),
        b"this is not audio at all, just text\n".repeat(50),
    )
    .unwrap();
    lines.push(ru_line("text", "text.wav", 2.0));
    write_float_wav_with_nan(&data.join("nan.wav"));
    lines.push(ru_line("nan", "nan.wav", 2.0));
    // Path escapes.
    let outside = env.root.join("outside.wav");
    write_wav(
        &outside,
        &sine(2.0, 16_000, 300.0, 0.5),
        16_000,
        WavFormat::Pcm16,
    )
    .unwrap();
    lines.push(ru_line("escape-rel", "..\\outside.wav", 2.0));
    lines.push(ru_line("escape-abs", &outside.display().to_string(), 2.0));
    // Much longer than the manifest says: dropped as a duration mismatch.
    write_clip(&data, "long.wav", 12.0, 0.5);
    lines.push(ru_line("long", "long.wav", 2.0));
    // Silent: empty transcript -> written as bad.
    write_clip(&data, "silent.wav", 3.0, 0.0);
    lines.push(ru_line("silent", "silent.wav", 3.0));
    // Quiet: the double ASR adds "poison", the translator refuses it -> logged at translate.
    write_clip(&data, "quiet.wav", 3.0, 0.2);
    lines.push(ru_line("quiet", "quiet.wav", 3.0));
    // Filtered by the manifest filters.
    lines.push(ru_line("tooshort", "g0.wav", 0.5));
    lines.push("silver,ru,golos,train,g0.wav,2.5,t,Silver,2\n".into());
    lines.push("english,en,golos,train,g0.wav,2.5,t,Gold,1\n".into());
    // Malformed rows.
    lines.push("broken,ru,golos\n".into());
    lines.push("baddur,ru,golos,train,g0.wav,abc,t,Gold,1\n".into());
    env.manifest(&lines);

    let cfg = env.config("");
    let s = env.run(&cfg);
    assert_eq!((s.manifest_malformed, s.shard_malformed), (2, 2));
    assert_eq!(s.ok, good_ids.len(), "{s:?}");
    assert_eq!(s.bad, 1, "{s:?}");
    assert_eq!(s.errored, 8, "{s:?}");
    assert_eq!(s.skipped, 0);
    assert_eq!(s.filtered, 5, "{s:?}");
    let fb = |k: &str| s.filtered_by.get(k).copied().unwrap_or(0);
    assert_eq!(
        (
            fb("duplicate_id"),
            fb("duration_mismatch"),
            fb("duration_range"),
            fb("tier"),
            fb("lang")
        ),
        (1, 1, 1, 1, 1)
    );
    let eb = |k: &str| s.errored_by_stage.get(k).copied().unwrap_or(0);
    assert_eq!(
        (eb("load"), eb("path"), eb("translate")),
        (5, 2, 1),
        "{s:?}"
    );

    let log = error_log(&cfg, 0);
    assert_eq!(log.len(), 8);
    let by_id = |id: &str| {
        log.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not logged"))
    };
    assert_eq!(by_id("missing")["stage"], "load");
    assert_eq!(by_id("nan")["stage"], "load");
    assert!(by_id("nan")["error"].as_str().unwrap().contains("nan.wav"));
    assert_eq!(by_id("escape-rel")["stage"], "path");
    assert_eq!(by_id("escape-abs")["stage"], "path");
    assert_eq!(by_id("quiet")["stage"], "translate");
    assert!(by_id("quiet")["error"].as_str().unwrap().contains("poison"));

    let dir = samples_dir(&cfg);
    let mut want: BTreeSet<String> = good_ids.iter().map(|id| safe_id(id)).collect();
    want.insert("silent".into());
    assert_eq!(
        entries(&dir),
        want,
        "one directory per written sample, nothing else"
    );
    assert_eq!(
        want.len(),
        good_ids.len() + 1,
        "awkward ids did not collide"
    );
    for id in good_ids {
        let d = dir.join(safe_id(id));
        assert_eq!(meta(&d)["id"], id);
        assert_eq!(meta(&d)["status"], "ok");
    }
    assert_eq!(
        meta(&dir.join(safe_id("ok plain")))["manifest"]["audio_path"],
        "g0.wav",
        "first duplicate kept"
    );
    let m = meta(&dir.join("silent"));
    assert_eq!(m["status"], "bad");
    let flags: Vec<&str> = m["quality_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        flags,
        [
            "empty_src_text",
            "asr_no_speech",
            "asr:no_speech",
            "empty_tgt_text",
            "silent_reference"
        ]
    );
    assert!(m["quality_reasons"]["silent_reference"]
        .as_str()
        .unwrap()
        .contains("dBFS"));
    assert!(m["speaker_similarity"].is_null(), "no target audio: {m}");
    let tok = read_npy(&dir.join("silent/tokens.npy")).unwrap();
    assert_eq!(tok.shape, vec![2, 0]);
    assert_eq!(
        std::fs::read_to_string(dir.join("silent/tgt.txt")).unwrap(),
        ""
    );
}

#[test]
fn whole_batch_failures_and_panics_fail_only_that_stage_and_are_logged() {
    for (opt, marker) in [
        ("fail_batch: true", "fail the batch"),
        ("panic: true", "panicked"),
    ] {
        let env = Env::new();
        let mut lines = Vec::new();
        for i in 0..5 {
            write_clip(&env.data(), &format!("b{i}.wav"), 2.0, 0.5);
            lines.push(ru_line(&format!("b{i}"), &format!("b{i}.wav"), 2.0));
        }
        env.manifest(&lines);
        let cfg = env.config(&format!(", options: {{{opt}}}"));
        let s = env.run(&cfg);
        assert_eq!((s.ok, s.errored), (0, 5), "{s:?}");
        assert_eq!(s.errored_by_stage.get("tts"), Some(&5));
        let log = error_log(&cfg, 0);
        assert!(
            log.iter()
                .all(|r| r["stage"] == "tts" && r["error"].as_str().unwrap().contains(marker)),
            "{log:?}"
        );
        assert!(entries(&samples_dir(&cfg)).is_empty());
    }
}

#[test]
fn quality_flags_mark_bad_samples() {
    let env = Env::new();
    // 0.3 s of target per 2.5 words... make the target far too long relative to the source by
    // a tight max ratio, and too few frames by a high min_token_frames.
    write_clip(&env.data(), "q.wav", 2.0, 0.5);
    env.manifest(&[ru_line("q", "q.wav", 2.0)]);
    let mut cfg = env.config("");
    cfg.pipeline.max_duration_ratio = 0.5;
    cfg.pipeline.min_token_frames = 100_000;
    let s = env.run(&cfg);
    assert_eq!((s.ok, s.bad), (0, 1));
    let m = meta(&samples_dir(&cfg).join("q"));
    assert_eq!(
        m["quality_flags"],
        serde_json::json!(["tokens_too_short", "duration_ratio_out_of_bounds"])
    );
}

#[cfg(unix)]
#[test]
fn symlink_mode_links_the_source_and_non_wav_sources_are_reencoded() {
    let env = Env::new();
    write_clip(&env.data(), "s.wav", 2.0, 0.5);
    env.manifest(&[ru_line("s", "s.wav", 2.0)]);
    let mut cfg = env.config("");
    cfg.pipeline.src_audio = SrcAudioMode::Symlink;
    env.run(&cfg);
    let link = samples_dir(&cfg).join("s/src.wav");
    let target = std::fs::read_link(&link).unwrap();
    assert_eq!(target, env.data().join("s.wav").canonicalize().unwrap());
    assert_eq!(meta(&samples_dir(&cfg).join("s"))["src_wav"], "symlink");

    // A source that is not a .wav file: src.wav is re-encoded from the decoded audio (the
    // decoder trusts content, not the extension, so a WAV named .bin stands in for FLAC/MP3).
    let env = Env::new();
    write_clip(&env.data(), "n.bin", 2.0, 0.5);
    env.manifest(&[ru_line("n", "n.bin", 2.0)]);
    let cfg = env.config("");
    assert_eq!(env.run(&cfg).ok, 1);
    let d = samples_dir(&cfg).join("n");
    assert!(!std::fs::symlink_metadata(d.join("src.wav"))
        .unwrap()
        .file_type()
        .is_symlink());
    let src = decode_file(d.join("src.wav"), None).unwrap();
    assert_eq!(src.sample_rate, 16_000);
    assert_eq!(src, decode_file(env.data().join("n.bin"), None).unwrap());
    assert_eq!(meta(&d)["src_wav"], "reencoded_16k");
}

#[test]
fn shards_partition_the_work_and_their_counts_add_up() {
    let env = Env::new();
    let mut lines = Vec::new();
    for i in 0..23 {
        write_clip(&env.data(), &format!("p{i}.wav"), 2.0, 0.5);
        lines.push(ru_line(&format!("p{i}"), &format!("p{i}.wav"), 2.0));
    }
    lines.push(ru_line("p3", "p4.wav", 2.0)); // duplicate id, must stay in p3's shard
    lines.push(ru_line("short", "p4.wav", 0.2));
    // Malformed rows: each counted by exactly one shard.
    lines.push("broken,ru,golos\n".into());
    lines.push("baddur,ru,golos,train,p0.wav,abc,t,Gold,1\n".into());
    env.manifest(&lines);
    let cfg = env.config("");
    let mut total = (0, 0, 0, 0);
    for idx in 0..3 {
        let s = env.run_shard(&cfg, Shard { idx, count: 3 });
        assert!(s.ok >= 4, "shards are roughly balanced: {s:?}");
        assert_eq!(s.manifest_malformed, 2, "the whole manifest's count");
        total.0 += s.ok;
        total.1 += s.filtered;
        total.2 += s.shard_rows;
        total.3 += s.shard_malformed;
        assert!(logs_dir(&cfg).join(format!("summary_{idx}.json")).is_file());
    }
    assert_eq!(total, (23, 2, 25, 2));
    assert_eq!(entries(&samples_dir(&cfg)).len(), 23);
}

fn flags_of(m: &Value) -> Vec<String> {
    m["quality_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// PCM16 rounding of `tgt.wav` moves the stats embedding by ~1e-5.
const SIMILARITY_TOL: f64 = 1e-3;

#[test]
fn speaker_similarity_is_recorded_and_gates_only_when_a_threshold_is_set() {
    let mut sims = Vec::new();
    for threshold in [None, Some(0.9999f32), Some(-1.0)] {
        let env = Env::new();
        write_clip(&env.data(), "a.wav", 2.0, 0.5);
        write_clip(&env.data(), "b.wav", 3.0, 0.8);
        env.manifest(&[ru_line("a", "a.wav", 2.0), ru_line("b", "b.wav", 3.0)]);
        let mut cfg = env.config("");
        cfg.quality.min_speaker_similarity = threshold;
        let s = env.run(&cfg);
        for id in ["a", "b"] {
            let d = samples_dir(&cfg).join(id);
            let m = meta(&d);
            let sim = m["speaker_similarity"].as_f64().unwrap();
            let src = decode_file(d.join("src.wav"), None).unwrap();
            let tgt = decode_file(d.join("tgt.wav"), None).unwrap();
            let want = cosine(
                &clip_stats(&src.samples, src.sample_rate),
                &clip_stats(&tgt.samples, tgt.sample_rate),
            );
            assert!((sim - want).abs() < SIMILARITY_TOL, "{id}: {sim} vs {want}");
            assert!(sim < 0.9999, "the doubles' voices differ: {sim}");
            sims.push(sim);
            let flags = flags_of(&m);
            match threshold {
                Some(t) if t > -1.0 => {
                    assert_eq!(flags, ["low_speaker_similarity"], "{m}");
                    assert_eq!(m["status"], "bad");
                    assert!(m["quality_reasons"]["low_speaker_similarity"]
                        .as_str()
                        .unwrap()
                        .contains("quality.min_speaker_similarity"));
                }
                _ => assert_eq!((m["status"].as_str(), flags.len()), (Some("ok"), 0), "{m}"),
            }
        }
        let bad = usize::from(threshold.is_some_and(|t| t > -1.0)) * 2;
        assert_eq!((s.ok, s.bad, s.errored), (2 - bad, bad, 0), "{s:?}");
        assert!(s.stage_s.contains_key("speaker_tgt"), "{s:?}");
    }
    // The same samples give the same similarity whatever the threshold.
    assert_eq!(sims[0..2], sims[2..4]);
    assert_eq!(sims[0..2], sims[4..6]);
}

#[test]
fn a_failing_target_embedding_is_recorded_and_flags_only_when_gated() {
    for gated in [false, true] {
        let env = Env::new();
        write_clip(&env.data(), "a.wav", 2.0, 0.5);
        env.manifest(&[ru_line("a", "a.wav", 2.0)]);
        let extra = if gated {
            "quality:\n  min_speaker_similarity: 0.5\n"
        } else {
            ""
        };
        // The speaker double embeds the 16 kHz source but fails on the 24 kHz target.
        let yaml = config_yaml(&env.root, "", extra).replace(
            "speaker: {kind: test-stats}",
            "speaker: {kind: test-stats, options: {fail_rate: 24000}}",
        );
        let cfg = Config::from_yaml_str(&yaml, "test").unwrap();
        let s = env.run(&cfg);
        assert_eq!((s.ok + s.bad, s.errored), (1, 0), "{s:?}");
        let m = meta(&samples_dir(&cfg).join("a"));
        assert!(m["speaker_similarity"].is_null(), "{m}");
        assert!(m["speaker_similarity_error"]
            .as_str()
            .unwrap()
            .contains("24000 Hz"));
        if gated {
            assert_eq!(flags_of(&m), ["speaker_similarity_unavailable"], "{m}");
        } else {
            assert_eq!(m["status"], "ok", "{m}");
        }
    }
}

#[test]
fn bad_inputs_are_flagged_per_sample_and_the_run_goes_on() {
    let env = Env::new();
    let data = env.data();
    write_clip(&data, "fine.wav", 2.0, 0.5);
    // Peak in [0.3, 0.35): the doubles translate it to whitespace only.
    write_clip(&data, "blank.wav", 2.0, 0.32);
    // Shorter than quality.min_reference_s = 1 s.
    write_clip(&data, "short.wav", 0.6, 0.5);
    // Audible to the ASR double, but about -73 dBFS RMS.
    write_clip(&data, "quiet.wav", 2.0, 3e-4);
    // Digital silence: whitespace-only transcript.
    write_clip(&data, "silent.wav", 2.0, 0.0);
    env.manifest(&[
        ru_line("fine", "fine.wav", 2.0),
        ru_line("blank", "blank.wav", 2.0),
        ru_line("short", "short.wav", 0.6),
        ru_line("quiet", "quiet.wav", 2.0),
        ru_line("silent", "silent.wav", 2.0),
    ]);
    let mut cfg = env.config("");
    cfg.pipeline.min_duration = 0.1;
    let s = env.run(&cfg);
    assert_eq!((s.ok, s.bad, s.errored, s.filtered), (1, 4, 0, 0), "{s:?}");
    let dir = samples_dir(&cfg);
    let m = |id: &str| meta(&dir.join(id));
    assert_eq!(m("fine")["status"], "ok");

    let blank = m("blank");
    assert_eq!(flags_of(&blank), ["empty_tgt_text"], "{blank}");
    assert!(blank["quality_reasons"]["empty_tgt_text"]
        .as_str()
        .unwrap()
        .contains("whitespace"));
    assert_eq!(
        std::fs::read_to_string(dir.join("blank/tgt.txt")).unwrap(),
        ""
    );
    assert!(!std::fs::read_to_string(dir.join("blank/src.txt"))
        .unwrap()
        .is_empty());

    let short = m("short");
    assert_eq!(flags_of(&short), ["short_reference"], "{short}");
    assert!(short["quality_reasons"]["short_reference"]
        .as_str()
        .unwrap()
        .contains("0.600 s"));
    let quiet = m("quiet");
    assert_eq!(flags_of(&quiet), ["silent_reference"], "{quiet}");
    assert!(quiet["src_rms_dbfs"].as_f64().unwrap() < -60.0);
    // Both still got a target voice, synthesised without their unfit reference.
    for id in ["short", "quiet"] {
        assert!(!decode_file(dir.join(id).join("tgt.wav"), None)
            .unwrap()
            .samples
            .is_empty());
    }
    assert_eq!(
        env.factory
            .calls
            .tts_without_reference
            .load(Ordering::SeqCst),
        2
    );

    let silent = m("silent");
    assert_eq!(
        flags_of(&silent),
        [
            "empty_src_text",
            "asr_no_speech",
            "asr:no_speech",
            "empty_tgt_text",
            "silent_reference"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("silent/src.txt")).unwrap(),
        ""
    );
    assert!(silent["quality_reasons"]["empty_src_text"]
        .as_str()
        .unwrap()
        .contains("whitespace"));
}

#[test]
fn an_unfit_reference_ends_bad_not_errored_with_a_tts_that_needs_one() {
    // espeak+openvoice refuses a request without a reference; a silent or short source must
    // still end `bad` with its reference flag, as with plain espeak, and never fail a batch
    // shared with fine clips.
    let env = Env::new();
    let data = env.data();
    write_clip(&data, "fine.wav", 2.0, 0.5);
    write_clip(&data, "quiet.wav", 2.0, 3e-4);
    write_clip(&data, "short.wav", 0.6, 0.5);
    env.manifest(&[
        ru_line("fine", "fine.wav", 2.0),
        ru_line("quiet", "quiet.wav", 2.0),
        ru_line("short", "short.wav", 0.6),
    ]);
    let mut cfg = env.config(", options: {needs_reference: true}");
    cfg.pipeline.min_duration = 0.1;
    let s = env.run(&cfg);
    assert_eq!((s.ok, s.bad, s.errored), (1, 2, 0), "{s:?}");
    let dir = samples_dir(&cfg);
    let quiet = meta(&dir.join("quiet"));
    assert_eq!(
        flags_of(&quiet),
        ["empty_tgt_audio", "silent_reference"],
        "{quiet}"
    );
    assert!(quiet["quality_reasons"]["empty_tgt_audio"]
        .as_str()
        .unwrap()
        .contains("no reference clip"));
    let short = meta(&dir.join("short"));
    assert_eq!(flags_of(&short), ["empty_tgt_audio", "short_reference"]);
    assert_eq!(meta(&dir.join("fine"))["status"], "ok");
}

#[test]
fn the_error_log_keeps_one_entry_per_id_with_its_attempt_count_across_restarts() {
    let env = Env::new();
    let mut lines = Vec::new();
    for i in 0..3 {
        write_clip(&env.data(), &format!("e{i}.wav"), 2.0, 0.5);
        lines.push(ru_line(&format!("e{i}"), &format!("e{i}.wav"), 2.0));
    }
    env.manifest(&lines);
    let cfg = env.config(", options: {fail_batch: true}");
    let log = logs_dir(&cfg).join("errors_0.log");
    let entries_of = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for attempt in 1..=3u64 {
        let s = env.run(&cfg);
        assert_eq!(s.errored, 3, "{s:?}");
        let e = entries_of();
        assert_eq!(e.len(), 3, "one entry per id after run {attempt}: {e:?}");
        let ids: BTreeSet<&str> = e.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3);
        for r in &e {
            assert_eq!(r["attempts"], attempt, "{r}");
            assert_eq!(r["stage"], "tts");
        }
    }
    // A log left by a crash or by an older version (repeated lines, no `attempts`) is compacted.
    let old = std::fs::read_to_string(&log).unwrap();
    let legacy = r#"{"id":"e0","manifest_line":2,"stage":"asr","error":"x","time_unix":0}"#;
    std::fs::write(&log, format!("{old}{legacy}\n{legacy}\n")).unwrap();
    env.run(&cfg);
    let e = entries_of();
    assert_eq!(e.len(), 3, "{e:?}");
    let e0 = e.iter().find(|r| r["id"] == "e0").unwrap();
    assert_eq!(
        e0["attempts"], 6,
        "3 runs + 2 legacy lines + this run: {e0}"
    );
}
