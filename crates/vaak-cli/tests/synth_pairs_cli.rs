//! `vaak data synth --parallel` / `--dialogue` as real processes (with espeak-ng), then
//! `vaak train s2s --stage s2s` on what they wrote; and the argument errors.

mod common;

use common::{ok, text, vaak};

const TRAIN: [&str; 12] = [
    "--preset",
    "tiny",
    "--batch",
    "2",
    "--codebooks",
    "2",
    "--steps",
    "2",
    "--lr",
    "0.003",
    "--no-progress",
    "--stage",
];

#[test]
fn synth_parallel_then_dialogue_then_train_s2s_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let (syn, data) = (p("syn"), p("syn/data"));
    let t = ok(vaak(&[
        "data",
        "synth",
        "--parallel",
        "--direction",
        "enru",
        "--utterances",
        "4",
        "--seed",
        "3",
        "--jobs",
        "2",
        "--out",
        &syn,
        "--no-progress",
    ]));
    assert!(t.contains("\"written\": 4"), "{t}");
    let t = ok(vaak(&[
        "data",
        "synth",
        "--dialogue",
        "--langs",
        "en,te",
        "--utterances",
        "2",
        "--out",
        &syn,
        "--no-progress",
    ]));
    assert!(t.contains("\"written\": 2"), "{t}");
    for d in ["enru", "enen", "tete"] {
        assert!(dir.path().join("syn/data/parallel").join(d).is_dir(), "{d}");
    }

    let mut args = vec!["train", "s2s", "--data", &data];
    let out = p("run");
    args.extend(["--out", &out]);
    args.extend(TRAIN);
    args.push("s2s");
    let t = ok(vaak(&args));
    assert!(t.contains("6 used, 0 skipped"), "{t}");
    assert!(t.contains("trained 2 steps of stage s2s"), "{t}");
}

#[test]
fn synth_pair_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let o = vaak(&[
        "data",
        "synth",
        "--parallel",
        "--utterances",
        "2",
        "--out",
        &out,
    ]);
    assert!(!o.status.success() && text(&o).contains("--direction"));
    let o = vaak(&[
        "data",
        "synth",
        "--parallel",
        "--direction",
        "enen",
        "--utterances",
        "2",
        "--out",
        &out,
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("enen"), "{t}");
    let o = vaak(&["data", "synth", "--dialogue", "--hours", "1", "--out", &out]);
    assert!(!o.status.success());
    let o = vaak(&["data", "synth", "--help"]);
    let t = ok(o);
    assert!(t.contains("--parallel") && t.contains("voice id"), "{t}");
}
