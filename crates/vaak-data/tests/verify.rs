//! `verify` on a clean corpus finds nothing; each planted defect is found, and only it.

mod common;

use std::path::Path;

use common::*;
use vaak_data::corpus::{read_corpus, write_corpus, CorpusManifest, CorpusRow};
use vaak_data::verify::{render_table, verify, VerifyOptions, VerifyReport};

fn row(
    id: &str,
    audio: &str,
    frames: usize,
    rate: u32,
    text: &str,
    spk: &str,
    split: &str,
) -> CorpusRow {
    CorpusRow {
        id: id.into(),
        lang: "te".into(),
        dataset: "test".into(),
        split: split.into(),
        audio_path: audio.into(),
        duration_s: frames as f64 / f64::from(rate),
        text: text.into(),
        speaker: Some(spk.into()),
        sample_rate: Some(rate),
        channels: Some(1),
        source_id: None,
        augment: None,
    }
}

/// Four WAVs, a FLAC and two parquet cells, all fine.
fn clean(root: &Path) -> Vec<CorpusRow> {
    write_wav(&root.join("a.wav"), 16000, 16000, 1);
    write_wav(&root.join("b.wav"), 8000, 16000, 1);
    write_wav(&root.join("c.wav"), 4000, 16000, 1);
    write_wav(&root.join("d.wav"), 4000, 16000, 1);
    write_flac(&root.join("e.flac"), 8192, 16000);
    write_parquet(
        &root.join("pq/train-0.parquet"),
        &Shard {
            audio_col: "audio",
            hf_struct: true,
            str_cols: &["text"],
            rows: vec![
                (
                    Some(wav_bytes(3200, 16000, 1)),
                    "p0.wav".into(),
                    vec![Some("x".into())],
                ),
                (
                    Some(flac_bytes(4096, 16000)),
                    "p1.flac".into(),
                    vec![Some("y".into())],
                ),
            ],
            groups: &[1, 1],
        },
    );
    vec![
        row("a", "a.wav", 16000, 16000, "ఒకటి", "s1", "train"),
        row("b", "b.wav", 8000, 16000, "రెండు", "s1", "train"),
        row("c", "c.wav", 4000, 16000, "మూడు", "s2", "dev"),
        row("d", "d.wav", 4000, 16000, "నాలుగు", "s2", "dev"),
        row("e", "e.flac", 8192, 16000, "ఐదు", "s3", "train"),
        row(
            "p0",
            "pq/train-0.parquet#row=0",
            3200,
            16000,
            "x",
            "s3",
            "train",
        ),
        row(
            "p1",
            "pq/train-0.parquet#row=1",
            4096,
            16000,
            "y",
            "s3",
            "train",
        ),
    ]
}

fn run(rows: Vec<CorpusRow>, root: &Path, opts: &VerifyOptions) -> VerifyReport {
    let m = root.join("manifest.jsonl");
    write_corpus(&m, &rows).unwrap();
    verify(&read_corpus(&m).unwrap(), root, opts)
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        jobs: 2,
        ..VerifyOptions::default()
    }
}

#[test]
fn clean_corpus_has_no_findings() {
    let t = tempfile::tempdir().unwrap();
    let rep = run(clean(t.path()), t.path(), &opts());
    assert_eq!(
        (rep.errors, rep.warnings),
        (0, 0),
        "{}",
        render_table(&rep, 20)
    );
    assert_eq!(rep.rows, 7);
    assert_eq!(rep.speakers, 3);
    let secs = (16000 + 8000 + 4000 + 4000 + 8192 + 3200 + 4096) as f64 / 16000.0;
    assert!((rep.hours * 3600.0 - secs).abs() < 1e-9);
    assert!((rep.decoded_hours * 3600.0 - secs).abs() < 1e-6);
    assert_eq!(rep.by_split["dev"].rows, 2);
    assert!((rep.by_split["dev"].hours * 3600.0 - 0.5).abs() < 1e-9);
    assert_eq!(rep.by_lang["te"].rows, 7);
    assert_eq!(rep.by_speaker["s3"].rows, 3);
    assert_eq!(rep.sample_rates.get("16000"), Some(&7));
    assert_eq!(rep.channels.get("1"), Some(&7));
    let table = render_table(&rep, 20);
    assert!(table.contains("errors 0, warnings 0"), "{table}");
}

#[test]
fn each_planted_defect_is_found() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let mut rows = clean(root);
    // Corrupt: b.wav cut in the middle of its data.
    let b = std::fs::read(root.join("b.wav")).unwrap();
    std::fs::write(root.join("b.wav"), &b[..b.len() / 2]).unwrap();
    // Wrong rate: c.wav at 22050 Hz.
    write_wav(&root.join("c.wav"), 4000, 22050, 1);
    rows[2].duration_s = 4000.0 / 22050.0;
    // Stereo: d.wav with two channels.
    write_wav(&root.join("d.wav"), 4000, 16000, 2);
    // Empty text, duplicate id, duration mismatch.
    rows[4].text = "  ".into();
    rows[6].id = "p0".into();
    rows[0].duration_s = 3.0;
    let rep = run(rows, root, &opts());
    let ids =
        |v: &[vaak_data::verify::RowProblem]| v.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&rep.decode_failures),
        vec!["b"],
        "{:?}",
        rep.decode_failures
    );
    assert!(
        rep.decode_failures[0].reason.contains("truncated"),
        "{:?}",
        rep.decode_failures
    );
    assert_eq!(ids(&rep.off_rate), vec!["c"]);
    assert_eq!(rep.off_rate[0].reason, "22050 Hz, expected 16000 Hz");
    assert_eq!(ids(&rep.multi_channel), vec!["d"]);
    assert_eq!(rep.empty_texts, vec!["e"]);
    assert_eq!(rep.duplicate_ids.len(), 1);
    assert_eq!(
        (rep.duplicate_ids[0].id.as_str(), rep.duplicate_ids[0].count),
        ("p0", 2)
    );
    assert_eq!(rep.duration_mismatches.len(), 1);
    let d = &rep.duration_mismatches[0];
    assert_eq!(
        (d.id.as_str(), d.manifest_s, d.header_s, d.decoded_s),
        ("a", 3.0, Some(1.0), 1.0)
    );
    assert_eq!(rep.sample_rates.get("22050"), Some(&1));
    assert_eq!(rep.channels.get("2"), Some(&1));
    // Rate and channels are warnings unless asked for.
    assert_eq!((rep.errors, rep.warnings), (4, 2));
    let strict = VerifyOptions {
        expected_rate: Some(16000),
        require_mono: true,
        ..opts()
    };
    let m = CorpusManifest {
        rows: read_corpus(&root.join("manifest.jsonl")).unwrap().rows,
        malformed: Vec::new(),
    };
    let rep2 = verify(&m, root, &strict);
    assert_eq!((rep2.errors, rep2.warnings), (6, 0));
    let table = render_table(&rep, 20);
    for needle in [
        "decode failures",
        "b (b.wav)",
        "c: 22050 Hz",
        "d: 2 channels",
        "p0 x2",
        "a: manifest 3.000 s, header 1.000 s, decoded 1.000 s",
    ] {
        assert!(table.contains(needle), "{needle:?} not in\n{table}");
    }
    // The JSON form has every list.
    let v = serde_json::to_value(&rep).unwrap();
    assert_eq!(v["decode_failures"][0]["id"], "b");
    assert_eq!(v["errors"], 4);
}

#[test]
fn missing_audio_bad_refs_and_malformed_lines_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write_wav(&root.join("a.wav"), 1600, 16000, 1);
    let m = root.join("m.jsonl");
    let good = serde_json::to_string(&row("a", "a.wav", 1600, 16000, "t", "s", "train")).unwrap();
    let gone =
        serde_json::to_string(&row("g", "gone.wav", 1600, 16000, "t", "s", "train")).unwrap();
    let esc = serde_json::to_string(&row("x", "../x.wav", 1600, 16000, "t", "s", "train")).unwrap();
    let pq = serde_json::to_string(&row(
        "q",
        "nope.parquet#row=3",
        1600,
        16000,
        "t",
        "s",
        "train",
    ))
    .unwrap();
    std::fs::write(&m, format!("{good}\n{{not json\n{gone}\n{esc}\n{pq}\n")).unwrap();
    let rep = verify(&read_corpus(&m).unwrap(), root, &opts());
    assert_eq!(rep.rows, 4);
    assert_eq!(rep.malformed_lines.len(), 1);
    assert_eq!(rep.malformed_lines[0].line, 2);
    let failed: Vec<_> = rep.decode_failures.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(failed, vec!["g", "x", "q"]);
    assert!(
        rep.decode_failures[1].reason.contains(".."),
        "{:?}",
        rep.decode_failures
    );
    assert_eq!(rep.errors, 4);
}
