//! `vaak data manifest` and `vaak data verify` as a user runs them.

mod common;

use std::path::Path;

use common::{ok, text, vaak};
use vaak_audio::io::{write_wav, WavFormat};

fn tone(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.05).sin() * 0.3).collect()
}

/// LJSpeech-1.1 with two clips and one malformed metadata line.
fn ljspeech(root: &Path) -> std::path::PathBuf {
    let d = root.join("LJSpeech-1.1");
    std::fs::create_dir_all(d.join("wavs")).unwrap();
    std::fs::write(
        d.join("metadata.csv"),
        "LJ001-0001|Printing|Printing\nLJ001-0002|in 1450|in fourteen fifty\nLJ001-0003\n",
    )
    .unwrap();
    write_wav(
        d.join("wavs/LJ001-0001.wav"),
        &tone(22050),
        22050,
        WavFormat::Pcm16,
    )
    .unwrap();
    write_wav(
        d.join("wavs/LJ001-0002.wav"),
        &tone(11025),
        22050,
        WavFormat::Pcm16,
    )
    .unwrap();
    d
}

#[test]
fn manifest_then_verify_then_a_defect_under_strict() {
    let t = tempfile::tempdir().unwrap();
    let d = ljspeech(t.path());
    let out = d.join("m.jsonl");
    let o = ok(vaak(&[
        "data",
        "manifest",
        "ljspeech",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--csv",
        "--no-progress",
    ]));
    assert!(
        o.contains("ljspeech: 2 rows, 0.000 h, from 1 index file(s) with 3 entries; 1 skipped"),
        "{o}"
    );
    assert!(
        o.contains("metadata.csv:3: expected 'ID|raw text|normalized text'"),
        "{o}"
    );
    let rows = vaak_data::corpus::read_corpus(&out).unwrap().rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[1].id.as_str(),
            rows[1].duration_s,
            rows[1].text.as_str()
        ),
        ("LJ001-0002", 0.5, "in fourteen fifty")
    );
    assert_eq!(
        vaak_data::corpus::read_corpus(&d.join("m.csv"))
            .unwrap()
            .rows,
        rows
    );

    let json = t.path().join("report.json");
    let o = ok(vaak(&[
        "data",
        "verify",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--strict",
        "--no-progress",
    ]));
    assert!(o.contains("errors 0, warnings 0"), "{o}");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rep["rows"], 2);
    assert_eq!(rep["speakers"], 1);

    // A damaged clip: reported; an error exit only with --strict.
    std::fs::write(d.join("wavs/LJ001-0002.wav"), b"RIFF garbage").unwrap();
    let o = ok(vaak(&[
        "data",
        "verify",
        out.to_str().unwrap(),
        "--no-progress",
    ]));
    assert!(
        o.contains("decode failures") && o.contains("LJ001-0002"),
        "{o}"
    );
    let r = vaak(&[
        "data",
        "verify",
        out.to_str().unwrap(),
        "--strict",
        "--no-progress",
    ]);
    assert!(!r.status.success());
    assert!(text(&r).contains("verify found 1 error(s)"), "{}", text(&r));
}

#[test]
fn wrong_recipe_missing_dir_and_unknown_recipe_are_explained() {
    let t = tempfile::tempdir().unwrap();
    let d = ljspeech(t.path());
    let out = t.path().join("x.jsonl");
    let r = vaak(&[
        "data",
        "manifest",
        "librispeech",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(!r.status.success());
    let e = text(&r);
    assert!(
        e.contains("no *.trans.txt under the directory") && e.contains("maybe ljspeech?"),
        "{e}"
    );
    assert!(!out.exists());
    let r = vaak(&[
        "data",
        "manifest",
        "vctk",
        t.path().join("nope").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(text(&r).contains("cannot open it"), "{}", text(&r));
    let r = vaak(&[
        "data",
        "manifest",
        "libri",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        text(&r).contains("unknown recipe 'libri'; known recipes: librispeech, common_voice"),
        "{}",
        text(&r)
    );
    let r = vaak(&[
        "data",
        "verify",
        t.path().join("none.jsonl").to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(text(&r).contains("reading the manifest"), "{}", text(&r));
}
