//! A chat-completions server on 127.0.0.1 for tests and benchmarks, with no model behind it.
//!
//! - A plain request is answered with a fixed tag and the source's word count
//!   (`"{TAG}, {n} words"`): it lets tests and `vaak bench cascade` run the real
//!   OpenAI-compatible client over real HTTP without a model or a network. It is not a
//!   translator.
//! - A `stream: true` request is answered with server-sent events: the configured reply
//!   ([`LoopbackOptions::reply`]), one word per event at a fixed interval, then `[DONE]`. The
//!   server counts the streams a client dropped before the end ([`LoopbackChatServer::cancelled`]),
//!   which is how tests see that a barge-in closed the LLM request.
//! - [`LoopbackOptions::fail_status`] makes every request fail with that HTTP status.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{extract::State, routing::post, Json, Router};

use crate::error::{Result, TeacherError};

/// What the server replies: `"{TAG}, {n} words"`.
pub const TAG: &str = "hello world";

/// How the server answers.
#[derive(Clone, Debug)]
pub struct LoopbackOptions {
    /// The streamed reply, sent one word (with its trailing space) per event.
    pub reply: String,
    /// Time between two streamed events (the token rate is its inverse).
    pub token_interval: Duration,
    /// Answer every request with this status and an OpenAI-style error body.
    pub fail_status: Option<u16>,
}

impl Default for LoopbackOptions {
    fn default() -> Self {
        Self {
            reply: "Hello there. This is a streamed reply. It has three sentences.".into(),
            token_interval: Duration::from_millis(20),
            fail_status: None,
        }
    }
}

struct Shared {
    opts: std::sync::Mutex<LoopbackOptions>,
    requests: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    last_body: std::sync::Mutex<Option<serde_json::Value>>,
}

/// The server; it stops when dropped.
pub struct LoopbackChatServer {
    base_url: String,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

/// Counts a stream as cancelled when the body is dropped before its last event.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: AtomicBool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) {
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn chunk(model: &str, delta: serde_json::Value, finish: Option<&str>) -> String {
    let v = serde_json::json!({
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {v}\n\n")
}

async fn chat(State(sh): State<Arc<Shared>>, Json(body): Json<serde_json::Value>) -> Response {
    sh.requests.fetch_add(1, Ordering::SeqCst);
    *sh.last_body.lock().unwrap_or_else(|p| p.into_inner()) = Some(body.clone());
    let opts = sh.opts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(code) = opts.fail_status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = serde_json::json!({"error": {"message": format!("loopback server fails with {code}"), "type": "server_error"}});
        return (status, Json(err)).into_response();
    }
    let model = body["model"].as_str().unwrap_or("loopback").to_string();
    if body["stream"].as_bool() != Some(true) {
        let text = body["messages"][1]["content"].as_str().unwrap_or_default();
        let words = text.split_whitespace().count();
        return Json(serde_json::json!({
            "choices": [{
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": format!("{TAG}, {words} words")}
            }]
        }))
        .into_response();
    }
    let mut events: Vec<String> = vec![chunk(
        &model,
        serde_json::json!({"role": "assistant"}),
        None,
    )];
    let words: Vec<&str> = opts.reply.split_inclusive(' ').collect();
    for w in &words {
        events.push(chunk(&model, serde_json::json!({"content": w}), None));
    }
    events.push(chunk(&model, serde_json::json!({}), Some("stop")));
    events.push("data: [DONE]\n\n".to_string());
    let guard = Arc::new(StreamGuard {
        shared: sh.clone(),
        finished: AtomicBool::new(false),
    });
    let interval = opts.token_interval;
    let stream =
        futures_util::stream::unfold((0usize, events, guard), move |(i, ev, g)| async move {
            if i >= ev.len() {
                g.finished.store(true, Ordering::SeqCst);
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let item: std::result::Result<String, Infallible> = Ok(ev[i].clone());
            Some((item, (i + 1, ev, g)))
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

impl LoopbackChatServer {
    /// Binds 127.0.0.1 on a free port and serves `POST /v1/chat/completions` with the default
    /// [`LoopbackOptions`].
    pub fn start() -> Result<Self> {
        Self::start_with(LoopbackOptions::default())
    }

    /// [`LoopbackChatServer::start`] with `opts`.
    pub fn start_with(opts: LoopbackOptions) -> Result<Self> {
        let io = |e: std::io::Error| TeacherError::Msg(format!("loopback chat server: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io)?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let shared = Arc::new(Shared {
            opts: std::sync::Mutex::new(opts),
            requests: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            last_body: std::sync::Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            rt: Some(rt),
        })
    }

    /// The `base_url` to give the OpenAI client.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Streams sent to their end.
    pub fn completed(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Streams the client dropped before their end.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// The JSON body of the latest request.
    pub fn last_body(&self) -> Option<serde_json::Value> {
        self.shared
            .last_body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes how later requests are answered (e.g. start or stop failing).
    pub fn set_options(&self, opts: LoopbackOptions) {
        *self.shared.opts.lock().unwrap_or_else(|p| p.into_inner()) = opts;
    }
}

impl Drop for LoopbackChatServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
