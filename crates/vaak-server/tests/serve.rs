//! The server end to end: real WebSocket clients (tokio-tungstenite) against servers on
//! 127.0.0.1:0, with the bundled codec and a seeded random tiny S2S export in a tempdir.
//! Timeouts here are hang guards only; nothing asserts on wall-clock time.

use std::path::Path;
use std::time::Duration;

use candle_core::Device;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use vaak_s2s::train::{ExportInfo, CODEC_FILE};
use vaak_s2s::{CodecSpec, S2sConfig, S2sModel};
use vaak_server::protocol::{Frame, MsgType};
use vaak_server::{RunningServer, ServeConfig};

const GUARD: Duration = Duration::from_secs(60);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A seeded random `tiny` S2S export over the bundled codec's first 4 codebooks.
fn tiny_export(dir: &Path) {
    let spec = CodecSpec {
        num_codebooks: 4,
        cardinality: 1024,
        frame_rate: 25.0,
    };
    let cfg = S2sConfig::preset("tiny", spec).unwrap();
    let (_, vars) = S2sModel::init_seeded(&cfg, &Device::Cpu, 11).unwrap();
    S2sModel::save(&cfg, &vars, dir).unwrap();
    let info = ExportInfo {
        codec: "vaak-16k".into(),
        num_codebooks: 4,
        stage: None,
        step: None,
    };
    std::fs::write(dir.join(CODEC_FILE), serde_json::to_string(&info).unwrap()).unwrap();
}

struct Env {
    server: RunningServer,
    _dir: tempfile::TempDir,
}

async fn server(f: impl FnOnce(&mut ServeConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    tiny_export(dir.path());
    let mut cfg = ServeConfig {
        port: 0,
        s2s: dir.path().display().to_string(),
        max_sessions: 4,
        ..Default::default()
    };
    cfg.limits.max_reply_s = 1.0;
    // The tests stream audio faster than real time.
    cfg.limits.max_messages_per_s = 100_000;
    f(&mut cfg);
    let server = vaak_server::start(cfg).await.unwrap();
    Env { server, _dir: dir }
}

fn speech() -> Vec<i16> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech.wav");
    let r = hound::WavReader::open(p).unwrap();
    assert_eq!(r.spec().sample_rate, 16000);
    r.into_samples::<i16>().map(|s| s.unwrap()).collect()
}

struct Client {
    ws: Ws,
    seq: u32,
}

impl Client {
    async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        Self { ws, seq: 0 }
    }

    async fn connect_req(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> Self {
        let (ws, _) = tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap();
        Self { ws, seq: 0 }
    }

    async fn raw(&mut self, bytes: Vec<u8>) {
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    async fn send(&mut self, kind: MsgType, payload: Vec<u8>) {
        let f = Frame::new(kind, self.seq, self.seq as u64 * 20_000, payload);
        self.seq += 1;
        self.raw(f.encode()).await;
    }

    async fn json(&mut self, kind: MsgType, v: Value) {
        self.send(kind, serde_json::to_vec(&v).unwrap()).await;
    }

    async fn control(&mut self, op: &str) {
        self.json(MsgType::Control, json!({ "op": op })).await;
    }

    async fn audio(&mut self, pcm: &[i16]) {
        let f = Frame::audio(0, 0, 0, pcm);
        self.send(MsgType::Audio, f.payload).await;
    }

    async fn stream(&mut self, pcm: &[i16]) {
        for c in pcm.chunks(320) {
            self.audio(c).await;
        }
    }

    /// Next frame, `None` once closed.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            let m = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("hang guard: no frame from the server");
            match m {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b).unwrap()),
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn hello(&mut self, mode: &str, turn_mode: &str) -> Value {
        self.json(
            MsgType::Hello,
            json!({"mode": mode, "turn_mode": turn_mode, "audio": "pcm16", "sample_rate": 16000,
                   "voice": null, "emotion": "neutral", "lang": "en"}),
        )
        .await;
        let f = self.recv().await.expect("WELCOME");
        assert_eq!(
            f.kind,
            MsgType::Welcome,
            "{:?}",
            String::from_utf8_lossy(&f.payload)
        );
        f.parse_json().unwrap()
    }

    /// Frames until (and including) the first that `stop` accepts.
    async fn until(&mut self, mut stop: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
        let mut v = Vec::new();
        loop {
            let Ok(m) = tokio::time::timeout(GUARD, self.ws.next()).await else {
                panic!("hang guard: waited {GUARD:?}; got {}", describe(&v));
            };
            let f = match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Binary(b))) => Frame::decode(&b).unwrap(),
                Some(Ok(_)) => continue,
            };
            let s = stop(&f);
            v.push(f);
            if s {
                return v;
            }
        }
        panic!("closed before the expected frame; got {}", describe(&v));
    }

    /// The ERROR that ends the session, then the close.
    async fn fatal(&mut self) -> Value {
        let mut err = None;
        while let Some(f) = self.recv().await {
            if f.kind == MsgType::Error {
                let v: Value = f.parse_json().unwrap();
                if v["fatal"] == true {
                    err = Some(v);
                }
            }
        }
        err.expect("a fatal ERROR before the close")
    }
}

/// Non-audio frames as text, audio as a count per turn.
fn describe(v: &[Frame]) -> String {
    let mut out = Vec::new();
    let mut audio: Option<(u32, usize)> = None;
    for f in v {
        if f.kind == MsgType::Audio {
            let t = f.parse_audio().unwrap().0;
            audio = match audio {
                Some((a, n)) if a == t => Some((a, n + 1)),
                Some((a, n)) => {
                    out.push(format!("{n} x AUDIO turn {a}"));
                    Some((t, 1))
                }
                None => Some((t, 1)),
            };
        } else {
            if let Some((a, n)) = audio.take() {
                out.push(format!("{n} x AUDIO turn {a}"));
            }
            out.push(format!(
                "{:?} {}",
                f.kind,
                String::from_utf8_lossy(&f.payload)
            ));
        }
    }
    if let Some((a, n)) = audio {
        out.push(format!("{n} x AUDIO turn {a}"));
    }
    out.join("\n")
}

fn json_of(f: &Frame) -> Value {
    serde_json::from_slice(&f.payload).unwrap()
}

fn is_control(f: &Frame, op: &str) -> bool {
    f.kind == MsgType::Control && json_of(f)["op"] == op
}

async fn wait_sessions_zero(s: &RunningServer) {
    tokio::time::timeout(GUARD, async {
        while s.metrics().sessions_active.get() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("hang guard: sessions never closed");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(GUARD, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_ping_garbage_and_http_endpoints() {
    let env = server(|_| {}).await;
    let url = env.server.ws_url();
    let mut c = Client::connect(&url).await;
    let w = c.hello("echo", "turn").await;
    assert_eq!(w["protocol"], 1);
    assert_eq!(w["sample_rate"], 16000);
    assert_eq!(w["frame_samples"], 640);
    assert_eq!(w["modes"], json!(["echo", "translate", "converse"]));
    assert!(w["limits"]["max_frame_bytes"].as_u64().unwrap() > 0);
    c.send(MsgType::Ping, vec![9, 8, 7]).await;
    let pong = c.until(|f| f.kind == MsgType::Pong).await;
    assert_eq!(pong.last().unwrap().payload, vec![9, 8, 7]);
    // Garbage: an ERROR, and the session goes on.
    c.raw(vec![1, 0x99, 0, 0]).await;
    c.raw(vec![1]).await;
    let e = c.until(|f| f.kind == MsgType::Error).await;
    let e = json_of(e.last().unwrap());
    assert_eq!(e["code"], "bad_frame");
    assert_eq!(e["fatal"], false);
    c.json(MsgType::Control, json!({"op": "dance"})).await;
    let e = c.until(|f| f.kind == MsgType::Error).await;
    assert_eq!(json_of(e.last().unwrap())["code"], "bad_frame");
    let e = c.until(|f| f.kind == MsgType::Error).await;
    assert_eq!(json_of(e.last().unwrap())["code"], "bad_request");
    c.send(MsgType::Ping, vec![1]).await;
    c.until(|f| f.kind == MsgType::Pong).await;
    // A wrong version is fatal.
    let mut b = Frame::new(MsgType::Ping, 0, 0, vec![]).encode();
    b[0] = 7;
    c.raw(b).await;
    assert_eq!(c.fatal().await["code"], "bad_version");

    // The first frame must be HELLO.
    let mut c = Client::connect(&url).await;
    c.send(MsgType::Ping, vec![]).await;
    assert_eq!(c.fatal().await["code"], "bad_request");
    // A bad HELLO field is named.
    let mut c = Client::connect(&url).await;
    c.json(MsgType::Hello, json!({"mode": "echo", "emotion": "bored"}))
        .await;
    let e = c.fatal().await;
    assert_eq!(e["code"], "bad_request");
    assert!(e["message"].as_str().unwrap().contains("bored"), "{e}");

    let h = http_get(env.server.addr(), "/health").await;
    assert!(
        h.starts_with("HTTP/1.0 200") || h.starts_with("HTTP/1.1 200"),
        "{h}"
    );
    assert!(h.contains("\"status\":\"ok\""), "{h}");
    let m = http_get(env.server.addr(), "/metrics").await;
    assert!(m.contains("vaak_sessions_active"), "{m}");
    assert!(
        m.contains("vaak_errors_total{code=\"bad_version\"} 1"),
        "{m}"
    );
    let i = http_get(env.server.addr(), "/").await;
    assert!(i.contains("text/html"), "{i}");
    wait_sessions_zero(&env.server).await;
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_turn_by_vad_endpoint_returns_the_speech() {
    let env = server(|_| {}).await;
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("echo", "turn").await;
    c.stream(&speech()).await;
    let frames = c.until(|f| is_control(f, "turn_ended")).await;
    let vad: Vec<Value> = frames
        .iter()
        .filter(|f| f.kind == MsgType::Meta)
        .map(json_of)
        .filter(|v| v["kind"] == "vad")
        .collect();
    assert!(vad.iter().any(|v| v["speaking"] == true), "{vad:?}");
    let started = frames
        .iter()
        .position(|f| is_control(f, "turn_started"))
        .unwrap();
    assert_eq!(json_of(&frames[started])["turn"], 1);
    let audio: Vec<(u32, Vec<i16>)> = frames
        .iter()
        .filter(|f| f.kind == MsgType::Audio)
        .map(|f| f.parse_audio().unwrap())
        .collect();
    assert!(audio.iter().all(|(t, pcm)| *t == 1 && pcm.len() == 640));
    // The turn is about 2.4 s of speech plus padding: at least 1.5 s comes back.
    assert!(audio.len() * 640 >= 24000, "{} frames", audio.len());
    let energy: f64 = audio
        .iter()
        .flat_map(|(_, p)| p.iter())
        .map(|&s| (s as f64).powi(2))
        .sum();
    assert!(energy > 0.0);
    let lat = frames
        .iter()
        .position(|f| f.kind == MsgType::Meta && json_of(f)["kind"] == "latency")
        .expect("a latency META");
    let first_audio = frames
        .iter()
        .position(|f| f.kind == MsgType::Audio)
        .unwrap();
    assert!(lat < first_audio);
    let l = json_of(&frames[lat]);
    assert_eq!(l["turn"], 1);
    assert!(l["speech_end_t_us"].as_u64().unwrap() > 0);
    assert!(
        l["endpoint_ms"].as_f64().unwrap() >= 500.0,
        "{l} {:?}",
        frames
            .iter()
            .filter(|f| f.kind != MsgType::Audio)
            .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(json_of(frames.last().unwrap())["reason"], "done");
    // Seq numbers of the server's frames count up from 0 without gaps.
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq as usize, i + 1, "WELCOME was seq 0");
    }
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translate_and_converse_reply_after_the_turn() {
    let env = server(|_| {}).await;
    let sp = speech();
    // Push-to-talk: explicit start and end_of_turn.
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("translate", "turn").await;
    c.control("start").await;
    c.stream(&sp[..32000]).await;
    c.control("end_of_turn").await;
    let frames = c.until(|f| is_control(f, "turn_ended")).await;
    let n = frames.iter().filter(|f| f.kind == MsgType::Audio).count();
    assert!(n > 0, "reply audio");
    let end = json_of(frames.last().unwrap());
    assert!(
        end["reason"] == "done" || end["reason"] == "truncated",
        "{end}"
    );
    // max_reply_s = 1.0: at most 25 frames.
    assert!(n <= 25, "{n}");

    // Converse, two turns ended by the VAD; both get a reply.
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("converse", "turn").await;
    for turn in 1..=2u32 {
        c.stream(&sp).await;
        let frames = c.until(|f| is_control(f, "turn_ended")).await;
        let audio: Vec<u32> = frames
            .iter()
            .filter(|f| f.kind == MsgType::Audio)
            .map(|f| f.parse_audio().unwrap().0)
            .collect();
        assert!(!audio.is_empty());
        assert!(audio.iter().all(|&t| t == turn), "{audio:?}");
    }

    // Stream mode: the reply may start while the user speaks; the turn still ends.
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("translate", "stream").await;
    c.stream(&sp).await;
    let frames = c.until(|f| is_control(f, "turn_ended")).await;
    assert!(frames.iter().any(|f| f.kind == MsgType::Audio));
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_flushes_and_no_stale_audio_follows() {
    let env = server(|c| {
        c.limits.max_reply_s = 4.0;
    })
    .await;
    let sp = speech();
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("translate", "turn").await;
    c.control("start").await;
    c.stream(&sp[..24000]).await;
    c.control("end_of_turn").await;
    c.until(|f| f.kind == MsgType::Audio).await;
    // The user speaks over the reply (speech only, no leading silence).
    c.stream(&sp[16000..40000]).await;
    let frames = c.until(|f| is_control(f, "flush")).await;
    assert_eq!(json_of(frames.last().unwrap())["turn"], 1);
    // Everything after the flush: the interrupted turn ends, the new turn (2) runs; no
    // frame of turn 1 ever arrives again.
    c.stream(&vec![0i16; 16000 * 2]).await;
    let after = c
        .until(|f| is_control(f, "turn_ended") && json_of(f)["turn"] == 2)
        .await;
    let ended: Vec<Value> = after
        .iter()
        .filter(|f| is_control(f, "turn_ended"))
        .map(json_of)
        .collect();
    assert_eq!(ended[0]["turn"], 1, "{ended:?}");
    assert_eq!(ended[0]["reason"], "interrupted");
    let stale = after
        .iter()
        .filter(|f| f.kind == MsgType::Audio && f.parse_audio().unwrap().0 <= 1)
        .count();
    assert_eq!(stale, 0, "audio of the flushed turn after the flush");
    assert!(after.iter().any(|f| f.kind == MsgType::Audio));

    // An explicit interrupt flushes the same way.
    c.control("start").await;
    c.stream(&sp[..16000]).await;
    c.control("end_of_turn").await;
    let f = c.until(|f| f.kind == MsgType::Audio).await;
    let turn = f.last().unwrap().parse_audio().unwrap().0;
    c.control("interrupt").await;
    let fl = c.until(|f| is_control(f, "flush")).await;
    assert_eq!(json_of(fl.last().unwrap())["turn"], turn);
    c.send(MsgType::Ping, vec![]).await;
    let rest = c.until(|f| f.kind == MsgType::Pong).await;
    assert!(!rest
        .iter()
        .any(|f| f.kind == MsgType::Audio && f.parse_audio().unwrap().0 <= turn));
    let m = http_get(env.server.addr(), "/metrics").await;
    assert!(m.contains("vaak_interrupts_total 2"), "{m}");
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_a_public_bind() {
    let env = server(|c| {
        c.host = "0.0.0.0".into();
        c.security.api_key = Some("k3y".into());
        c.security.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let port = env.server.addr().port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Client::connect(&url).await;
    assert_eq!(c.fatal().await["code"], "unauthorized");
    let mut c = Client::connect(&format!("{url}?api_key=wrong")).await;
    assert_eq!(c.fatal().await["code"], "unauthorized");
    let mut c = Client::connect(&format!("{url}?api_key=k3y")).await;
    c.hello("echo", "turn").await;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer k3y".parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let mut c = Client::connect_req(req).await;
    assert_eq!(c.fatal().await["code"], "unauthorized");
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", "k3y".parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let mut c = Client::connect_req(req).await;
    c.hello("echo", "turn").await;
    // Without a key and origins a public bind does not start.
    let e = vaak_server::start(ServeConfig {
        host: "0.0.0.0".into(),
        port: 0,
        s2s: "none".into(),
        ..Default::default()
    })
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("--api-key"), "{e}");
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_gives_its_error_and_sessions_are_released() {
    let env = server(|c| {
        c.max_sessions = 1;
        c.limits.max_frame_bytes = 4096;
        c.limits.max_messages_per_s = 20;
        c.limits.idle_timeout_s = 0.3;
        c.limits.max_session_s = 1.0;
    })
    .await;
    let url = env.server.ws_url();
    // busy past capacity
    let mut a = Client::connect(&url).await;
    a.hello("echo", "turn").await;
    let mut b = Client::connect(&url).await;
    assert_eq!(b.fatal().await["code"], "busy");
    // too_large
    a.send(MsgType::Audio, vec![0u8; 5000]).await;
    assert_eq!(a.fatal().await["code"], "too_large");
    wait_sessions_zero(&env.server).await;
    // rate_limited
    let mut c = Client::connect(&url).await;
    c.hello("echo", "turn").await;
    for _ in 0..40 {
        c.send(MsgType::Ping, vec![]).await;
    }
    assert_eq!(c.fatal().await["code"], "rate_limited");
    wait_sessions_zero(&env.server).await;
    // idle_timeout
    let mut c = Client::connect(&url).await;
    c.hello("echo", "turn").await;
    assert_eq!(c.fatal().await["code"], "idle_timeout");
    wait_sessions_zero(&env.server).await;
    // session_timeout: pings every 100 ms keep it from idling.
    let mut c = Client::connect(&url).await;
    c.hello("echo", "turn").await;
    let code = 'outer: loop {
        c.send(MsgType::Ping, vec![]).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(m) = tokio::time::timeout_at(until, c.ws.next()).await {
            match m {
                Some(Ok(Message::Binary(b))) => {
                    let f = Frame::decode(&b).unwrap();
                    if f.kind == MsgType::Error {
                        break 'outer json_of(&f)["code"].clone();
                    }
                }
                Some(Ok(_)) => {}
                _ => panic!("closed without an ERROR"),
            }
        }
    };
    assert_eq!(code, "session_timeout");
    drop(c);
    wait_sessions_zero(&env.server).await;
    let m = http_get(env.server.addr(), "/metrics").await;
    for code in [
        "busy",
        "too_large",
        "rate_limited",
        "idle_timeout",
        "session_timeout",
    ] {
        assert!(
            m.contains(&format!("vaak_errors_total{{code=\"{code}\"}} 1")),
            "{code}: {m}"
        );
    }
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics_or_leaks_a_session() {
    use rand::{Rng, SeedableRng};
    let env = server(|c| c.limits.max_messages_per_s = 10_000).await;
    let url = env.server.ws_url();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for round in 0..12 {
        let mut c = Client::connect(&url).await;
        if round % 2 == 0 {
            c.hello(["echo", "translate", "converse"][round % 3], "turn")
                .await;
        }
        for _ in 0..30 {
            let n = rng.random_range(0..200);
            let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && b.len() >= 2 {
                b[0] = 1;
                b[1] = [0x01, 0x10, 0x20, 0x50][rng.random_range(0..4)];
            }
            c.raw(b).await;
        }
        drop(c);
    }
    wait_sessions_zero(&env.server).await;
    let mut c = Client::connect(&url).await;
    c.hello("echo", "turn").await;
    c.send(MsgType::Ping, vec![4]).await;
    c.until(|f| f.kind == MsgType::Pong).await;
    env.server.shutdown().await.unwrap();
}

/// Reply PCM per turn for the speech streamed `turns` times (VAD-ended turns).
async fn replies(url: &str, mode: &str, turns: u32) -> Vec<Vec<i16>> {
    let sp = speech();
    let mut c = Client::connect(url).await;
    c.hello(mode, "turn").await;
    let mut out = Vec::new();
    for turn in 1..=turns {
        c.stream(&sp).await;
        let frames = c
            .until(|f| is_control(f, "turn_ended") && json_of(f)["turn"] == turn)
            .await;
        out.push(
            frames
                .iter()
                .filter(|f| f.kind == MsgType::Audio)
                .flat_map(|f| f.parse_audio().unwrap().1)
                .collect(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_replies_depend_on_the_earlier_turns() {
    let env = server(|c| c.generation.temperature = 0.0).await;
    let url = env.server.ws_url();
    // Greedy decoding and turns cut at stream positions: replies depend on the audio alone.
    let t1 = replies(&url, "translate", 2).await;
    let t2 = replies(&url, "translate", 2).await;
    for i in 0..2 {
        assert!(
            t1[i] == t2[i],
            "translate turn {} differs: {} vs {} samples",
            i + 1,
            t1[i].len(),
            t2[i].len()
        );
    }
    let c = replies(&url, "converse", 2).await;
    assert!(!c[0].is_empty() && !c[1].is_empty());
    assert!(c[0] == t1[0], "the first turn has no context");
    assert!(c[1] != t1[1], "the second converse turn sees the first");
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_speech_during_a_reply_is_a_false_interruption() {
    let env = server(|c| c.limits.max_reply_s = 3.0).await;
    let sp = speech();
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.hello("translate", "turn").await;
    c.control("start").await;
    c.stream(&sp[..24000]).await;
    c.control("end_of_turn").await;
    c.until(|f| f.kind == MsgType::Audio).await;
    // 0.35 s of speech, then silence: under min_interruption_ms (500).
    c.stream(&sp[16000..21600]).await;
    c.stream(&vec![0i16; 16000]).await;
    let frames = c.until(|f| is_control(f, "turn_ended")).await;
    assert!(
        !frames.iter().any(|f| is_control(f, "flush")),
        "{}",
        describe(&frames)
    );
    let end = json_of(frames.last().unwrap());
    assert_eq!(end["turn"], 1);
    assert_ne!(end["reason"], "interrupted");
    let m = http_get(env.server.addr(), "/metrics").await;
    assert!(m.contains("vaak_false_interruptions_total 1"), "{m}");
    assert!(m.contains("vaak_interrupts_total 0"), "{m}");
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_at_48k_is_resampled_and_echo_stream_returns_the_turn() {
    let env = server(|_| {}).await;
    let mut c = Client::connect(&env.server.ws_url()).await;
    c.json(
        MsgType::Hello,
        json!({"mode": "echo", "turn_mode": "stream", "sample_rate": 48000}),
    )
    .await;
    let w = c.recv().await.unwrap();
    assert_eq!(w.kind, MsgType::Welcome);
    assert_eq!(json_of(&w)["sample_rate"], 16000);
    // 48 kHz by sample-and-hold, sent as 20 ms frames.
    let sp48: Vec<i16> = speech().iter().flat_map(|&s| [s, s, s]).collect();
    for ch in sp48.chunks(960) {
        c.audio(ch).await;
    }
    let frames = c.until(|f| is_control(f, "turn_ended")).await;
    let audio: Vec<(u32, Vec<i16>)> = frames
        .iter()
        .filter(|f| f.kind == MsgType::Audio)
        .map(|f| f.parse_audio().unwrap())
        .collect();
    assert!(audio.len() * 640 >= 24000, "{}", describe(&frames));
    assert!(audio.iter().all(|(t, p)| *t == 1 && p.len() == 640));
    assert_eq!(json_of(frames.last().unwrap())["reason"], "done");
    env.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sessions_do_not_change_each_others_replies() {
    let env = server(|c| c.generation.temperature = 0.0).await;
    let url = env.server.ws_url();
    let alone = replies(&url, "translate", 1).await;
    // The same session again, now batched with a second one speaking other audio.
    let other = {
        let url = url.clone();
        tokio::spawn(async move {
            // Other audio: the speech reversed and quieter, then silence for the endpoint.
            let mut sp: Vec<i16> = speech().iter().rev().map(|&s| s / 2).collect();
            sp.extend(std::iter::repeat_n(0i16, 16000));
            let mut c = Client::connect(&url).await;
            c.hello("translate", "turn").await;
            c.stream(&sp).await;
            c.until(|f| is_control(f, "turn_ended")).await;
        })
    };
    let together = replies(&url, "translate", 1).await;
    other.await.unwrap();
    assert!(!alone[0].is_empty());
    assert!(alone == together, "a batched slot's reply changed");
    env.server.shutdown().await.unwrap();
}
