//! `prepare`: decodes, resamples to 16 kHz mono FLAC, links rows to their sources, resumes.

mod common;

use vaak_audio::io::{decode_file, probe_info};
use vaak_data::atomic::temp_name;
use vaak_data::corpus::{read_corpus, write_corpus};
use vaak_data::prepare::{output_rel_path, prepare, PrepareConfig};

fn quiet(_: f64) {}

#[test]
fn prepares_every_row_at_16k_mono_flac() {
    let d = tempfile::tempdir().unwrap();
    let (m, rows) = common::corpus(d.path(), 5, 44_100);
    let mut cfg = PrepareConfig::new(d.path().join("out"));
    cfg.jobs = 2;
    cfg.loudness_lufs = Some(-23.0);
    let s = prepare(&m, &cfg, &quiet).unwrap();
    assert_eq!((s.rows, s.written, s.skipped_done), (5, 5, 0));
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    let out = read_corpus(&s.manifest).unwrap();
    assert_eq!(out.rows.len(), 5);
    for (src, r) in rows.iter().zip(&out.rows) {
        assert_eq!(r.id, src.id);
        assert_eq!(r.source_id.as_deref(), Some(src.id.as_str()));
        assert_eq!(r.text, src.text);
        assert_eq!(r.speaker, src.speaker);
        assert_eq!(r.audio_path, output_rel_path(&src.id));
        assert_eq!((r.sample_rate, r.channels), (Some(16_000), Some(1)));
        let a = decode_file(d.path().join("out").join(&r.audio_path), None).unwrap();
        assert_eq!(a.sample_rate, 16_000);
        let info = probe_info(d.path().join("out").join(&r.audio_path)).unwrap();
        assert_eq!((info.codec.as_str(), info.channels), ("flac", 1));
        assert!((a.duration_s() - src.duration_s).abs() < 0.01, "{}", r.id);
        assert!((r.duration_s - a.duration_s()).abs() < 1e-9);
    }
}

#[test]
fn a_rerun_keeps_done_files_and_redoes_missing_and_half_written_ones() {
    let d = tempfile::tempdir().unwrap();
    let (m, _) = common::corpus(d.path(), 4, 22_050);
    let out = d.path().join("out");
    let mut cfg = PrepareConfig::new(&out);
    cfg.jobs = 1;
    prepare(&m, &cfg, &quiet).unwrap();
    // u001: the final file lost and a half-written temporary left behind; u002: a final file
    // that does not decode (e.g. written by something else).
    let f1 = out.join(output_rel_path("u001"));
    std::fs::remove_file(&f1).unwrap();
    std::fs::write(temp_name(&f1), b"fLaC half").unwrap();
    std::fs::write(out.join(output_rel_path("u002")), b"garbage").unwrap();
    std::fs::remove_file(out.join("manifest.jsonl")).unwrap();
    let s = prepare(&m, &cfg, &quiet).unwrap();
    assert_eq!((s.written, s.skipped_done), (2, 2));
    assert!(!temp_name(&f1).exists());
    let rows = read_corpus(&s.manifest).unwrap().rows;
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let a = decode_file(out.join(&r.audio_path), None).unwrap();
        assert_eq!(a.sample_rate, 16_000);
    }
}

#[test]
fn trimming_shortens_padded_clips_and_failures_are_reported_per_row() {
    let d = tempfile::tempdir().unwrap();
    let (m, mut rows) = common::corpus(d.path(), 2, 16_000);
    let mut padded = vec![0f32; 16_000];
    padded.extend(common::voice(8_000, 16_000, 150.0));
    padded.extend(vec![0f32; 16_000]);
    vaak_audio::io::write_wav(
        d.path().join("wav/pad.wav"),
        &padded,
        16_000,
        vaak_audio::io::WavFormat::Float32,
    )
    .unwrap();
    rows.push(common::row("pad", "wav/pad.wav", 2.5, None));
    rows.push(common::row("pq", "x.parquet#row=3", 1.0, None));
    rows.push(common::row("gone", "wav/missing.wav", 1.0, None));
    write_corpus(&m, &rows).unwrap();
    let mut cfg = PrepareConfig::new(d.path().join("out"));
    cfg.trim_silence = true;
    let s = prepare(&m, &cfg, &quiet).unwrap();
    let failed: Vec<&str> = s.failed.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(failed, ["gone", "pq"]);
    assert!(
        s.failed[1].reason.contains("parquet"),
        "{}",
        s.failed[1].reason
    );
    let out = read_corpus(&s.manifest).unwrap().rows;
    assert_eq!(out.len(), 3);
    let pad = out.iter().find(|r| r.id == "pad").unwrap();
    assert!((0.5..0.7).contains(&pad.duration_s), "{}", pad.duration_s);
}
