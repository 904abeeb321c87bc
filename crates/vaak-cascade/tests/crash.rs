//! Crash test: the cascade runs as a real child process (this test binary re-executed with
//! `CASCADE_CRASH_ROOT` set), is killed with SIGKILL at several pseudo-random moments, restarted,
//! and finally allowed to finish. Teachers are the TEST DOUBLES of `common/mod.rs`, the TTS
//! slowed down so kills land mid-run.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vaak_cascade::{run_invocation, Invocation, Outcome, Summary};
use vaak_data::parallel::{DONE_FILE, SAMPLE_FILES, TMP_PREFIX};

const ROOT_ENV: &str = "CASCADE_CRASH_ROOT";
const N: usize = 60;
const KILLS: usize = 5;

/// The child: a full cascade run. A no-op unless spawned by `kill_9_and_restart_...`.
#[test]
fn crash_child_process() {
    let Ok(root) = std::env::var(ROOT_ENV) else {
        return;
    };
    let inv = Invocation {
        config: Some(Path::new(&root).join("config.yaml")),
        ..Default::default()
    };
    let out = run_invocation(&inv, &DoubleFactory::default(), |_| None).unwrap();
    assert!(matches!(out, Outcome::Ran(_)));
}

fn spawn_child(root: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROOT_ENV, root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Checks what a crash may leave: finished dirs are complete; anything else is a temp dir or
/// an unfinished dir without DONE. Returns the ids with DONE.
fn check_invariants(dir: &Path) -> BTreeSet<String> {
    let mut done = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return done;
    };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let p = e.path();
        if p.join(DONE_FILE).is_file() {
            for f in SAMPLE_FILES {
                assert!(p.join(f).is_file(), "{name} has DONE but no {f}");
            }
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.join("meta.json")).unwrap())
                    .unwrap_or_else(|e| panic!("{name}: meta.json unreadable: {e}"));
            assert_eq!(m["id"], name);
            done.insert(name);
        }
    }
    done
}

#[test]
fn kill_9_and_restart_leaves_exactly_one_complete_dir_per_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut csv = RU_HEADER.to_string();
    for i in 0..N {
        write_clip(&root.join("data"), &format!("k{i:02}.wav"), 2.0, 0.5);
        csv.push_str(&ru_line(&format!("k{i:02}"), &format!("k{i:02}.wav"), 2.0));
    }
    // Ineligible rows must never get a directory.
    csv.push_str(&ru_line("too-short", "k00.wav", 0.3));
    std::fs::write(root.join("manifest.csv"), csv).unwrap();
    let yaml = config_yaml(
        root,
        ", options: {delay_ms: 30}",
        "batch: {asr: 4, translator: 4, speaker: 4, tts: 2, codec: 4}\n",
    );
    std::fs::write(root.join("config.yaml"), yaml).unwrap();
    let dir = root.join("out/data/parallel/ruen");

    // Kill points: after a pseudo-random number of new DONE samples (1..=6) plus a
    // pseudo-random 0..40 ms, so every kill lands mid-run whatever the machine's speed,
    // at a different phase of load / model / write work each time.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut prev_done = 0;
    for k in 0..KILLS {
        let step = 1 + rand(6) as usize;
        let extra_ms = rand(40);
        let mut child = spawn_child(root);
        let t0 = Instant::now();
        while check_invariants(&dir).len() < prev_done + step {
            assert!(
                child.try_wait().unwrap().is_none(),
                "kill {k}: child exited early"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "kill {k}: no progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        let done = check_invariants(&dir);
        eprintln!("kill {k}: {} done", done.len());
        assert!(
            done.len() >= prev_done + step,
            "finished samples never disappear"
        );
        assert!(done.len() < N, "kill {k} should land mid-run");
        prev_done = done.len();
    }
    let done_before = check_invariants(&dir);

    let mut child = spawn_child(root);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            panic!("final run did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "final run failed: {status}");

    let done = check_invariants(&dir);
    let want: BTreeSet<String> = (0..N).map(|i| format!("k{i:02}")).collect();
    assert_eq!(done, want);
    let all: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(all, want, "no temp or extra dirs remain");
    let s: Summary =
        serde_json::from_slice(&std::fs::read(root.join("out/logs/ruen/summary_0.json")).unwrap())
            .unwrap();
    assert_eq!(
        s.skipped,
        done_before.len(),
        "exactly the DONE samples were skipped"
    );
    assert_eq!(s.ok, N - done_before.len(), "everything else was (re)done");
    assert_eq!((s.errored, s.filtered), (0, 1));
}
