//! One WebSocket session: handshake, limits, VAD turn-taking, barge-in, reply pacing.
//!
//! Two lanes go to the socket writer: control frames (unbounded, always first) and audio
//! (a short bounded queue). A flush stores the flushed turn before its CONTROL is queued, and
//! the writer checks it right before sending each audio frame, so no frame of a flushed turn
//! can follow the flush on the wire.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;
use vaak_audio::resample::StreamResampler;
use vaak_s2s::{Emotion, Language, SlotCondition};

use crate::pipeline::{Act, PipeEvent, PipelineTurns};
use crate::protocol::{
    Control, ErrorCode, ErrorMsg, Frame, Hello, Meta, MsgType, Stages, TurnEndReason, TurnMode,
    Welcome, WelcomeLimits,
};
use crate::server::{AppState, SlotGuard};
use crate::vad::{TurnDetector, VadEvent};
use crate::worker::{Cmd, TurnSetup, WorkerEvent};

enum Out {
    Frame(MsgType, Vec<u8>),
    Close,
}

/// The audio lane: reply frames, and the control frames that must follow them in order
/// (`turn_ended done`).
enum AudioOut {
    Audio { turn: u32, pcm: Vec<i16> },
    After(Control),
}

impl AudioOut {
    fn turn(&self) -> Option<u32> {
        match self {
            AudioOut::Audio { turn, .. } => Some(*turn),
            AudioOut::After(_) => None,
        }
    }
}

/// The socket writer: control lane first, audio lane after, seq and t_us stamped here.
async fn writer(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut ctrl: mpsc::UnboundedReceiver<Out>,
    mut audio: mpsc::Receiver<AudioOut>,
    flushed: Arc<AtomicU64>,
    st: Arc<AppState>,
) {
    let mut seq: u32 = 0;
    loop {
        let (kind, payload) = tokio::select! {
            biased;
            m = ctrl.recv() => match m {
                Some(Out::Frame(k, p)) => (k, p),
                Some(Out::Close) | None => break,
            },
            a = audio.recv() => match a {
                Some(AudioOut::Audio { turn, pcm }) => {
                    if (turn as u64) < flushed.load(Ordering::SeqCst) {
                        continue;
                    }
                    (MsgType::Audio, Frame::audio(0, 0, turn, &pcm).payload)
                }
                Some(AudioOut::After(c)) => (MsgType::Control, json(&c)),
                None => break,
            },
        };
        let f = Frame::new(kind, seq, st.now_us(), payload);
        seq = seq.wrapping_add(1);
        if sink.send(Message::Binary(f.encode().into())).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Idle,
    UserTurn { turn: u32, manual: bool },
    Replying { turn: u32 },
}

struct TurnInfo {
    turn: u32,
    speech_end_t_us: u64,
    endpoint_ms: f64,
}

struct Session {
    st: Arc<AppState>,
    slot: usize,
    ctrl: mpsc::UnboundedSender<Out>,
    audio_tx: mpsc::Sender<AudioOut>,
    flushed: Arc<AtomicU64>,
    hello: Hello,
    vad: TurnDetector,
    resampler: Option<StreamResampler>,
    phase: Phase,
    next_turn: u32,
    last_info: Option<TurnInfo>,
    /// Stream position (samples) where the user turn began.
    turn_start_pos: u64,
    /// Reply audio waiting for its playout time.
    queue: VecDeque<AudioOut>,
    play_anchor: Option<Instant>,
    sent_samples: u64,
    done: Option<(u32, TurnEndReason)>,
    /// Reply held while user speech decides between barge-in and a false interruption.
    paused_at: Option<Instant>,
    expect_seq: Option<u32>,
    /// (stream position in samples after the frame, client t_us of the frame).
    positions: VecDeque<(u64, u64)>,
    fed: u64,
    /// Pipeline mode: the turns' progress through ASR, MT/LLM and TTS.
    pipe: Option<PipelineTurns>,
}

/// Serves one connection; `auth` is the verdict of the upgrade request.
pub async fn run(socket: WebSocket, st: Arc<AppState>, auth: Result<(), String>) {
    let (sink, mut stream) = socket.split();
    let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
    let (audio_tx, audio_rx) = mpsc::channel(8);
    let flushed = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(writer(sink, ctrl_rx, audio_rx, flushed.clone(), st.clone()));
    let fatal = |code: ErrorCode, message: String| {
        st.metrics.error(code);
        let e = ErrorMsg {
            code,
            message,
            fatal: true,
        };
        let _ = ctrl.send(Out::Frame(MsgType::Error, json(&e)));
        let _ = ctrl.send(Out::Close);
    };
    if let Err(m) = auth {
        tracing::info!(reason = %m, "connection refused");
        fatal(ErrorCode::Unauthorized, m);
        finish(w, &mut stream).await;
        return;
    }
    let Some(guard) = st.acquire() else {
        fatal(
            ErrorCode::Busy,
            format!(
                "the server is at capacity ({} sessions); try again later",
                st.cfg.max_sessions
            ),
        );
        finish(w, &mut stream).await;
        return;
    };
    let id = st.session_id();
    let span = tracing::info_span!("session", id = %id, slot = guard.slot);
    let hello = match read_hello(&mut stream, &st).await {
        Ok(h) => h,
        Err((code, m)) => {
            fatal(code, m);
            finish(w, &mut stream).await;
            return;
        }
    };
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    st.send(Cmd::Open {
        slot: guard.slot,
        events: ev_tx,
    });
    let (pipe, pipe_rx) = match &st.pipeline {
        Some(h) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let p = PipelineTurns::new(
                h.clone(),
                guard.slot,
                st.info.sample_rate,
                st.info.frame_samples,
                st.cfg.limits.max_turn_s,
                tx,
                flushed.clone(),
            );
            (Some(p), Some(rx))
        }
        None => (None, None),
    };
    let welcome = Welcome {
        protocol: crate::protocol::VERSION,
        session: id.clone(),
        sample_rate: st.info.sample_rate,
        frame_samples: st.info.frame_samples,
        modes: st.info.modes().iter().map(|m| m.name().into()).collect(),
        turn_modes: TurnMode::ALL.iter().map(|m| m.name().into()).collect(),
        voices: st.info.voices.clone(),
        emotions: Emotion::ALL.iter().map(|e| e.name().into()).collect(),
        languages: Language::ALL.iter().map(|l| l.code().into()).collect(),
        limits: WelcomeLimits {
            max_frame_bytes: st.cfg.limits.max_frame_bytes,
            max_session_s: st.cfg.limits.max_session_s,
            idle_timeout_s: st.cfg.limits.idle_timeout_s,
            max_messages_per_s: st.cfg.limits.max_messages_per_s,
        },
    };
    let _ = ctrl.send(Out::Frame(MsgType::Welcome, json(&welcome)));
    let resampler = if hello.sample_rate != st.info.sample_rate {
        match StreamResampler::with_block_frames(
            hello.sample_rate,
            st.info.sample_rate,
            (hello.sample_rate / 50) as usize,
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                fatal(ErrorCode::BadRequest, format!("sample_rate: {e}"));
                finish(w, &mut stream).await;
                return;
            }
        }
    } else {
        None
    };
    span.in_scope(|| {
        tracing::info!(
            mode = hello.mode.name(),
            turn_mode = hello.turn_mode.name(),
            "session started"
        )
    });
    let mut s = Session {
        vad: TurnDetector::new(st.cfg.vad.clone()),
        st: st.clone(),
        slot: guard.slot,
        ctrl: ctrl.clone(),
        audio_tx,
        flushed,
        hello,
        resampler,
        phase: Phase::Idle,
        next_turn: 1,
        last_info: None,
        turn_start_pos: 0,
        queue: VecDeque::new(),
        play_anchor: None,
        sent_samples: 0,
        done: None,
        paused_at: None,
        expect_seq: None,
        positions: VecDeque::new(),
        fed: 0,
        pipe,
    };
    s.main_loop(&mut stream, ev_rx, pipe_rx, guard)
        .instrument(span.clone())
        .await;
    if let Some(p) = &s.pipe {
        p.close();
    }
    let _ = ctrl.send(Out::Close);
    finish(w, &mut stream).await;
    span.in_scope(|| tracing::info!("session ended"));
}

/// How long a closing session waits for the client's close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Waits for the writer (which sends the close frame), then reads until the client's close
/// (or [`CLOSE_DRAIN`]). Dropping a socket with unread input makes the kernel send a reset,
/// and a reset can discard the final ERROR and close frames before the client reads them
/// (seen with a client still sending when it was rate-limited).
async fn finish(
    writer: tokio::task::JoinHandle<()>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
) {
    let _ = writer.await;
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

type Incoming = futures_util::stream::SplitStream<WebSocket>;

async fn read_hello(stream: &mut Incoming, st: &AppState) -> Result<Hello, (ErrorCode, String)> {
    let idle = Duration::from_secs_f64(st.cfg.limits.idle_timeout_s);
    loop {
        let msg = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err((
                    ErrorCode::IdleTimeout,
                    "no HELLO within the idle timeout".into(),
                ))
            }
            Ok(None) | Ok(Some(Err(_))) => {
                return Err((ErrorCode::BadRequest, "closed before HELLO".into()))
            }
            Ok(Some(Ok(m))) => m,
        };
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err((ErrorCode::BadRequest, "closed before HELLO".into())),
            Message::Text(_) => {
                return Err((
                    ErrorCode::BadFrame,
                    "text message; protocol v1 frames are binary".into(),
                ))
            }
        };
        if bytes.len() > st.cfg.limits.max_frame_bytes {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes; the limit is {}",
                    bytes.len(),
                    st.cfg.limits.max_frame_bytes
                ),
            ));
        }
        let f = Frame::decode(&bytes).map_err(|e| (e.code(), e.to_string()))?;
        if f.kind != MsgType::Hello {
            return Err((
                ErrorCode::BadRequest,
                format!("the first frame must be HELLO, got {:?}", f.kind),
            ));
        }
        let h: Hello = f
            .parse_json()
            .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        check_hello(&h, st).map_err(|m| (ErrorCode::BadRequest, m))?;
        return Ok(h);
    }
}

fn check_hello(h: &Hello, st: &AppState) -> Result<(), String> {
    if h.audio != "pcm16" {
        return Err(format!(
            "audio {:?} is not supported; this server takes \"pcm16\"",
            h.audio
        ));
    }
    if !(8000..=96000).contains(&h.sample_rate) {
        return Err(format!(
            "sample_rate {} is out of range 8000..=96000",
            h.sample_rate
        ));
    }
    check_settings(h, st)
}

fn check_settings(h: &Hello, st: &AppState) -> Result<(), String> {
    let modes = st.info.modes();
    if !modes.contains(&h.mode) {
        let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
        return Err(format!(
            "mode {} is not served here; this server serves: {}",
            h.mode.name(),
            names.join(", ")
        ));
    }
    h.emotion
        .parse::<Emotion>()
        .map_err(|e| format!("emotion: {e}"))?;
    h.lang
        .parse::<Language>()
        .map_err(|e| format!("lang: {e}"))?;
    if let Some(v) = &h.voice {
        if !st.info.voices.contains(v) {
            return Err(format!(
                "unknown voice {v:?}; voices: {}",
                if st.info.voices.is_empty() {
                    "none".to_string()
                } else {
                    st.info.voices.join(", ")
                }
            ));
        }
    }
    Ok(())
}

enum Flow {
    Continue,
    Stop,
}

impl Session {
    fn control(&self, c: &Control) {
        let _ = self.ctrl.send(Out::Frame(MsgType::Control, json(c)));
    }

    fn meta(&self, m: &Meta) {
        let _ = self.ctrl.send(Out::Frame(MsgType::Meta, json(m)));
    }

    fn error(&self, code: ErrorCode, message: String, fatal: bool) {
        self.st.metrics.error(code);
        let e = ErrorMsg {
            code,
            message,
            fatal,
        };
        let _ = self.ctrl.send(Out::Frame(MsgType::Error, json(&e)));
        if fatal {
            let _ = self.ctrl.send(Out::Close);
        }
    }

    fn frame_ms(&self) -> f64 {
        1000.0 * self.st.info.frame_samples as f64 / self.st.info.sample_rate as f64
    }

    async fn main_loop(
        &mut self,
        stream: &mut Incoming,
        mut events: mpsc::Receiver<WorkerEvent>,
        mut pipe_events: Option<mpsc::UnboundedReceiver<PipeEvent>>,
        _guard: SlotGuard,
    ) {
        let limits = self.st.cfg.limits.clone();
        let started = Instant::now();
        let mut last_msg = Instant::now();
        let mut window = (Instant::now(), 0u32);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.st.shutdown.clone();
        loop {
            tokio::select! {
                m = stream.next() => {
                    let Some(Ok(m)) = m else { return };
                    last_msg = Instant::now();
                    if window.0.elapsed() >= Duration::from_secs(1) {
                        window = (Instant::now(), 0);
                    }
                    window.1 += 1;
                    if window.1 > limits.max_messages_per_s {
                        self.error(ErrorCode::RateLimited, format!(
                            "more than {} messages in one second", limits.max_messages_per_s), true);
                        return;
                    }
                    if let Flow::Stop = self.on_message(m) {
                        return;
                    }
                }
                e = events.recv() => {
                    let Some(e) = e else { return };
                    self.on_event(e);
                    self.pump();
                }
                e = async {
                    match pipe_events.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(e) = e else { return };
                    self.on_pipe_event(e);
                    self.pump();
                }
                _ = tick.tick() => {
                    if last_msg.elapsed().as_secs_f64() > limits.idle_timeout_s {
                        self.error(ErrorCode::IdleTimeout, format!(
                            "no message for {} s", limits.idle_timeout_s), true);
                        return;
                    }
                    if started.elapsed().as_secs_f64() > limits.max_session_s {
                        self.error(ErrorCode::SessionTimeout, format!(
                            "the session reached its limit of {} s", limits.max_session_s), true);
                        return;
                    }
                    if let Some(p) = self.paused_at {
                        if p.elapsed().as_millis() as u64 >= self.st.cfg.vad.false_interruption_resume_ms {
                            self.resume_false_interruption();
                        }
                    }
                    self.pump();
                }
                _ = shutdown.wait_for(|s| *s) => {
                    self.control(&Control::Closing { reason: "shutdown".into() });
                    return;
                }
            }
        }
    }

    fn last_t_us(&self) -> u64 {
        self.positions.back().map_or(0, |p| p.1)
    }

    fn on_message(&mut self, m: Message) -> Flow {
        let bytes = match m {
            Message::Binary(b) => b,
            Message::Close(_) => return Flow::Stop,
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Text(_) => {
                self.error(
                    ErrorCode::BadFrame,
                    "text message; protocol v1 frames are binary".into(),
                    false,
                );
                return Flow::Continue;
            }
        };
        let max = self.st.cfg.limits.max_frame_bytes;
        if bytes.len() > max {
            self.error(
                ErrorCode::TooLarge,
                format!("frame of {} bytes; the limit is {max}", bytes.len()),
                true,
            );
            return Flow::Stop;
        }
        let f = match Frame::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                let fatal = e.code() == ErrorCode::BadVersion;
                self.error(e.code(), e.to_string(), fatal);
                return if fatal { Flow::Stop } else { Flow::Continue };
            }
        };
        if let Some(exp) = self.expect_seq {
            if f.seq > exp {
                self.st.metrics.dropped_frames.inc_by((f.seq - exp) as u64);
            }
        }
        self.expect_seq = Some(f.seq.wrapping_add(1));
        match f.kind {
            MsgType::Audio => match f.parse_audio() {
                Ok((_, pcm)) => self.on_audio(&pcm, f.t_us),
                Err(e) => self.error(ErrorCode::BadRequest, e.to_string(), false),
            },
            MsgType::Control => match f.parse_json::<Control>() {
                Ok(c) => return self.on_control(c),
                Err(e) => self.error(ErrorCode::BadRequest, e.to_string(), false),
            },
            MsgType::Ping => {
                let _ = self.ctrl.send(Out::Frame(MsgType::Pong, f.payload));
            }
            MsgType::Pong => {}
            other => self.error(
                ErrorCode::BadRequest,
                format!("{other:?} is not a client message here"),
                false,
            ),
        }
        Flow::Continue
    }

    fn on_audio(&mut self, pcm: &[i16], t_us: u64) {
        let x: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
        let x = match &mut self.resampler {
            Some(r) => match r.push(&x) {
                Ok(y) => y,
                Err(e) => {
                    self.error(ErrorCode::Internal, format!("resampler: {e}"), false);
                    return;
                }
            },
            None => x,
        };
        self.fed += x.len() as u64;
        self.positions.push_back((self.fed, t_us));
        while self.positions.len() > 256 {
            self.positions.pop_front();
        }
        let events = self.vad.push(&x);
        match &mut self.pipe {
            Some(p) => p.push_audio(&x),
            None => self.st.send(Cmd::Audio {
                slot: self.slot,
                samples: x,
            }),
        }
        for e in events {
            self.on_vad(e);
        }
        if let Phase::UserTurn { .. } = self.phase {
            let len = (self.fed - self.turn_start_pos) as f64 / self.st.info.sample_rate as f64;
            if len > self.st.cfg.limits.max_turn_s {
                let t = self.last_t_us();
                self.end_user_turn(0.0, t);
            }
        }
        if let Phase::Replying { turn } = self.phase {
            if self.vad.speaking() && self.vad.speech_ms() >= self.st.cfg.vad.min_interruption_ms {
                let ms = self.vad.speech_ms();
                self.interrupt(turn);
                self.start_user_turn(false, ms);
            }
        }
    }

    fn t_us_at(&self, pos: u64) -> u64 {
        self.positions
            .iter()
            .find(|p| p.0 >= pos)
            .or(self.positions.back())
            .map_or(0, |p| p.1)
    }

    fn on_vad(&mut self, e: VadEvent) {
        match e {
            VadEvent::SpeechStart { prob, speech_ms } => {
                self.meta(&Meta::Vad {
                    speaking: true,
                    prob,
                });
                if let (Phase::UserTurn { .. }, Some(p)) = (self.phase, &mut self.pipe) {
                    p.speech_resumed();
                }
                match self.phase {
                    Phase::Idle => self.start_user_turn(false, speech_ms),
                    Phase::Replying { .. } => {
                        if self.paused_at.is_none() {
                            self.paused_at = Some(Instant::now());
                        }
                    }
                    Phase::UserTurn { .. } => {}
                }
            }
            VadEvent::SpeechStop { prob } => {
                self.meta(&Meta::Vad {
                    speaking: false,
                    prob,
                });
                if self.paused_at.is_some() {
                    self.resume_false_interruption();
                }
                if let (Phase::UserTurn { .. }, Some(p)) = (self.phase, &mut self.pipe) {
                    p.speech_paused(self.fed);
                }
            }
            VadEvent::Endpoint {
                silence_ms,
                speech_end,
            } => {
                if let Phase::UserTurn { manual: false, .. } = self.phase {
                    let t = self.t_us_at(speech_end);
                    self.end_user_turn(silence_ms as f64, t);
                }
            }
        }
    }

    fn resume_false_interruption(&mut self) {
        if self.paused_at.take().is_some() {
            self.st.metrics.false_interruptions.inc();
            // Playout restarts from now.
            self.play_anchor = None;
            self.pump();
        }
    }

    fn start_user_turn(&mut self, manual: bool, speech_ms: u64) {
        let turn = self.next_turn;
        self.next_turn += 1;
        let v = &self.st.cfg.vad;
        let lookback_ms = (speech_ms + v.prefix_padding_ms) as f64;
        let lookback = (lookback_ms * self.st.info.sample_rate as f64 / 1000.0) as u64;
        let start_sample = self.fed.saturating_sub(lookback);
        let cond = SlotCondition {
            speaker: None,
            emotion: self.hello.emotion.parse().unwrap_or_default(),
            language: self.hello.lang.parse().unwrap_or_default(),
            prosody: [0.0; 3],
        };
        let setup = TurnSetup {
            mode: self.hello.mode,
            turn_mode: self.hello.turn_mode,
            cond,
            seed: self
                .st
                .cfg
                .generation
                .seed
                .wrapping_add((self.slot as u64) << 32)
                .wrapping_add(turn as u64),
            voice: self.hello.voice.clone(),
        };
        match &mut self.pipe {
            Some(p) => p.start_turn(turn, start_sample),
            None => self.st.send(Cmd::StartTurn {
                slot: self.slot,
                turn,
                start_sample,
                setup,
            }),
        }
        self.phase = Phase::UserTurn { turn, manual };
        self.turn_start_pos = self.fed;
        self.vad.begin_turn();
        self.control(&Control::TurnStarted { turn });
    }

    fn end_user_turn(&mut self, endpoint_ms: f64, speech_end_t_us: u64) {
        let Phase::UserTurn { turn, .. } = self.phase else {
            return;
        };
        if self.vad.end_turn() {
            self.meta(&Meta::Vad {
                speaking: false,
                prob: 0.0,
            });
        }
        let mut acts = Vec::new();
        match &mut self.pipe {
            Some(p) => acts = p.end_turn(self.fed, Instant::now(), endpoint_ms, speech_end_t_us),
            None => self.st.send(Cmd::EndTurn {
                slot: self.slot,
                turn,
                end_sample: self.fed,
                at: Instant::now(),
            }),
        }
        self.st.metrics.turns.inc();
        self.st
            .metrics
            .observe_stage("endpoint", endpoint_ms / 1000.0);
        self.last_info = Some(TurnInfo {
            turn,
            speech_end_t_us,
            endpoint_ms,
        });
        self.phase = Phase::Replying { turn };
        self.apply(acts);
    }

    /// Barge-in: stop the reply of `turn` everywhere, now.
    fn interrupt(&mut self, turn: u32) {
        self.flushed.fetch_max(turn as u64 + 1, Ordering::SeqCst);
        self.queue.retain(|a| a.turn().is_none_or(|t| t > turn));
        match &mut self.pipe {
            Some(p) => p.cancel(turn),
            None => self.st.send(Cmd::Cancel {
                slot: self.slot,
                turn,
            }),
        }
        self.control(&Control::Flush { turn });
        self.control(&Control::TurnEnded {
            turn,
            reason: TurnEndReason::Interrupted,
        });
        self.st.metrics.interrupts.inc();
        self.done = None;
        self.paused_at = None;
        self.play_anchor = None;
        self.phase = Phase::Idle;
    }

    fn on_control(&mut self, c: Control) -> Flow {
        match c {
            Control::Start => match self.phase {
                // A turn is already open: it goes on.
                Phase::UserTurn { .. } => {}
                Phase::Replying { turn } => {
                    self.interrupt(turn);
                    self.start_user_turn(true, 0);
                }
                Phase::Idle => self.start_user_turn(true, 0),
            },
            Control::EndOfTurn => {
                if self.phase == Phase::Idle {
                    // Speech the VAD did not catch: the recent audio is the turn.
                    let ms = self
                        .st
                        .cfg
                        .vad
                        .min_speech_ms
                        .max(self.st.cfg.vad.min_interruption_ms)
                        + 400;
                    self.start_user_turn(true, ms);
                }
                let t = self.last_t_us();
                self.end_user_turn(0.0, t);
            }
            Control::Interrupt => match self.phase {
                Phase::Replying { turn } => self.interrupt(turn),
                Phase::UserTurn { turn, .. } if self.hello.turn_mode == TurnMode::Stream => {
                    self.interrupt(turn)
                }
                _ => {}
            },
            Control::Set {
                voice,
                emotion,
                mode,
                turn_mode,
                lang,
            } => {
                let mut h = self.hello.clone();
                if voice.is_some() {
                    h.voice = voice;
                }
                if let Some(e) = emotion {
                    h.emotion = e;
                }
                if let Some(m) = mode {
                    h.mode = m;
                }
                if let Some(t) = turn_mode {
                    h.turn_mode = t;
                }
                if let Some(l) = lang {
                    h.lang = l;
                }
                match check_settings(&h, &self.st) {
                    Ok(()) => self.hello = h,
                    Err(m) => self.error(ErrorCode::BadRequest, format!("set: {m}"), false),
                }
            }
            Control::Close => {
                self.control(&Control::Closing {
                    reason: "client".into(),
                });
                return Flow::Stop;
            }
            other => self.error(
                ErrorCode::BadRequest,
                format!("{other:?} is a server-to-client CONTROL"),
                false,
            ),
        }
        Flow::Continue
    }

    fn flushed(&self, turn: u32) -> bool {
        (turn as u64) < self.flushed.load(Ordering::SeqCst)
    }

    fn on_event(&mut self, e: WorkerEvent) {
        match e {
            WorkerEvent::Latency { turn, stages } => {
                if self.flushed(turn) {
                    return;
                }
                let m = &self.st.metrics;
                m.observe_stage("encode_flush", stages.encode_flush);
                m.observe_stage("first_decoder_step", stages.first_decoder_step);
                m.observe_stage("codec_decode", stages.codec_decode);
                m.observe_stage("server_total", stages.server_total);
                let (speech_end_t_us, endpoint_ms) = match &self.last_info {
                    Some(i) if i.turn == turn => (i.speech_end_t_us, i.endpoint_ms),
                    _ => (0, 0.0),
                };
                self.meta(&Meta::Latency {
                    turn,
                    speech_end_t_us,
                    endpoint_ms,
                    stages_ms: Stages::from([
                        ("endpoint".to_string(), endpoint_ms),
                        ("encode_flush".to_string(), stages.encode_flush * 1000.0),
                        (
                            "first_decoder_step".to_string(),
                            stages.first_decoder_step * 1000.0,
                        ),
                        ("codec_decode".to_string(), stages.codec_decode * 1000.0),
                        ("server_total".to_string(), stages.server_total * 1000.0),
                    ]),
                });
            }
            WorkerEvent::Audio { turn, pcm } => {
                if self.flushed(turn) {
                    return;
                }
                // Bounded: a reply is at most max_reply_s long.
                let cap = (self.st.cfg.limits.max_reply_s * 1000.0 / self.frame_ms()) as usize + 8;
                if self.queue.len() >= cap {
                    self.queue.pop_front();
                    self.st.metrics.dropped_frames.inc();
                }
                self.queue.push_back(AudioOut::Audio { turn, pcm });
            }
            WorkerEvent::TurnDone { turn, reason } => {
                if !self.flushed(turn) {
                    // Ordered after the turn's audio on the audio lane.
                    self.queue
                        .push_back(AudioOut::After(Control::TurnEnded { turn, reason }));
                    self.done = Some((turn, reason));
                }
            }
            WorkerEvent::Error { message } => {
                self.error(ErrorCode::Internal, message, false);
                if let Phase::Replying { .. } | Phase::UserTurn { .. } = self.phase {
                    self.phase = Phase::Idle;
                    let _ = self.vad.end_turn();
                }
            }
        }
    }

    fn on_pipe_event(&mut self, e: PipeEvent) {
        let acts = match &mut self.pipe {
            Some(p) => p.on_event(e),
            None => return,
        };
        self.apply(acts);
    }

    /// Carries out what the pipeline asks for, through the same lanes as S2S replies.
    fn apply(&mut self, acts: Vec<Act>) {
        for a in acts {
            match a {
                Act::Meta(m) => self.meta(&m),
                Act::Error(m) => self.error(ErrorCode::Internal, m, false),
                Act::Audio { turn, pcm } => self.on_event(WorkerEvent::Audio { turn, pcm }),
                Act::Done { turn } => self.on_event(WorkerEvent::TurnDone {
                    turn,
                    reason: TurnEndReason::Done,
                }),
            }
        }
    }

    /// Sends queued reply audio up to `playout_lead_ms` ahead of real time; ends the turn
    /// when its audio is out.
    fn pump(&mut self) {
        if self.paused_at.is_none() {
            let sr = self.st.info.sample_rate as f64;
            let lead = self.st.cfg.playout_lead_ms as f64 / 1000.0;
            while let Some(front) = self.queue.front() {
                if let AudioOut::After(_) = front {
                    let a = self.queue.pop_front().expect("front exists");
                    if let Err(mpsc::error::TrySendError::Full(a)) = self.audio_tx.try_send(a) {
                        self.queue.push_front(a);
                        break;
                    }
                    continue;
                }
                let now = Instant::now();
                let anchor = match self.play_anchor {
                    Some(a) if (now - a).as_secs_f64() <= self.sent_samples as f64 / sr => a,
                    // Nothing is playing: playout restarts now.
                    _ => {
                        self.play_anchor = Some(now);
                        self.sent_samples = 0;
                        now
                    }
                };
                let ahead = self.sent_samples as f64 / sr - (now - anchor).as_secs_f64();
                if ahead >= lead {
                    break;
                }
                let n = match front {
                    AudioOut::Audio { pcm, .. } => pcm.len() as u64,
                    AudioOut::After(_) => 0,
                };
                let a = self.queue.pop_front().expect("front exists");
                let turn = a.turn();
                match self.audio_tx.try_send(a) {
                    Ok(()) => {
                        self.sent_samples += n;
                        if let (Some(t), Some(p)) = (turn, &mut self.pipe) {
                            if p.wants_first_sent(t) {
                                if let Some(m) = p.on_first_sent(t, &self.st.metrics) {
                                    self.meta(&m);
                                }
                            }
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(a)) => {
                        self.queue.push_front(a);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
        if let Some((turn, _)) = self.done {
            if self.queue.is_empty() {
                self.done = None;
                if self.phase == (Phase::Replying { turn }) {
                    self.phase = Phase::Idle;
                    self.paused_at = None;
                }
            }
        }
    }
}
