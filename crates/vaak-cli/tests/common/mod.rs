//! Running the `vaak` binary as a real process, shared by the CLI tests.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `vaak` with `args`, logging at info and without a model from the environment.
pub fn vaak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("VAAK_S2S_MODEL")
        .output()
        .expect("the vaak binary starts")
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output of a run that must succeed (its text in the panic message when it does not).
pub fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    t
}
