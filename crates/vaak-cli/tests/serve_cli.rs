//! `vaak serve` as a process: the default config, flag validation, the refused public bind,
//! and servers (echo only, and the defaults with the bundled models) that start, answer /health
//! and stop.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use common::{ok, text, vaak};

#[test]
fn print_default_config_is_a_valid_serve_toml() {
    let t = ok(vaak(&["serve", "--print-default-config"]));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("serve.toml");
    std::fs::write(&p, t.as_bytes()).unwrap();
    assert!(t.contains("port = 8998"), "{t}");
    assert!(t.contains("[vad]"), "{t}");
    // The file is read back (an unknown key would be named).
    std::fs::write(&p, format!("{t}\nbogus_key = 1\n")).unwrap();
    let o = vaak(&["serve", "--config", p.to_str().unwrap(), "--s2s", "none"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("bogus_key"), "{}", text(&o));
}

#[test]
fn public_bind_without_key_and_origin_is_refused() {
    let o = vaak(&["serve", "--host", "0.0.0.0", "--s2s", "none", "--port", "0"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("--api-key") && t.contains("--allow-origin"),
        "{t}"
    );
}

#[test]
fn pipeline_without_its_models_names_the_missing_key() {
    let o = vaak(&["serve", "--pipeline", "converse", "--port", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pipeline.asr.weights"), "{}", text(&o));
    let o = vaak(&[
        "serve",
        "--pipeline",
        "converse",
        "--asr",
        "/nonexistent/whisper",
        "--tts-converter",
        "none",
        "--port",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pipeline.llm.base_url"), "{}", text(&o));
    let o = vaak(&["serve", "--pipeline", "chat"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("translate, converse"), "{}", text(&o));
}

/// Starts `vaak serve ARGS --port P` and returns its /health body.
fn health_of_server(args: &[&str]) -> String {
    // Pick a free port, then hand it to the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaak"))
        .arg("serve")
        .args(args)
        .args(["--port", &port.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("vaak serve exited before listening");
        }
        if line.contains("listening") {
            break;
        }
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    body
}

#[test]
fn echo_server_starts_and_answers_health() {
    let body = health_of_server(&["--s2s", "none"]);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"modes\":[\"echo\"]"), "{body}");
}

/// The README's main command: no flags, the bundled codec and S2S model, every mode.
#[test]
fn default_server_runs_the_bundled_models() {
    let body = health_of_server(&[]);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(
        body.contains("\"modes\":[\"echo\",\"translate\",\"converse\"]"),
        "{body}"
    );
}
