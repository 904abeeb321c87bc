//! `split`: speaker-disjoint, near the ratios by hours, seeded.

use std::collections::{HashMap, HashSet};

use vaak_data::corpus::{read_corpus, write_corpus, CorpusRow};
use vaak_data::split::{assign, split};

fn rows() -> Vec<CorpusRow> {
    let mut out = Vec::new();
    for s in 0..60 {
        for u in 0..(3 + s % 5) {
            out.push(CorpusRow {
                id: format!("s{s}-u{u}"),
                lang: "te".into(),
                dataset: "t".into(),
                split: "all".into(),
                audio_path: format!("a/s{s}-u{u}.flac"),
                duration_s: 2.0 + ((s * 7 + u * 3) % 11) as f64,
                text: String::new(),
                speaker: Some(format!("spk{s}")),
                sample_rate: None,
                channels: None,
                source_id: None,
                augment: None,
            });
        }
    }
    for i in 0..20 {
        let mut r = out[0].clone();
        r.id = format!("anon{i}");
        r.speaker = None;
        out.push(r);
    }
    out
}

#[test]
fn splits_are_speaker_disjoint_near_the_ratios_and_seeded() {
    let rows = rows();
    let parts = assign(&rows, [0.8, 0.1, 0.1], 5).unwrap();
    let total: f64 = rows.iter().map(|r| r.duration_s).sum();
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for (s, idx) in parts.iter().enumerate() {
        let hours: f64 = idx.iter().map(|&i| rows[i].duration_s).sum();
        let want = [0.8, 0.1, 0.1][s];
        assert!(
            (hours / total - want).abs() < 0.03,
            "split {s}: {}",
            hours / total
        );
        for &i in idx {
            assert!(seen.insert(i), "row {i} twice");
            if let Some(spk) = &rows[i].speaker {
                assert_eq!(
                    *owner.entry(spk.clone()).or_insert(s),
                    s,
                    "{spk} in two splits"
                );
            }
        }
    }
    assert_eq!(seen.len(), rows.len());
    assert_eq!(parts, assign(&rows, [0.8, 0.1, 0.1], 5).unwrap());
    assert_ne!(parts, assign(&rows, [0.8, 0.1, 0.1], 6).unwrap());
    assert!(assign(&rows, [0.0, 0.0, 0.0], 5).is_err());
    assert!(assign(&rows, [1.0, -0.1, 0.1], 5).is_err());
}

#[test]
fn writes_three_manifests_with_rewritten_splits() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m.jsonl");
    let rows = rows();
    write_corpus(&m, &rows).unwrap();
    let stats = split(&m, &d.path().join("out"), [0.5, 0.25, 0.25], 1).unwrap();
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["train", "val", "test"]);
    assert_eq!(stats.iter().map(|s| s.rows).sum::<usize>(), rows.len());
    for s in &stats {
        let back = read_corpus(&s.path).unwrap().rows;
        assert_eq!(back.len(), s.rows);
        assert!(s.speakers > 0);
        for r in &back {
            assert_eq!(r.split, s.name);
            let mut orig = rows.iter().find(|o| o.id == r.id).unwrap().clone();
            orig.split = s.name.clone();
            assert_eq!(r, &orig, "every other field unchanged");
        }
    }
}
