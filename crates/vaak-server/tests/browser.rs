//! The browser client end to end: Debian's chromium, headless, loads the page the server serves,
//! "speaks" an espeak-ng WAV through chromium's fake microphone, streams it over the WebSocket
//! and plays the reply. The test reads the page's `window.vaakStats` over the DevTools protocol
//! (a CDP client on tokio-tungstenite: `Runtime.evaluate`), asserts on its counters and saves a
//! screenshot (`Page.captureScreenshot`) to `target/vaak-browser/`.
//!
//! chromium missing: the test is skipped with a loud message, unless `CI` is set (then it fails;
//! `.ci/run` installs chromium). Override the program with `VAAK_CHROMIUM=/path/to/chrome`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use vaak_server::client::{self, speech};
use vaak_server::{RunningServer, ServeConfig};

/// Hang guard only: how long to wait for the counters (never a performance assert).
const HANG_GUARD: Duration = Duration::from_secs(240);

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VAAK_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The workspace's `target/vaak-browser/`.
fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("vaak-browser");
    std::fs::create_dir_all(&dir).expect("creating target/vaak-browser");
    dir
}

/// A headless chromium process, killed on drop, with its stderr kept for failure messages.
struct Browser {
    child: Child,
    ws_url: String,
    log: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch(program: &Path, url: &str, wav: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("chromium profile dir");
        let mut child = Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--window-size=1000,1100",
            ])
            .arg(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("ws://") {
                    let _ = tx.send(line[i..].trim().to_string());
                }
                let mut l = keep.lock().unwrap();
                l.push(line);
                let n = l.len();
                if n > 200 {
                    l.drain(..n - 200);
                }
            }
        });
        let ws_url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "chromium printed no DevTools address; its stderr:\n{}",
                    log.lock().unwrap().join("\n")
                )
            });
        Browser {
            child,
            ws_url,
            log,
            _profile: profile,
        }
    }

    fn stderr_tail(&self) -> String {
        let l = self.log.lock().unwrap();
        l[l.len().saturating_sub(40)..].join("\n")
    }
}

/// A minimal DevTools-protocol client: commands to one page session (flat mode).
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to chromium's DevTools at {url}: {e}"));
        let mut cdp = Cdp {
            ws,
            next_id: 1,
            session: None,
        };
        let page = loop {
            let targets = cdp.call("Target.getTargets", json!({})).await;
            let page = targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .cloned();
            if let Some(p) = page {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({"targetId": page["targetId"], "flatten": true}),
            )
            .await;
        cdp.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("attachToTarget gives a sessionId")
                .to_string(),
        );
        cdp
    }

    /// Sends a command and returns its `result` (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("sending a DevTools command");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no DevTools answer to {method} in 60 s"))
                .expect("DevTools connection closed")
                .expect("DevTools read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("DevTools sends JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// `window.vaakStats`, or `None` before the page defined it.
    async fn stats(&mut self) -> Option<Value> {
        let v = self
            .eval("window.vaakStats ? JSON.stringify(window.vaakStats) : null")
            .await;
        serde_json::from_str(v.as_str()?).ok()
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(path, png).expect("writing the screenshot");
        eprintln!("browser test: screenshot saved to {}", path.display());
    }
}

/// Speech for chromium's fake microphone (it loops the file): utterances with silence between.
fn speech_wav(dir: &Path) -> PathBuf {
    let track = speech::track(
        &[
            speech::SENTENCES[0],
            speech::SENTENCES[1],
            speech::SENTENCES[3],
        ],
        "en-us",
        0.5,
        1.5,
    )
    .expect("espeak-ng speech (apt-get install espeak-ng)");
    let path = dir.join("speech.wav");
    vaak_audio::io::write_wav(
        &path,
        &track.samples,
        speech::RATE,
        vaak_audio::io::WavFormat::Pcm16,
    )
    .expect("writing the speech WAV");
    path
}

/// A server on 127.0.0.1:0 with the bundled codec and `s2s` (`none`: echo only).
async fn start_server(s2s: &str) -> RunningServer {
    let cfg = ServeConfig {
        port: 0,
        s2s: s2s.to_string(),
        ..ServeConfig::default()
    };
    vaak_server::start(cfg).await.expect("starting the server")
}

/// Loads the page in `mode` and polls its counters until `done` accepts them.
async fn run_page(
    program: &Path,
    base: &str,
    mode: &str,
    wav: &Path,
    shot: &Path,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{base}/?autostart=1&mode={mode}&turn_mode=turn");
    let browser = Browser::launch(program, &url, wav);
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    let mut last = Value::Null;
    loop {
        if let Some(s) = cdp.stats().await {
            if done(&s) {
                last = s;
                break;
            }
            last = s;
        }
        if tokio::time::Instant::now() > deadline {
            cdp.screenshot(shot).await;
            panic!(
                "{mode}: the page's counters did not get there (hang guard); last vaakStats: \
                 {last}\nchromium stderr:\n{}",
                browser.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cdp.screenshot(shot).await;
    let debug = cdp
        .eval("JSON.stringify(Object.assign({}, window.vaakDebug, {welcome: undefined}))")
        .await;
    eprintln!("browser test ({mode}): vaakStats = {last}\n  vaakDebug = {debug}");
    last
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("vaakStats.{key} is not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_streams_the_mic_and_plays_the_reply() {
    let Some(program) = chromium() else {
        if in_ci() {
            panic!("chromium is not installed and CI is set: apt-get install chromium");
        }
        eprintln!(
            "\n\n=== SKIPPED: headless browser test: no chromium on PATH \
             (apt-get install chromium, or set VAAK_CHROMIUM) ===\n\n"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let wav = speech_wav(tmp.path());
    let out = out_dir();

    // Echo: the voice through the codec only.
    let server = start_server("none").await;
    let base = format!("http://{}", server.addr());
    let s = run_page(
        &program,
        &base,
        "echo",
        &wav,
        &out.join("screenshot.png"),
        |s| {
            num(s, "framesSent") > 150.0
                && num(s, "framesReceived") > 50.0
                && num(s, "turns") >= 1.0
                && !s["lastLatencyMs"].is_null()
        },
    )
    .await;
    assert_eq!(s["state"], "running", "{s}");
    assert!(
        s["errors"].as_array().unwrap().is_empty(),
        "page errors: {s}"
    );
    assert!(num(&s, "bytesReceived") > num(&s, "framesReceived") * 14.0);
    let lat = num(&s, "lastLatencyMs");
    assert!(lat > 0.0, "latency must be positive: {s}");
    server.shutdown().await.expect("server shutdown");

    // Translate on a random tiny model: at least one reply turn.
    let model = tmp.path().join("tiny-s2s");
    client::write_random_s2s(&model, "tiny", 2, 1).expect("writing a random tiny S2S model");
    let server = start_server(model.to_str().unwrap()).await;
    let base = format!("http://{}", server.addr());
    let s = run_page(
        &program,
        &base,
        "translate",
        &wav,
        &out.join("screenshot-translate.png"),
        |s| num(s, "turns") >= 1.0 && !s["lastLatencyMs"].is_null(),
    )
    .await;
    assert!(
        s["errors"].as_array().unwrap().is_empty(),
        "page errors: {s}"
    );
    assert!(num(&s, "framesSent") > 0.0 && num(&s, "framesReceived") > 0.0);
    assert!(num(&s, "lastLatencyMs") > 0.0, "{s}");
    assert!(!s["latenciesMs"].as_array().unwrap().is_empty(), "{s}");
    server.shutdown().await.expect("server shutdown");
}

/// The same page against pipeline mode (`converse`): the tiny Whisper and OpenVoice fixtures,
/// espeak-ng, and a loopback LLM streaming its reply over SSE.
#[cfg(feature = "pipeline")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_talks_to_the_converse_pipeline() {
    use vaak_server::PipelineMode;
    use vaak_teachers::mt::loopback::{LoopbackChatServer, LoopbackOptions};

    let Some(program) = chromium() else {
        if in_ci() {
            panic!("chromium is not installed and CI is set: apt-get install chromium");
        }
        eprintln!("\n\n=== SKIPPED: headless browser test (pipeline): no chromium on PATH ===\n\n");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let wav = speech_wav(tmp.path());
    // The loopback server runs its own runtime: start it off the test's.
    let llm = std::thread::spawn(|| {
        LoopbackChatServer::start_with(LoopbackOptions {
            reply: "Hello from the pipeline. This is the second sentence.".into(),
            token_interval: Duration::from_millis(10),
            fail_status: None,
        })
        .expect("loopback LLM")
    })
    .join()
    .unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/data");
    let mut cfg = ServeConfig {
        port: 0,
        ..ServeConfig::default()
    };
    let p = &mut cfg.pipeline;
    p.mode = PipelineMode::Converse;
    p.asr.weights = Some(fixtures.join("whisper/tiny80").display().to_string());
    p.asr
        .options
        .insert("max_new_tokens".into(), toml::Value::Integer(3));
    p.tts.converter = Some(fixtures.join("openvoice/converter").display().to_string());
    p.llm.base_url = Some(llm.base_url().to_string());
    p.llm.model = Some("loopback".into());
    let server = vaak_server::start(cfg).await.expect("starting the server");
    let base = format!("http://{}", server.addr());
    let s = run_page(
        &program,
        &base,
        "converse",
        &wav,
        &out_dir().join("screenshot-pipeline.png"),
        |s| num(s, "turns") >= 1.0 && !s["lastLatencyMs"].is_null(),
    )
    .await;
    assert!(
        s["errors"].as_array().unwrap().is_empty(),
        "page errors: {s}"
    );
    assert!(num(&s, "framesReceived") > 0.0, "{s}");
    assert!(num(&s, "lastLatencyMs") > 0.0, "{s}");
    assert!(llm.requests() >= 1);
    server.shutdown().await.expect("server shutdown");
}
