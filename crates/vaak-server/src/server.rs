//! The HTTP side: model loading, the axum router (`/ws`, `/health`, `/metrics`, the static
//! client), admission, auth, and start/shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use candle_core::DType;
use tokio::sync::watch;
use vaak_codec::{Codec, Preset};
use vaak_s2s::{GenerationConfig, SpeechModel};

use crate::config::{PipelineMode, ServeConfig};
use crate::error::{Result, ServeError};
use crate::metrics::Metrics;
use crate::pipeline::PipelineHandle;
use crate::protocol::Mode;
use crate::session;
use crate::static_files;
use crate::worker::{Cmd, Models, Worker, WorkerConfig};

/// What the sessions need to know about the loaded models.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub sample_rate: u32,
    pub frame_samples: usize,
    pub voices: Vec<String>,
    pub has_s2s: bool,
    pub codec: String,
    pub s2s: String,
    /// The pipeline that answers instead of the S2S model (`off`: none).
    pub pipeline: PipelineMode,
}

impl ModelInfo {
    pub fn modes(&self) -> Vec<Mode> {
        match self.pipeline {
            PipelineMode::Translate => return vec![Mode::Translate],
            PipelineMode::Converse => return vec![Mode::Converse],
            PipelineMode::Off => {}
        }
        if self.has_s2s {
            Mode::ALL.to_vec()
        } else {
            vec![Mode::Echo]
        }
    }
}

/// State shared by every connection.
pub struct AppState {
    pub cfg: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub info: ModelInfo,
    pub worker: Mutex<mpsc::Sender<Cmd>>,
    /// Pipeline mode's engine (`None`: the S2S model or echo answers).
    pub pipeline: Option<Arc<PipelineHandle>>,
    free_slots: Mutex<Vec<usize>>,
    pub started: Instant,
    next_id: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// Microseconds on the server's monotonic clock.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn send(&self, cmd: Cmd) {
        if let Ok(tx) = self.worker.lock() {
            let _ = tx.send(cmd);
        }
    }

    /// A free model slot, or `None` at capacity.
    pub fn acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        let slot = self.free_slots.lock().ok()?.pop()?;
        self.metrics.sessions_active.inc();
        self.metrics.sessions_total.inc();
        Some(SlotGuard {
            state: self.clone(),
            slot,
        })
    }

    pub fn session_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("s{:x}-{n}", self.started.elapsed().as_nanos() & 0xffff_ffff)
    }
}

/// A held model slot: released (and reset in the worker) on drop, whatever ends the session.
pub struct SlotGuard {
    state: Arc<AppState>,
    pub slot: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.state.send(Cmd::Close { slot: self.slot });
        if let Ok(mut f) = self.state.free_slots.lock() {
            f.push(self.slot);
        }
        self.state.metrics.sessions_active.dec();
    }
}

/// Opens the device, the codec and the S2S model of `cfg` (no S2S model in pipeline mode;
/// the pipeline's models load in [`start_with_models`]).
pub fn load_models(cfg: &ServeConfig) -> Result<(Models, ModelInfo)> {
    let device = vaak_nn::parse_device(&cfg.device).map_err(|e| ServeError::Device {
        spec: cfg.device.clone(),
        source: Box::new(e),
    })?;
    let s2s_spec = if cfg.pipeline.enabled() {
        "none"
    } else {
        cfg.s2s.as_str()
    };
    let s2s = match s2s_spec {
        "none" => None,
        "bundled" => Some(
            vaak_s2s::bundled::load(&device).map_err(|e| ServeError::S2s {
                location: vaak_s2s::bundled::BUNDLED_S2S.to_string(),
                source: Box::new(e),
            })?,
        ),
        dir => Some(
            SpeechModel::load(Path::new(dir), &device).map_err(|e| ServeError::S2s {
                location: dir.to_string(),
                source: Box::new(e),
            })?,
        ),
    };
    let cerr = |e| ServeError::Codec {
        location: cfg.codec.clone(),
        source: Box::new(e),
    };
    let mut codec = if cfg.codec == "vaak-16k" {
        Codec::bundled_vaak_16k(&device).map_err(cerr)?
    } else {
        let opts = vaak_nn::weights::LoadOptions {
            device: device.clone(),
            dtype: Some(DType::F32),
            ..Default::default()
        };
        Codec::load(&cfg.codec, Preset::Vaak16k, &opts).map_err(cerr)?
    };
    if codec.sample_rate() != crate::vad::VAD_RATE as usize {
        return Err(ServeError::Config(format!(
            "codec {} runs at {} Hz; the server's VAD and protocol run at {} Hz",
            cfg.codec,
            codec.sample_rate(),
            crate::vad::VAD_RATE
        )));
    }
    if let Some(m) = &s2s {
        let spec = &m.model().config().codec;
        if spec.cardinality != codec.codebook_size() || spec.num_codebooks > codec.max_codebooks() {
            return Err(ServeError::CodecMismatch {
                location: cfg.s2s.clone(),
                codec: cfg.codec.clone(),
                model: spec.num_codebooks,
                model_card: spec.cardinality,
                codec_k: codec.max_codebooks(),
                codec_card: codec.codebook_size(),
            });
        }
        codec.set_num_codebooks(spec.num_codebooks).map_err(cerr)?;
    }
    let info = ModelInfo {
        sample_rate: codec.sample_rate() as u32,
        frame_samples: codec.hop_length(),
        voices: s2s.as_ref().map(|m| m.voices()).unwrap_or_default(),
        has_s2s: s2s.is_some(),
        codec: cfg.codec.clone(),
        s2s: s2s_spec.to_string(),
        pipeline: cfg.pipeline.mode,
    };
    Ok((Models { codec, s2s, device }, info))
}

/// A server running in the background (tests, bench): its address and a way to stop it.
pub struct RunningServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: Option<Worker>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Closes every session (CONTROL `closing`), stops accepting and stops the worker.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let r = (&mut self.task).await;
        if let Some(w) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || drop(w)).await;
        }
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Bind {
                addr: self.addr.to_string(),
                source: e,
            }),
            Err(e) => Err(ServeError::Worker(format!("server task: {e}"))),
        }
    }

    /// Runs until the task ends (after [`RunningServer::shutdown`] or an I/O error).
    pub async fn wait(mut self) -> Result<()> {
        let r = (&mut self.task).await;
        if let Some(w) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || drop(w)).await;
        }
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Bind {
                addr: self.addr.to_string(),
                source: e,
            }),
            Err(e) => Err(ServeError::Worker(format!("server task: {e}"))),
        }
    }

    /// A handle that stops the server when sent `true`.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Loads the models, binds and serves in the background.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer> {
    cfg.validate()?;
    let c = cfg.clone();
    let (models, info) = tokio::task::spawn_blocking(move || load_models(&c))
        .await
        .map_err(|e| ServeError::Worker(e.to_string()))??;
    start_with_models(cfg, models, info).await
}

/// [`start`] with models already loaded.
pub async fn start_with_models(
    cfg: ServeConfig,
    models: Models,
    info: ModelInfo,
) -> Result<RunningServer> {
    cfg.validate()?;
    let pipeline = if cfg.pipeline.enabled() {
        let (p, dev) = (cfg.pipeline.clone(), cfg.device.clone());
        let h = tokio::task::spawn_blocking(move || PipelineHandle::start(&p, &dev))
            .await
            .map_err(|e| ServeError::Worker(e.to_string()))??;
        Some(Arc::new(h))
    } else {
        None
    };
    let mut info = info;
    info.pipeline = cfg.pipeline.mode;
    let metrics = Arc::new(Metrics::new());
    let frame_ms = 1000.0 * info.frame_samples as f64 / info.sample_rate as f64;
    let frames = |s: f64| ((s * 1000.0) / frame_ms).ceil() as usize;
    let v = &cfg.vad;
    let ring_ms = v.prefix_padding_ms + v.min_speech_ms.max(v.min_interruption_ms) + 400;
    let g = &cfg.generation;
    let wcfg = WorkerConfig {
        slots: cfg.max_sessions,
        ring_frames: frames(ring_ms as f64 / 1000.0).max(1),
        max_turn_frames: frames(cfg.limits.max_turn_s).max(1),
        max_reply_frames: frames(cfg.limits.max_reply_s).max(1),
        context_turns: cfg.context_turns,
        generation: GenerationConfig {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            seed: g.seed,
            max_frames: frames(cfg.limits.max_reply_s).max(1),
            ..Default::default()
        },
        max_pending_samples: info.sample_rate as usize * 10,
    };
    let worker = Worker::spawn(models, wcfg, metrics.clone())?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| ServeError::Bind {
            addr: addr.clone(),
            source: e,
        })?;
    let bound = listener.local_addr().map_err(|e| ServeError::Bind {
        addr: addr.clone(),
        source: e,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        free_slots: Mutex::new((0..cfg.max_sessions).rev().collect()),
        cfg,
        metrics,
        info,
        worker: Mutex::new(worker.sender()),
        pipeline,
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        shutdown: stop_rx.clone(),
    });
    let app = Router::new()
        .route("/ws", get(ws_handler))
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .fallback(get(static_handler))
        .with_state(state.clone());
    let mut rx = stop_rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(addr = %bound, "vaak serve listening");
    Ok(RunningServer {
        addr: bound,
        state,
        stop,
        task,
        worker: Some(worker),
    })
}

/// Runs the server until Ctrl-C.
pub async fn serve(cfg: ServeConfig) -> Result<()> {
    let server = start(cfg).await?;
    let stop = server.stopper();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    server.wait().await
}

async fn static_handler(uri: Uri) -> Response {
    static_files::response(uri.path())
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": crate::protocol::VERSION,
        "uptime_s": st.started.elapsed().as_secs_f64(),
        "sessions_active": st.metrics.sessions_active.get(),
        "max_sessions": st.cfg.max_sessions,
        "codec": st.info.codec,
        "s2s": st.info.s2s,
        "pipeline": st.info.pipeline.name(),
        "modes": st.info.modes().iter().map(|m| m.name()).collect::<Vec<_>>(),
        "sample_rate": st.info.sample_rate,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics_handler(State(st): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Why a connection is refused before its session starts.
pub fn check_auth(
    cfg: &ServeConfig,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> std::result::Result<(), String> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(o) = &origin {
        let allowed = if cfg.security.allowed_origins.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let o_host = o.split("://").nth(1).unwrap_or("");
            let bare = o_host.rsplit_once(':').map_or(o_host, |(h, p)| {
                if p.parse::<u16>().is_ok() {
                    h
                } else {
                    o_host
                }
            });
            o_host == host || matches!(bare, "localhost" | "127.0.0.1" | "[::1]")
        } else {
            cfg.security
                .allowed_origins
                .iter()
                .any(|a| a.trim_end_matches('/') == o.trim_end_matches('/'))
        };
        if !allowed {
            return Err(format!("origin {o} is not allowed"));
        }
    }
    if let Some(key) = cfg.security.api_key.as_deref().filter(|k| !k.is_empty()) {
        let given = query
            .get("api_key")
            .map(String::as_str)
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => {}
            Some(_) => return Err("wrong API key".into()),
            None => {
                return Err(
                    "an API key is required (?api_key=, x-api-key or Authorization: Bearer)".into(),
                )
            }
        }
    } else if cfg.auth_required() {
        return Err("the server requires an API key but has none configured".into());
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let auth = check_auth(&st.cfg, &headers, &query);
    // Frames past the limit are read whole (up to 4x) so the client gets ERROR `too_large`
    // rather than a bare close.
    let max = st.cfg.limits.max_frame_bytes.saturating_mul(4).max(65536);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(socket, st, auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_default_allows_same_host_and_no_origin() {
        let c = ServeConfig::default();
        let q = HashMap::new();
        assert!(check_auth(&c, &headers(&[]), &q).is_ok());
        assert!(check_auth(
            &c,
            &headers(&[
                ("origin", "http://127.0.0.1:8998"),
                ("host", "127.0.0.1:8998")
            ]),
            &q
        )
        .is_ok());
        assert!(check_auth(&c, &headers(&[("origin", "http://localhost:3000")]), &q).is_ok());
        assert!(check_auth(&c, &headers(&[("origin", "https://evil.example")]), &q).is_err());
    }

    #[test]
    fn key_is_checked_in_query_and_headers() {
        let mut c = ServeConfig::default();
        c.security.api_key = Some("sekrit".into());
        c.security.allowed_origins = vec!["https://app.example".into()];
        let mut q = HashMap::new();
        assert!(check_auth(&c, &headers(&[]), &q).is_err());
        q.insert("api_key".to_string(), "sekrit".to_string());
        assert!(check_auth(&c, &headers(&[]), &q).is_ok());
        assert!(check_auth(&c, &headers(&[("origin", "https://other.example")]), &q).is_err());
        assert!(check_auth(&c, &headers(&[("origin", "https://app.example")]), &q).is_ok());
        let q = HashMap::new();
        assert!(check_auth(&c, &headers(&[("x-api-key", "sekrit")]), &q).is_ok());
        assert!(check_auth(&c, &headers(&[("authorization", "Bearer sekrit")]), &q).is_ok());
        assert!(check_auth(&c, &headers(&[("authorization", "Bearer nope")]), &q).is_err());
    }
}
