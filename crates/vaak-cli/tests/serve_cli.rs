//! `vaak serve` as a process: the default config, flag validation, the refused public bind,
//! and a server that starts, answers /health and stops.

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
fn bundled_s2s_until_merged_names_the_way_out() {
    let o = vaak(&["serve", "--port", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--s2s DIR"), "{}", text(&o));
}

#[test]
fn echo_server_starts_and_answers_health() {
    // Pick a free port, then hand it to the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaak"))
        .args(["serve", "--s2s", "none", "--port", &port.to_string()])
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
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert!(body.contains("\"modes\":[\"echo\"]"), "{body}");
}
