//! The system check end to end: `run_check` starts a server on loopback with a random tiny S2S
//! model and the bundled codec, and every check in its table passes.

use vaak_server::check::{run_check, CheckOptions};
use vaak_server::client;
use vaak_server::ServeConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_check_passes_on_a_working_server() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-s2s");
    client::write_random_s2s(&model, "tiny", 2, 3).expect("writing a random tiny S2S model");
    let cfg = ServeConfig {
        s2s: model.to_str().unwrap().to_string(),
        ..ServeConfig::default()
    };
    let opts = CheckOptions {
        // This is a correctness check on a shared, loaded CI machine: the latency row must
        // be measured, not fast. `vaak check` uses the 400 ms target.
        target_ms: 60_000.0,
        ..CheckOptions::default()
    };
    let rep = run_check(cfg, &opts).await;
    let table = rep.table();
    eprintln!("{table}");
    let names: Vec<&str> = rep.rows.iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        ["server", "codec", "model", "voices", "context", "barge-in", "latency"]
    );
    assert!(rep.passed(), "the check failed:\n{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_check_fails_without_a_model() {
    let cfg = ServeConfig {
        s2s: "none".into(),
        ..ServeConfig::default()
    };
    let rep = run_check(cfg, &CheckOptions::default()).await;
    let table = rep.table();
    eprintln!("{table}");
    assert!(!rep.passed(), "{table}");
    let row = |n: &str| rep.rows.iter().find(|r| r.name == n).unwrap().clone();
    assert!(row("server").pass, "{table}");
    assert!(row("codec").pass, "echo works without a model: {table}");
    assert!(!row("model").pass, "{table}");
}
