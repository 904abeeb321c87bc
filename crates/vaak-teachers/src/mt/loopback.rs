//! A chat-completions server on 127.0.0.1 that answers every request with a fixed tag and the
//! source's word count. It is not a translator: it lets tests and `vaak bench cascade` run the
//! real OpenAI-compatible client, over real HTTP, without a model or a network.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::{extract::State, routing::post, Json, Router};

use crate::error::{Result, TeacherError};

/// What the server replies: `"{TAG}, {n} words"`.
pub const TAG: &str = "hello world";

/// The server; it stops when dropped.
pub struct LoopbackChatServer {
    base_url: String,
    requests: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

async fn chat(
    State(n): State<Arc<AtomicUsize>>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    n.fetch_add(1, Ordering::SeqCst);
    let text = body["messages"][1]["content"].as_str().unwrap_or_default();
    let words = text.split_whitespace().count();
    Json(serde_json::json!({
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": format!("{TAG}, {words} words")}
        }]
    }))
}

impl LoopbackChatServer {
    /// Binds 127.0.0.1 on a free port and serves `POST /v1/chat/completions`.
    pub fn start() -> Result<Self> {
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
        let requests = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(requests.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            requests,
            rt: Some(rt),
        })
    }

    /// The `base_url` to give the OpenAI client.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for LoopbackChatServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
