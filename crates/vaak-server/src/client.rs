//! A small async client of protocol v1 (`docs/protocol.md`), used by `vaak bench serve`, the
//! system check (`vaak serve --check`) and the server's tests.
//!
//! [`Client::connect`] opens the WebSocket (API key in the `x-api-key` header), sends HELLO and
//! waits for WELCOME. A reader task then decodes every server frame, keeps the counters in
//! [`ClientStats`] (frames, bytes, sequence gaps, flushes, stale frames, per-turn latency) and
//! forwards each frame as an [`Event`]. The write side ([`Sender`]) is cloneable, so one task can
//! stream a WAV in real time ([`Sender::stream`]) while another reads events.
//!
//! Latency is measured as the protocol defines it: the client's own clock ([`now_us`], shared by
//! every client in the process) when the first reply AUDIO of a turn arrives, minus the
//! `speech_end_t_us` the server echoes in that turn's `latency` META (the client timestamp of the
//! last speech frame). A frame of a turn the server has flushed (`flush {"turn": n}`, turn <= n)
//! that arrives after the flush is a **stale frame**: the barge-in bug this client exists to
//! catch.
//!
//! [`speech`] makes test speech with espeak-ng (utterances with silence between them, and the
//! sample ranges that are speech), for the bench, the check and the browser test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    Control, ErrorCode, ErrorMsg, Frame, Hello, Meta, Mode, MsgType, TurnEndReason, Welcome,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Samples per 20 ms frame at 16 kHz, what the browser sends.
pub const FRAME_20MS_16K: usize = 320;

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("bad client request for {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("WebSocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("connection closed{0}")]
    Closed(String),
    #[error("test speech: {0}")]
    Speech(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Microseconds on the process-wide monotonic clock every client stamps its frames with.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Start at 1 s so no real timestamp is 0.
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1_000_000
}

/// A HELLO for `mode` with the protocol defaults (turn mode `turn`, PCM16 at 16 kHz, neutral,
/// English).
pub fn hello(mode: Mode) -> Hello {
    Hello {
        mode,
        ..Hello::default()
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `ws://host:port/ws`.
    pub url: String,
    /// Sent as the `x-api-key` header when set.
    pub api_key: Option<String>,
    pub hello: Hello,
    /// How long to wait for the connection and WELCOME.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// `ws://{addr}/ws` with `hello`, no key, a 10 s connect timeout.
    pub fn new(addr: std::net::SocketAddr, hello: Hello) -> Self {
        Self {
            url: format!("ws://{addr}/ws"),
            api_key: None,
            hello,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// One decoded server frame, as the reader task saw it.
#[derive(Clone, Debug)]
pub enum Event {
    /// Reply audio of `turn`; `fresh` is false for a stale frame (its turn was flushed).
    Audio {
        turn: u32,
        samples: Vec<i16>,
        received_us: u64,
        fresh: bool,
    },
    Control(Control),
    Meta(Meta),
    /// An ERROR (a fatal one is followed by [`Event::Closed`]).
    Error(ErrorMsg),
    Pong(Vec<u8>),
    /// The connection ended; the string says how.
    Closed(String),
}

/// One reply turn as the client measured it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnRecord {
    pub turn: u32,
    /// Client clock when the turn's first reply AUDIO arrived.
    pub first_audio_us: Option<u64>,
    /// From the `latency` META.
    pub speech_end_us: Option<u64>,
    pub endpoint_ms: Option<f64>,
    pub stages_ms: BTreeMap<String, f64>,
    pub audio_frames: u64,
    pub audio_samples: u64,
    pub ended: Option<TurnEndReason>,
    pub flushed: bool,
    /// Pipeline modes: the `transcript` and `reply` METAs.
    pub transcript: Option<String>,
    pub reply: Option<String>,
}

impl TurnRecord {
    /// End of user speech → first reply audio at the client, in ms.
    pub fn latency_ms(&self) -> Option<f64> {
        let (a, s) = (self.first_audio_us?, self.speech_end_us?);
        Some((a as f64 - s as f64) / 1000.0)
    }
}

/// Counters the reader task keeps (snapshot with [`Client::stats`]).
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub frames_sent: u64,
    pub audio_frames_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub audio_frames_received: u64,
    /// Frames missing from the server's sequence numbers.
    pub seq_gaps: u64,
    pub flushes: u64,
    /// AUDIO of a flushed turn that arrived after its flush.
    pub stale_frames: u64,
    /// The highest turn flushed so far.
    pub flushed_turn: Option<u32>,
    /// ERRORs from the server, and frames this client could not decode (code `bad_frame`).
    pub errors: Vec<ErrorMsg>,
    pub turns: BTreeMap<u32, TurnRecord>,
    pub vad_changes: u64,
    pub closed: Option<String>,
}

impl ClientStats {
    /// Latencies of the turns that have both ends, in turn order.
    pub fn latencies_ms(&self) -> Vec<f64> {
        self.turns
            .values()
            .filter_map(TurnRecord::latency_ms)
            .collect()
    }
}

/// The write half: cloneable, so streaming and control can run from different tasks.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<tokio::sync::Mutex<SendState>>,
    stats: Arc<Mutex<ClientStats>>,
}

struct SendState {
    sink: SplitSink<Ws, Message>,
    seq: u32,
}

/// What [`Sender::stream`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamReport {
    pub frames: u64,
    pub first_us: u64,
    pub last_us: u64,
    /// Client clock of each frame, in order (so a caller can find when a given sample was sent).
    pub frame_us: Vec<u64>,
}

impl Sender {
    async fn send(&self, ty: MsgType, payload: Vec<u8>) -> Result<u64> {
        let mut st = self.inner.lock().await;
        let t_us = now_us();
        let bytes = Frame::new(ty, st.seq, t_us, payload).encode();
        st.seq = st.seq.wrapping_add(1);
        st.sink
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| ClientError::Ws(Box::new(e)))?;
        drop(st);
        let mut s = self.stats.lock().expect("client stats lock");
        s.frames_sent += 1;
        if ty == MsgType::Audio {
            s.audio_frames_sent += 1;
        }
        Ok(t_us)
    }

    /// Sends one AUDIO frame (c→s `turn` is 0); returns its timestamp.
    pub async fn audio(&self, pcm: &[i16]) -> Result<u64> {
        let payload = Frame::audio(0, 0, 0, pcm).payload;
        self.send(MsgType::Audio, payload).await
    }

    /// Sends a CONTROL frame.
    pub async fn control(&self, c: &Control) -> Result<u64> {
        let payload = serde_json::to_vec(c).expect("Control serialises");
        self.send(MsgType::Control, payload).await
    }

    pub async fn end_of_turn(&self) -> Result<u64> {
        self.control(&Control::EndOfTurn).await
    }

    pub async fn interrupt(&self) -> Result<u64> {
        self.control(&Control::Interrupt).await
    }

    pub async fn ping(&self, payload: &[u8]) -> Result<u64> {
        self.send(MsgType::Ping, payload.to_vec()).await
    }

    /// Sends a raw frame of any type (for tests of the server's error paths).
    pub async fn raw(&self, ty: MsgType, payload: Vec<u8>) -> Result<u64> {
        self.send(ty, payload).await
    }

    /// Sends `samples` (16 kHz mono, [-1, 1]) as 20 ms frames. With `realtime`, frame `k` goes
    /// out at `start + k·20 ms` (catching up without skipping when the sender falls behind);
    /// otherwise as fast as the socket takes them.
    pub async fn stream(&self, samples: &[f32], realtime: bool) -> Result<StreamReport> {
        let start = tokio::time::Instant::now();
        let mut report = StreamReport::default();
        for (k, chunk) in samples.chunks(FRAME_20MS_16K).enumerate() {
            if realtime {
                tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
            }
            let t = self.audio(&to_pcm16(chunk)).await?;
            if report.frames == 0 {
                report.first_us = t;
            }
            report.last_us = t;
            report.frames += 1;
            report.frame_us.push(t);
        }
        Ok(report)
    }

    /// Sends CONTROL `close` and a WebSocket close.
    pub async fn close(&self) -> Result<()> {
        self.control(&Control::Close).await?;
        let mut st = self.inner.lock().await;
        // The server may already have closed; a failing close is not an error then.
        let _ = st.sink.close().await;
        Ok(())
    }
}

/// A connected session: the WELCOME, a [`Sender`] and the event stream.
pub struct Client {
    pub welcome: Welcome,
    sender: Sender,
    events: mpsc::UnboundedReceiver<Event>,
    stats: Arc<Mutex<ClientStats>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects, sends HELLO and waits for WELCOME (an ERROR instead is [`ClientError::Server`]).
    pub async fn connect(cfg: &ClientConfig) -> Result<Client> {
        let bad = |reason: String| ClientError::Request {
            url: cfg.url.clone(),
            reason,
        };
        let mut req = cfg
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| bad(e.to_string()))?;
        if let Some(key) = &cfg.api_key {
            let v = HeaderValue::from_str(key).map_err(|e| bad(format!("api key: {e}")))?;
            req.headers_mut().insert("x-api-key", v);
        }
        let timeout = cfg.connect_timeout;
        let timed_out = |what: &str| ClientError::Timeout {
            what: what.to_string(),
            after: timeout,
        };
        let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| timed_out("the WebSocket handshake"))?
            .map_err(|e| ClientError::Connect {
                url: cfg.url.clone(),
                source: Box::new(e),
            })?;
        let (sink, mut stream) = ws.split();
        let stats = Arc::new(Mutex::new(ClientStats::default()));
        let sender = Sender {
            inner: Arc::new(tokio::sync::Mutex::new(SendState { sink, seq: 0 })),
            stats: stats.clone(),
        };
        let hello = serde_json::to_vec(&cfg.hello).expect("Hello serialises");
        sender.send(MsgType::Hello, hello).await?;
        let welcome = tokio::time::timeout(timeout, read_welcome(&mut stream, &stats))
            .await
            .map_err(|_| timed_out("WELCOME"))??;
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(stream, stats.clone(), tx));
        Ok(Client {
            welcome,
            sender,
            events,
            stats,
            reader,
        })
    }

    /// A handle for sending (clone it into another task to stream while reading events).
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        self.stats.lock().expect("client stats lock").clone()
    }

    /// The next event, or `None` once the connection has ended and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Reads events until `pred` accepts one (returned) or `timeout` passes.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        what: what.to_string(),
                        after: timeout,
                    })
                }
                Ok(None) => return Err(ClientError::Closed(format!(" while waiting for {what}"))),
                Ok(Some(ev)) => {
                    if pred(&ev) {
                        return Ok(ev);
                    }
                    if let Event::Closed(how) = &ev {
                        return Err(ClientError::Closed(format!(
                            " ({how}) while waiting for {what}"
                        )));
                    }
                }
            }
        }
    }

    /// Waits for CONTROL `turn_ended` (any turn); returns the turn and its reason.
    pub async fn wait_turn_ended(&mut self, timeout: Duration) -> Result<(u32, TurnEndReason)> {
        let ev = self
            .wait_for("turn_ended", timeout, |e| {
                matches!(e, Event::Control(Control::TurnEnded { .. }))
            })
            .await?;
        match ev {
            Event::Control(Control::TurnEnded { turn, reason }) => Ok((turn, reason)),
            _ => unreachable!("wait_for returned what the predicate accepted"),
        }
    }

    /// Reads (and drops) events for `dur`; returns how many there were.
    pub async fn drain_for(&mut self, dur: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + dur;
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            n += 1;
        }
        n
    }
}

async fn read_welcome(
    stream: &mut SplitStream<Ws>,
    stats: &Arc<Mutex<ClientStats>>,
) -> Result<Welcome> {
    loop {
        let Some(msg) = stream.next().await else {
            return Err(ClientError::Closed(" before WELCOME".into()));
        };
        let msg = msg.map_err(|e| ClientError::Ws(Box::new(e)))?;
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(c) => {
                return Err(ClientError::Closed(format!(
                    " before WELCOME: {}",
                    c.map(|c| format!("{} {}", c.code, c.reason))
                        .unwrap_or_default()
                )))
            }
            Message::Text(t) => {
                return Err(ClientError::Protocol(format!(
                    "text frame before WELCOME: {t}"
                )))
            }
            _ => continue,
        };
        let frame = Frame::decode(&bytes)
            .map_err(|e| ClientError::Protocol(format!("frame before WELCOME: {e}")))?;
        {
            let mut s = stats.lock().expect("client stats lock");
            s.frames_received += 1;
            s.bytes_received += bytes.len() as u64;
        }
        let proto = |e: crate::protocol::ProtocolError| ClientError::Protocol(e.to_string());
        return match frame.kind {
            MsgType::Welcome => frame.parse_json::<Welcome>().map_err(proto),
            MsgType::Error => {
                let e: ErrorMsg = frame.parse_json().map_err(proto)?;
                Err(ClientError::Server {
                    code: e.code.name().to_string(),
                    message: e.message,
                })
            }
            other => Err(ClientError::Protocol(format!(
                "expected WELCOME, got {other:?}"
            ))),
        };
    }
}

/// An error this client records for a frame it could not use.
fn client_error(message: String) -> ErrorMsg {
    ErrorMsg {
        code: ErrorCode::BadFrame,
        message: format!("client: {message}"),
        fatal: false,
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    stats: Arc<Mutex<ClientStats>>,
    tx: mpsc::UnboundedSender<Event>,
) {
    // WELCOME was seq 0.
    let mut last_seq: u32 = 0;
    let closed = loop {
        let msg = match stream.next().await {
            None => break "stream ended".to_string(),
            Some(Err(e)) => break format!("WebSocket error: {e}"),
            Some(Ok(m)) => m,
        };
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Close(c) => {
                break format!(
                    "close {}",
                    c.map(|c| format!("{} {}", c.code, c.reason))
                        .unwrap_or_default()
                )
            }
            Message::Text(_) => {
                let mut s = stats.lock().expect("client stats lock");
                s.errors
                    .push(client_error("text frame from the server".into()));
                continue;
            }
            _ => continue,
        };
        let received_us = now_us();
        let frame = match Frame::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                let mut s = stats.lock().expect("client stats lock");
                s.errors.push(client_error(e.to_string()));
                continue;
            }
        };
        let event = {
            let mut s = stats.lock().expect("client stats lock");
            s.frames_received += 1;
            s.bytes_received += bytes.len() as u64;
            let gap = frame.seq.wrapping_sub(last_seq).wrapping_sub(1);
            if gap > 0 && gap < u32::MAX / 2 {
                s.seq_gaps += u64::from(gap);
            }
            last_seq = frame.seq;
            on_frame(&mut s, &frame, received_us)
        };
        if let Some(ev) = event {
            // A dropped receiver only means nobody reads events; keep counting.
            let _ = tx.send(ev);
        }
    };
    stats.lock().expect("client stats lock").closed = Some(closed.clone());
    let _ = tx.send(Event::Closed(closed));
}

fn turn_record(s: &mut ClientStats, turn: u32) -> &mut TurnRecord {
    s.turns.entry(turn).or_insert_with(|| TurnRecord {
        turn,
        ..Default::default()
    })
}

/// Updates the counters for one frame and turns it into an event.
fn on_frame(s: &mut ClientStats, frame: &Frame, received_us: u64) -> Option<Event> {
    let parsed = match frame.kind {
        MsgType::Audio => frame.parse_audio().map(|(turn, samples)| {
            s.audio_frames_received += 1;
            let fresh = s.flushed_turn.is_none_or(|f| turn > f);
            if fresh {
                let rec = turn_record(s, turn);
                rec.first_audio_us.get_or_insert(received_us);
                rec.audio_frames += 1;
                rec.audio_samples += samples.len() as u64;
            } else {
                s.stale_frames += 1;
            }
            Some(Event::Audio {
                turn,
                samples,
                received_us,
                fresh,
            })
        }),
        MsgType::Control => frame.parse_json::<Control>().map(|c| {
            match &c {
                Control::Flush { turn } => {
                    s.flushes += 1;
                    s.flushed_turn = Some(s.flushed_turn.map_or(*turn, |f| f.max(*turn)));
                    for (_, rec) in s.turns.range_mut(..=*turn) {
                        rec.flushed = true;
                    }
                }
                Control::TurnEnded { turn, reason } => turn_record(s, *turn).ended = Some(*reason),
                _ => {}
            }
            Some(Event::Control(c))
        }),
        MsgType::Meta => frame.parse_json::<Meta>().map(|m| {
            match &m {
                Meta::Vad { .. } => s.vad_changes += 1,
                Meta::Latency {
                    turn,
                    speech_end_t_us,
                    endpoint_ms,
                    stages_ms,
                } => {
                    let rec = turn_record(s, *turn);
                    rec.speech_end_us = Some(*speech_end_t_us);
                    rec.endpoint_ms = Some(*endpoint_ms);
                    rec.stages_ms = stages_ms.clone();
                }
                Meta::Transcript { turn, text } => {
                    turn_record(s, *turn).transcript = Some(text.clone())
                }
                Meta::Reply { turn, text } => turn_record(s, *turn).reply = Some(text.clone()),
            }
            Some(Event::Meta(m))
        }),
        MsgType::Error => frame.parse_json::<ErrorMsg>().map(|e| {
            s.errors.push(e.clone());
            Some(Event::Error(e))
        }),
        MsgType::Pong => Ok(Some(Event::Pong(frame.payload.clone()))),
        // Nothing else is sent s→c after WELCOME; a server PING is only counted.
        _ => Ok(None),
    };
    parsed.unwrap_or_else(|e| {
        s.errors.push(client_error(e.to_string()));
        None
    })
}

/// A live "microphone": a task that sends one 20 ms frame every 20 ms, from the queued
/// utterances while there are any and digital silence otherwise, as a browser's capture does
/// (so the server's VAD sees the pauses). Stops when dropped.
pub struct Mic {
    queue: mpsc::UnboundedSender<std::sync::Arc<Vec<f32>>>,
    spoken: mpsc::UnboundedReceiver<u64>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Drop for Mic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mic {
    pub fn spawn(sender: Sender) -> Mic {
        let (queue, mut rx) = mpsc::unbounded_channel::<std::sync::Arc<Vec<f32>>>();
        let (done, spoken) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let silence = vec![0i16; FRAME_20MS_16K];
            let start = tokio::time::Instant::now();
            let mut current: Option<(std::sync::Arc<Vec<f32>>, usize)> = None;
            for k in 0u64.. {
                tokio::time::sleep_until(start + Duration::from_millis(20 * k)).await;
                if current.is_none() {
                    current = rx.try_recv().ok().map(|u| (u, 0));
                }
                match &mut current {
                    Some((u, pos)) => {
                        let end = (*pos + FRAME_20MS_16K).min(u.len());
                        let mut pcm = to_pcm16(&u[*pos..end]);
                        pcm.resize(FRAME_20MS_16K, 0);
                        let t = sender.audio(&pcm).await?;
                        *pos = end;
                        if end == u.len() {
                            let _ = done.send(t);
                            current = None;
                        }
                    }
                    None => {
                        sender.audio(&silence).await?;
                    }
                }
            }
            Ok(())
        });
        Mic {
            queue,
            spoken,
            task,
        }
    }

    /// Queues an utterance (16 kHz, [-1, 1]); it is spoken after those queued before it.
    pub fn say(&self, samples: std::sync::Arc<Vec<f32>>) {
        // The task only ends when the socket fails; `spoken` then never answers.
        let _ = self.queue.send(samples);
    }

    /// The client time of the last frame of the next utterance that finished, if one has.
    pub fn try_spoken(&mut self) -> Option<u64> {
        self.spoken.try_recv().ok()
    }

    /// Waits until the next queued utterance has been sent; its last frame's client time.
    pub async fn spoken(&mut self, timeout: Duration) -> Result<u64> {
        tokio::time::timeout(timeout, self.spoken.recv())
            .await
            .map_err(|_| ClientError::Timeout {
                what: "the microphone to finish an utterance".into(),
                after: timeout,
            })?
            .ok_or_else(|| ClientError::Closed(" (the microphone task ended)".into()))
    }
}

/// `GET path` over plain HTTP/1.1 on `addr` (for `/health` and `/metrics`); returns the status
/// code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| ClientError::Closed(format!(" (GET {path} on {addr}: {e})"));
    let mut tcp = TcpStream::connect(addr).await.map_err(io)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol(format!("GET {path}: no HTTP header end")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("GET {path}: bad status line")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of an unlabelled Prometheus sample `name` in a `/metrics` text, or the sum over
/// its label sets.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        let bare = key.split('{').next().unwrap_or(key);
        if bare == name {
            let v: f64 = value.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Writes an S2S model export with random weights (seeded) to `dir`, on the bundled `vaak-16k`
/// codec (`num_codebooks` of its 1024-code books): the S2S `preset` (`tiny`, `small`, `base`)
/// for tests and for benchmarking the serving path before a trained model exists. It answers
/// with noise, at the cost of a real model of that size. Ships four voices (`voices/*.npy`,
/// deterministic pseudo-random speaker embeddings).
pub fn write_random_s2s(
    dir: &std::path::Path,
    preset: &str,
    num_codebooks: usize,
    seed: u64,
) -> std::result::Result<(), Box<vaak_s2s::S2sError>> {
    write_random(dir, preset, num_codebooks, seed).map_err(Box::new)
}

// vaak-s2s's own error type, as its functions return it; boxed at the public boundary above.
#[allow(clippy::result_large_err)]
fn write_random(
    dir: &std::path::Path,
    preset: &str,
    num_codebooks: usize,
    seed: u64,
) -> vaak_s2s::Result<()> {
    let codec = vaak_s2s::CodecSpec {
        num_codebooks,
        cardinality: 1024,
        frame_rate: 25.0,
    };
    let cfg = vaak_s2s::S2sConfig::preset(preset, codec)?;
    let (_, vars) = vaak_s2s::S2sModel::init_seeded(&cfg, &candle_core::Device::Cpu, seed)?;
    vaak_s2s::S2sModel::save(&cfg, &vars, dir)?;
    let info = vaak_s2s::train::trainer::ExportInfo {
        codec: "vaak-16k".into(),
        num_codebooks,
        stage: None,
        step: None,
    };
    let path = dir.join(vaak_s2s::train::trainer::CODEC_FILE);
    let json = serde_json::to_string_pretty(&info).expect("ExportInfo serialises");
    std::fs::write(&path, json).map_err(|e| vaak_s2s::S2sError::Io { path, source: e })?;
    let vdir = dir.join(vaak_s2s::speech::VOICES_DIR);
    std::fs::create_dir_all(&vdir).map_err(|e| vaak_s2s::S2sError::Io {
        path: vdir.clone(),
        source: e,
    })?;
    for (v, name) in ["arjun", "lakshmi", "priya", "ravi"].iter().enumerate() {
        let emb: Vec<f32> = (0..cfg.speaker_dim)
            .map(|i| (((i * 7919 + v * 104_729) as f32) * 0.618).sin() * 0.5)
            .collect();
        candle_core::Tensor::from_vec(emb, cfg.speaker_dim, &candle_core::Device::Cpu)?
            .write_npy(vdir.join(format!("{name}.npy")))?;
    }
    Ok(())
}

/// Float samples to PCM16 (clipped).
pub fn to_pcm16(x: &[f32]) -> Vec<i16> {
    x.iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

/// Test speech: espeak-ng utterances with silence between them, at 16 kHz.
pub mod speech {
    use super::{ClientError, Result};
    use std::process::Command;

    pub const RATE: u32 = 16_000;

    /// A track and where its speech is.
    #[derive(Clone, Debug, Default)]
    pub struct Track {
        pub samples: Vec<f32>,
        /// `[start, end)` sample ranges of each utterance (trimmed to the first and last sample
        /// above -50 dBFS, so espeak-ng's own leading and trailing silence is not speech).
        pub utterances: Vec<(usize, usize)>,
    }

    impl Track {
        pub fn duration_s(&self) -> f64 {
            self.samples.len() as f64 / f64::from(RATE)
        }
    }

    /// One utterance from espeak-ng (`voice` as `espeak-ng --voices` names it, e.g. `en-us`),
    /// resampled to 16 kHz.
    pub fn espeak(text: &str, voice: &str, rate_wpm: u32) -> Result<Vec<f32>> {
        let dir = tempfile::tempdir().map_err(|e| ClientError::Speech(format!("temp dir: {e}")))?;
        let wav = dir.path().join("u.wav");
        let out = Command::new("espeak-ng")
            .args(["-b", "1", "-v", voice, "-s"])
            .arg(rate_wpm.to_string())
            .arg("-w")
            .arg(&wav)
            .arg("--")
            .arg(text)
            .output()
            .map_err(|e| {
                ClientError::Speech(format!(
                    "cannot run espeak-ng ({e}); install it: apt-get install espeak-ng"
                ))
            })?;
        if !out.status.success() {
            return Err(ClientError::Speech(format!(
                "espeak-ng -v {voice} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let audio = vaak_audio::io::decode_file(&wav, Some(RATE))
            .map_err(|e| ClientError::Speech(format!("espeak-ng output: {e}")))?;
        if audio.samples.iter().all(|&s| s == 0.0) {
            return Err(ClientError::Speech(format!(
                "espeak-ng -v {voice} produced only silence for {text:?}"
            )));
        }
        Ok(audio.samples)
    }

    /// `[first, last]` of the samples above -50 dBFS, or `None` for silence.
    pub fn active_span(x: &[f32]) -> Option<(usize, usize)> {
        let thr = 10f32.powf(-50.0 / 20.0);
        let first = x.iter().position(|s| s.abs() > thr)?;
        let last = x.iter().rposition(|s| s.abs() > thr)?;
        Some((first, last + 1))
    }

    /// `[first, last]` of the samples within `db` of the peak (e.g. 30 dB), or `None` for
    /// silence: where the speech is, independent of the level and of a codec's noise floor.
    pub fn span_near_peak(x: &[f32], db: f32) -> Option<(usize, usize)> {
        let peak = x.iter().fold(0f32, |m, s| m.max(s.abs()));
        if peak == 0.0 {
            return None;
        }
        let thr = peak * 10f32.powf(-db / 20.0);
        let first = x.iter().position(|s| s.abs() > thr)?;
        let last = x.iter().rposition(|s| s.abs() > thr)?;
        Some((first, last + 1))
    }

    /// `lead_s` of silence, then each text spoken by `voice` followed by `gap_s` of silence.
    pub fn track(texts: &[&str], voice: &str, lead_s: f64, gap_s: f64) -> Result<Track> {
        let mut t = Track {
            samples: vec![0.0; (lead_s * f64::from(RATE)) as usize],
            utterances: Vec::new(),
        };
        for text in texts {
            let u = espeak(text, voice, 165)?;
            let (a, b) = active_span(&u).ok_or_else(|| {
                ClientError::Speech(format!("espeak-ng said nothing for {text:?}"))
            })?;
            let off = t.samples.len();
            t.samples.extend_from_slice(&u[a..b]);
            t.utterances.push((off, off + b - a));
            t.samples
                .extend(std::iter::repeat_n(0.0, (gap_s * f64::from(RATE)) as usize));
        }
        Ok(t)
    }

    /// Sentences the bench and tests speak.
    pub const SENTENCES: [&str; 6] = [
        "Hello, can you hear me clearly today?",
        "The meeting starts at nine thirty tomorrow morning.",
        "Please translate this sentence into Hindi.",
        "What is the weather like in Hyderabad?",
        "I would like two tickets for the evening show.",
        "Thank you, that was very helpful.",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(ty: MsgType, seq: u32, payload: Vec<u8>) -> Frame {
        Frame::new(ty, seq, 5, payload)
    }

    fn audio(turn: u32, n: usize) -> Frame {
        Frame::audio(0, 5, turn, &vec![0i16; n])
    }

    fn js(ty: MsgType, v: serde_json::Value) -> Frame {
        frame(ty, 0, v.to_string().into_bytes())
    }

    #[test]
    fn audio_of_a_flushed_turn_is_counted_stale_and_latency_is_measured() {
        let mut s = ClientStats::default();
        let meta = json!({"kind": "latency", "turn": 1, "speech_end_t_us": 1_000_000u64,
            "endpoint_ms": 300.0, "stages_ms": {"endpoint": 300.0, "encode_flush": 1.0,
            "first_decoder_step": 2.0, "codec_decode": 3.0, "server_total": 12.5}});
        on_frame(&mut s, &js(MsgType::Meta, meta), 0);
        let ev = on_frame(&mut s, &audio(1, 640), 1_450_000);
        assert!(
            matches!(ev, Some(Event::Audio { turn: 1, fresh: true, ref samples, .. }) if samples.len() == 640)
        );
        on_frame(&mut s, &audio(1, 640), 1_470_000);
        let rec = &s.turns[&1];
        assert_eq!(rec.latency_ms(), Some(450.0));
        assert_eq!(rec.audio_frames, 2);
        assert_eq!(rec.endpoint_ms, Some(300.0));
        assert_eq!(rec.stages_ms["server_total"], 12.5);

        on_frame(
            &mut s,
            &js(MsgType::Control, json!({"op": "flush", "turn": 1})),
            0,
        );
        assert_eq!(s.flushes, 1);
        assert!(s.turns[&1].flushed);
        let ev = on_frame(&mut s, &audio(1, 640), 0);
        assert!(matches!(ev, Some(Event::Audio { fresh: false, .. })));
        assert_eq!(s.stale_frames, 1);
        assert_eq!(
            s.turns[&1].audio_frames, 2,
            "stale frames are not the turn's audio"
        );
        // The next turn's audio is fresh.
        on_frame(&mut s, &audio(2, 640), 2_000_000);
        assert_eq!(s.stale_frames, 1);
        assert_eq!(s.turns[&2].first_audio_us, Some(2_000_000));
        assert_eq!(s.latencies_ms(), vec![450.0]);
    }

    #[test]
    fn bad_payloads_are_recorded_not_panicked_on() {
        let mut s = ClientStats::default();
        assert!(on_frame(&mut s, &frame(MsgType::Audio, 1, vec![1, 2]), 0).is_none());
        assert!(on_frame(&mut s, &frame(MsgType::Error, 2, b"not json".to_vec()), 0).is_none());
        assert!(on_frame(&mut s, &js(MsgType::Control, json!({"op": "nope"})), 0).is_none());
        assert_eq!(s.errors.len(), 3);
        assert!(s.errors.iter().all(|e| e.code == ErrorCode::BadFrame));
        let ev = on_frame(
            &mut s,
            &js(
                MsgType::Error,
                json!({"code": "busy", "message": "full", "fatal": true}),
            ),
            0,
        );
        assert!(matches!(
            ev,
            Some(Event::Error(ErrorMsg {
                code: ErrorCode::Busy,
                ..
            }))
        ));
        on_frame(
            &mut s,
            &js(
                MsgType::Control,
                json!({"op": "turn_ended", "turn": 4, "reason": "interrupted"}),
            ),
            0,
        );
        assert_eq!(s.turns[&4].ended, Some(TurnEndReason::Interrupted));
        assert_eq!(s.turns[&4].latency_ms(), None);
    }

    #[test]
    fn prometheus_samples_are_read_and_label_sets_summed() {
        let text = "# HELP vaak_x x\nvaak_x 2.5\nvaak_errors_total{code=\"busy\"} 1\n\
                    vaak_errors_total{code=\"bad_frame\"} 2\n";
        assert_eq!(metric(text, "vaak_x"), Some(2.5));
        assert_eq!(metric(text, "vaak_errors_total"), Some(3.0));
        assert_eq!(metric(text, "vaak_y"), None);
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }

    #[test]
    fn pcm16_conversion_clips() {
        assert_eq!(
            to_pcm16(&[0.0, 1.0, -1.0, 2.0, -2.0]),
            vec![0, 32767, -32767, 32767, -32767]
        );
    }

    #[test]
    fn active_span_trims_silence() {
        let mut x = vec![0.0f32; 100];
        x[10] = 0.5;
        x[20] = -0.5;
        assert_eq!(speech::active_span(&x), Some((10, 21)));
        assert_eq!(speech::active_span(&[0.0; 10]), None);
        x[50] = 0.001;
        assert_eq!(speech::span_near_peak(&x, 30.0), Some((10, 21)));
        assert_eq!(speech::span_near_peak(&x, 60.0), Some((10, 51)));
    }
}
