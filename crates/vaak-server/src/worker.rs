//! The model worker: one thread that owns the codec streams and the S2S stream and steps every
//! active session as one batch (a slot per session, a mask per step, a reset per slot).
//!
//! Per tick: (1) codec-encode one frame for every slot that has a whole frame of input,
//! (2) push the new source frames of the slots in a turn through the S2S encoder, (3) end the
//! source of the slots whose turn ended, (4) one decoder step for the slots generating,
//! (5) codec-decode one queued reply frame per slot and send it to its session.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::mpsc as tmpsc;
use vaak_codec::{Codec, CodecStreamer};
use vaak_nn::StreamMask;
use vaak_s2s::{Frame, GenerationConfig, S2sStream, SlotCondition, SpeechModel};

use crate::metrics::Metrics;
use crate::protocol::{Mode, TurnEndReason, TurnMode};

/// Loaded models the worker runs.
pub struct Models {
    pub codec: Codec,
    pub s2s: Option<SpeechModel>,
    pub device: Device,
}

impl Models {
    pub fn sample_rate(&self) -> u32 {
        self.codec.sample_rate() as u32
    }
    pub fn frame_samples(&self) -> usize {
        self.codec.hop_length()
    }
}

/// How a turn is answered.
#[derive(Clone, Debug)]
pub struct TurnSetup {
    pub mode: Mode,
    pub turn_mode: TurnMode,
    pub cond: SlotCondition,
    pub seed: u64,
    /// A voice shipped with the model (`<model>/voices/<name>.npy`) as the speaker.
    pub voice: Option<String>,
}

/// Session → worker.
pub enum Cmd {
    Open {
        slot: usize,
        events: tmpsc::Sender<WorkerEvent>,
    },
    Close {
        slot: usize,
    },
    /// Mono samples at the codec rate, in [-1, 1].
    Audio {
        slot: usize,
        samples: Vec<f32>,
    },
    /// A user turn begins at sample `start_sample` of the slot's input stream (the prefix
    /// padding and the speech before the VAD was sure are before the command): every codec
    /// frame that ends after it belongs to the turn.
    StartTurn {
        slot: usize,
        turn: u32,
        start_sample: u64,
        setup: TurnSetup,
    },
    /// The user turn is over at sample `end_sample` of the input stream (`at`: when the
    /// session decided it). The turn keeps the frames that start before `end_sample`'s
    /// frame boundary, whatever the worker's lag, so a turn's source depends on the audio
    /// alone.
    EndTurn {
        slot: usize,
        turn: u32,
        end_sample: u64,
        at: Instant,
    },
    /// Stop the reply of `turn` now and forget its queued audio.
    Cancel {
        slot: usize,
        turn: u32,
    },
    Shutdown,
}

/// Worker-side latency of one reply, in seconds from the end of the turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStages {
    pub encode_flush: f64,
    pub first_decoder_step: f64,
    pub codec_decode: f64,
    pub server_total: f64,
}

/// Worker → session.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    /// Sent just before the first audio of a reply.
    Latency {
        turn: u32,
        stages: WorkerStages,
    },
    /// One codec frame of reply audio (PCM16 at the codec rate).
    Audio {
        turn: u32,
        pcm: Vec<i16>,
    },
    TurnDone {
        turn: u32,
        reason: TurnEndReason,
    },
    Error {
        message: String,
    },
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Listening,
    /// Input complete; flushing the encoder then generating.
    Ending,
    Generating,
}

struct TurnState {
    turn: u32,
    setup: TurnSetup,
    phase: Phase,
    user_frames: Vec<Frame>,
    src_pending: Vec<Frame>,
    src_pushed: usize,
    context_len: usize,
    reply_frames: Vec<Frame>,
    steps: usize,
    finished: Option<TurnEndReason>,
    ended_at: Option<Instant>,
    /// Frames ending at or before this sample are not the turn's.
    start_sample: u64,
    /// Frames starting at or after this sample are not the turn's.
    end_sample: Option<u64>,
    encode_flush: Option<f64>,
    first_step: Option<f64>,
    latency_sent: bool,
}

#[derive(Default)]
struct Slot {
    events: Option<tmpsc::Sender<WorkerEvent>>,
    samples: VecDeque<f32>,
    /// Input stream position (samples) of `samples[0]`.
    pos: u64,
    /// Recent frames with the stream position they start at.
    ring: VecDeque<(u64, Frame)>,
    turn: Option<TurnState>,
    history: VecDeque<(Vec<Frame>, Vec<Frame>)>,
    decode_q: VecDeque<(u32, Frame)>,
}

/// Worker settings derived from the config.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub slots: usize,
    pub ring_frames: usize,
    pub max_turn_frames: usize,
    pub max_reply_frames: usize,
    pub context_turns: usize,
    pub generation: GenerationConfig,
    /// Input kept waiting for the encoder, in samples, before the oldest is dropped.
    pub max_pending_samples: usize,
}

/// Handle of the worker thread.
pub struct Worker {
    tx: mpsc::Sender<Cmd>,
    join: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(models: Models, cfg: WorkerConfig, metrics: Arc<Metrics>) -> crate::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let mut st = State::new(models, cfg, metrics)?;
        let join = std::thread::Builder::new()
            .name("vaak-model-worker".into())
            .spawn(move || st.run(rx))
            .map_err(|e| crate::ServeError::Worker(e.to_string()))?;
        Ok(Self {
            tx,
            join: Some(join),
        })
    }

    pub fn sender(&self) -> mpsc::Sender<Cmd> {
        self.tx.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

struct State {
    models: Models,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    enc: CodecStreamer,
    dec: CodecStreamer,
    s2s: Option<S2sStream>,
    slots: Vec<Slot>,
    hop: usize,
    k: usize,
    max_source: usize,
    rtf: Option<f64>,
}

type Res<T> = std::result::Result<T, String>;

/// Source frames one slot pushes through the S2S encoder per tick.
const MAX_PUSH_FRAMES: usize = 16;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

impl State {
    fn new(models: Models, cfg: WorkerConfig, metrics: Arc<Metrics>) -> crate::Result<Self> {
        let w = |e: String| crate::ServeError::Worker(e);
        let enc = models
            .codec
            .streamer(cfg.slots)
            .map_err(err("codec"))
            .map_err(w)?;
        let dec = models
            .codec
            .streamer(cfg.slots)
            .map_err(err("codec"))
            .map_err(w)?;
        let (s2s, max_source) = match &models.s2s {
            Some(m) => (
                Some(
                    S2sStream::new(m.model(), cfg.slots, cfg.generation.clone())
                        .map_err(err("s2s"))
                        .map_err(w)?,
                ),
                m.model().config().max_source_frames,
            ),
            None => (None, 0),
        };
        let hop = models.codec.hop_length();
        let k = models.codec.num_codebooks();
        let slots = (0..cfg.slots).map(|_| Slot::default()).collect();
        Ok(Self {
            models,
            cfg,
            metrics,
            enc,
            dec,
            s2s,
            slots,
            hop,
            k,
            max_source,
            rtf: None,
        })
    }

    fn send(&self, slot: usize, ev: WorkerEvent) {
        if let Some(tx) = &self.slots[slot].events {
            if tx.try_send(ev).is_err() {
                self.metrics.dropped_frames.inc();
            }
        }
    }

    fn has_work(&self) -> bool {
        self.slots.iter().enumerate().any(|(i, s)| {
            s.samples.len() >= self.hop
                || !s.decode_q.is_empty()
                || s.turn.as_ref().is_some_and(|t| {
                    !t.src_pending.is_empty()
                        || t.phase != Phase::Listening
                        || (t.setup.mode != Mode::Echo
                            && t.setup.turn_mode == TurnMode::Stream
                            && self.s2s.as_ref().is_some_and(|st| {
                                t.steps < st.memory_len(i).saturating_sub(t.context_len)
                            }))
                })
        })
    }

    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let first = if self.has_work() {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            if let Some(c) = first {
                if !self.command(c) {
                    return;
                }
                while let Ok(c) = rx.try_recv() {
                    if !self.command(c) {
                        return;
                    }
                }
            }
            if !self.has_work() {
                continue;
            }
            let t0 = Instant::now();
            let r = self.tick();
            let dt = t0.elapsed().as_secs_f64();
            match r {
                Ok(true) => {
                    self.metrics.observe_stage("worker_tick", dt);
                    // Each working tick advances every active stream by at most one frame.
                    let frame_s = self.hop as f64 / self.models.sample_rate() as f64;
                    let r = dt / frame_s;
                    let e = match self.rtf {
                        Some(p) => 0.9 * p + 0.1 * r,
                        None => r,
                    };
                    self.rtf = Some(e);
                    self.metrics.real_time_factor.set(e);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "model worker step failed; active turns dropped");
                    for i in 0..self.slots.len() {
                        if self.slots[i].turn.is_some() || !self.slots[i].decode_q.is_empty() {
                            self.send(i, WorkerEvent::Error { message: e.clone() });
                            self.slots[i].turn = None;
                            self.slots[i].decode_q.clear();
                        }
                    }
                }
            }
        }
    }

    /// Applies a command; false on shutdown.
    fn command(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Shutdown => return false,
            Cmd::Open { slot, events } => {
                self.reset_slot(slot);
                self.slots[slot].events = Some(events);
            }
            Cmd::Close { slot } => self.reset_slot(slot),
            Cmd::Audio { slot, samples } => {
                let s = &mut self.slots[slot];
                s.samples.extend(samples);
                let over = s.samples.len().saturating_sub(self.cfg.max_pending_samples);
                if over > 0 {
                    s.samples.drain(..over);
                    s.pos += over as u64;
                    self.metrics
                        .dropped_frames
                        .inc_by(over.div_ceil(self.hop) as u64);
                }
            }
            Cmd::StartTurn {
                slot,
                turn,
                start_sample,
                setup,
            } => {
                if let Err(e) = self.start_turn(slot, turn, start_sample, setup) {
                    self.send(slot, WorkerEvent::Error { message: e });
                }
            }
            Cmd::EndTurn {
                slot,
                turn,
                end_sample,
                at,
            } => {
                if let Some(t) = &mut self.slots[slot].turn {
                    if t.turn == turn && t.phase == Phase::Listening {
                        t.phase = Phase::Ending;
                        t.ended_at = Some(at);
                        t.end_sample = Some(end_sample / self.hop as u64 * self.hop as u64);
                    }
                }
            }
            Cmd::Cancel { slot, turn } => {
                let s = &mut self.slots[slot];
                s.decode_q.retain(|(t, _)| *t > turn);
                if s.turn.as_ref().is_some_and(|t| t.turn <= turn) {
                    let t = s.turn.take().expect("checked");
                    if t.setup.mode == Mode::Converse {
                        Self::remember(s, t.user_frames, t.reply_frames, self.cfg.context_turns);
                    }
                }
            }
        }
        true
    }

    fn remember(s: &mut Slot, user: Vec<Frame>, reply: Vec<Frame>, n: usize) {
        if n == 0 {
            return;
        }
        s.history.push_back((user, reply));
        while s.history.len() > n {
            s.history.pop_front();
        }
    }

    fn reset_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::default();
        let _ = self.enc.reset_slot(slot);
        let _ = self.dec.reset_slot(slot);
        if let Some(s) = &mut self.s2s {
            let _ = s.reset_slot(slot);
        }
    }

    fn start_turn(
        &mut self,
        slot: usize,
        turn: u32,
        start_sample: u64,
        mut setup: TurnSetup,
    ) -> Res<()> {
        if let (Some(v), Some(m)) = (&setup.voice, &self.models.s2s) {
            setup.cond.speaker = Some(m.voice(v).map_err(err("voice"))?);
        }
        let s = &mut self.slots[slot];
        s.decode_q.clear();
        let hop = self.hop as u64;
        let user: Vec<Frame> = s
            .ring
            .iter()
            .filter(|(p, _)| p + hop > start_sample)
            .map(|(_, f)| f.clone())
            .collect();
        let mut src = Vec::new();
        let mut context_len = 0;
        if setup.mode != Mode::Echo {
            let Some(st) = &mut self.s2s else {
                return Err(format!(
                    "mode {} needs an S2S model; this server runs echo only",
                    setup.mode.name()
                ));
            };
            st.start(slot, setup.cond.clone(), setup.seed)
                .map_err(err("s2s start"))?;
            if setup.mode == Mode::Converse {
                // The last turns, oldest first, trimmed from the front to the model's window
                // minus room for this turn.
                let budget = self
                    .max_source
                    .saturating_sub(self.cfg.max_turn_frames + self.cfg.ring_frames);
                let all: Vec<Frame> = s
                    .history
                    .iter()
                    .flat_map(|(u, r)| u.iter().chain(r.iter()).cloned())
                    .collect();
                let skip = all.len().saturating_sub(budget);
                src.extend(all.into_iter().skip(skip));
                context_len = src.len();
            }
            src.extend(user.iter().cloned());
        }
        if setup.mode == Mode::Echo && setup.turn_mode == TurnMode::Stream {
            let _ = self.dec.reset_slot(slot);
            for f in &user {
                self.slots[slot].decode_q.push_back((turn, f.clone()));
            }
        }
        self.slots[slot].turn = Some(TurnState {
            turn,
            setup,
            phase: Phase::Listening,
            user_frames: user,
            src_pending: src,
            src_pushed: 0,
            context_len,
            reply_frames: Vec::new(),
            steps: 0,
            finished: None,
            ended_at: None,
            start_sample,
            end_sample: None,
            encode_flush: None,
            first_step: None,
            latency_sent: false,
        });
        Ok(())
    }

    /// One tick; whether anything ran.
    fn tick(&mut self) -> Res<bool> {
        let mut did = self.encode_pass()?;
        did |= self.source_pass()?;
        did |= self.step_pass()?;
        did |= self.decode_pass()?;
        self.finish_turns();
        Ok(did)
    }

    fn encode_pass(&mut self) -> Res<bool> {
        let b = self.slots.len();
        let hop = self.hop;
        let mut did = false;
        for _ in 0..8 {
            let mut active = vec![false; b];
            let mut data = vec![0f32; b * hop];
            for (i, s) in self.slots.iter_mut().enumerate() {
                if s.samples.len() >= hop {
                    active[i] = true;
                    for (j, x) in s.samples.drain(..hop).enumerate() {
                        data[i * hop + j] = x;
                    }
                }
            }
            if !active.iter().any(|&a| a) {
                break;
            }
            did = true;
            let starts: Vec<u64> = self
                .slots
                .iter_mut()
                .zip(&active)
                .map(|(s, &a)| {
                    let p = s.pos;
                    if a {
                        s.pos += hop as u64;
                    }
                    p
                })
                .collect();
            let x = Tensor::from_vec(data, (b, 1, hop), &self.models.device)
                .map_err(err("encode input"))?;
            let mask = StreamMask::from_slots(&active);
            let Some(codes) = self
                .enc
                .encode_step(&x, &mask)
                .map_err(err("codec encode"))?
            else {
                continue;
            };
            let codes: Vec<Vec<Vec<u32>>> = codes
                .to_dtype(candle_core::DType::U32)
                .and_then(|c| c.to_vec3::<u32>())
                .map_err(err("codes"))?;
            for (i, row) in codes.iter().enumerate() {
                if !active[i] {
                    continue;
                }
                let nf = row.first().map_or(0, |r| r.len());
                for f in 0..nf {
                    let frame: Frame = row.iter().map(|c| c[f]).collect();
                    self.new_input_frame(i, starts[i], frame);
                }
            }
        }
        Ok(did)
    }

    fn new_input_frame(&mut self, i: usize, start: u64, frame: Frame) {
        let max_turn = self.cfg.max_turn_frames;
        let s = &mut self.slots[i];
        s.ring.push_back((start, frame.clone()));
        while s.ring.len() > self.cfg.ring_frames {
            s.ring.pop_front();
        }
        let Some(t) = &mut s.turn else {
            return;
        };
        if t.phase == Phase::Generating
            || t.user_frames.len() >= max_turn
            || t.end_sample.is_some_and(|e| start >= e)
            || start + self.hop as u64 <= t.start_sample
        {
            return;
        }
        t.user_frames.push(frame.clone());
        match t.setup.mode {
            Mode::Echo => {
                if t.setup.turn_mode == TurnMode::Stream {
                    s.decode_q.push_back((t.turn, frame));
                }
            }
            _ => t.src_pending.push(frame),
        }
    }

    fn source_pass(&mut self) -> Res<bool> {
        let mut did = false;
        let b = self.slots.len();
        let max_source = self.max_source;
        if let Some(st) = &mut self.s2s {
            let mut frames: Vec<Vec<Frame>> = vec![Vec::new(); b];
            for (i, s) in self.slots.iter_mut().enumerate() {
                if let Some(t) = &mut s.turn {
                    if !t.src_pending.is_empty() {
                        // A bounded share per tick, so a long converse context is encoded
                        // over the first ticks of the turn instead of stalling every slot.
                        let n = t.src_pending.len().min(MAX_PUSH_FRAMES);
                        let room = max_source.saturating_sub(t.src_pushed);
                        let mut v: Vec<Frame> = t.src_pending.drain(..n).collect();
                        v.truncate(room);
                        t.src_pushed += v.len();
                        frames[i] = v;
                    }
                }
            }
            if frames.iter().any(|f| !f.is_empty()) {
                did = true;
                st.push_source(&frames).map_err(err("s2s encoder"))?;
            }
        }
        // Ends: the input is fully encoded once the slot has no samples left.
        for i in 0..b {
            let s = &mut self.slots[i];
            let Some(t) = &mut s.turn else { continue };
            if t.phase != Phase::Ending
                || t.end_sample.is_some_and(|e| s.pos < e)
                || !t.src_pending.is_empty()
            {
                continue;
            }
            did = true;
            let since = t.ended_at.map_or(0.0, |a| a.elapsed().as_secs_f64());
            t.encode_flush = Some(since);
            match t.setup.mode {
                Mode::Echo => {
                    if t.setup.turn_mode == TurnMode::Turn {
                        let _ = self.dec.reset_slot(i);
                        for f in &t.user_frames {
                            s.decode_q.push_back((t.turn, f.clone()));
                        }
                    }
                    t.finished = Some(TurnEndReason::Done);
                    t.phase = Phase::Generating;
                }
                _ => {
                    let st = self.s2s.as_mut().expect("non-echo turns need the model");
                    st.end_source(i).map_err(err("s2s end_source"))?;
                    if st.memory_len(i) == 0 {
                        // Nothing was said: an empty reply.
                        t.finished = Some(TurnEndReason::Done);
                    } else if t.setup.turn_mode == TurnMode::Turn {
                        let _ = self.dec.reset_slot(i);
                    }
                    t.phase = Phase::Generating;
                }
            }
        }
        Ok(did)
    }

    fn step_pass(&mut self) -> Res<bool> {
        let Some(st) = &mut self.s2s else {
            return Ok(false);
        };
        let b = self.slots.len();
        let mut run = vec![false; b];
        for (i, s) in self.slots.iter().enumerate() {
            let Some(t) = &s.turn else { continue };
            if t.setup.mode == Mode::Echo || t.finished.is_some() || s.decode_q.len() > 4 {
                continue;
            }
            run[i] = match t.phase {
                Phase::Generating => true,
                Phase::Listening if t.setup.turn_mode == TurnMode::Stream => {
                    // The reply never runs ahead of the source.
                    let mem = st.memory_len(i).saturating_sub(t.context_len);
                    mem > 0 && t.steps < mem
                }
                _ => false,
            };
        }
        if !run.iter().any(|&r| r) {
            return Ok(false);
        }
        let outs = st
            .step(&StreamMask::from_slots(&run))
            .map_err(err("s2s decoder step"))?;
        let max_reply = self.cfg.max_reply_frames;
        for (i, o) in outs.into_iter().enumerate() {
            let Some(o) = o else { continue };
            let s = &mut self.slots[i];
            let t = s.turn.as_mut().expect("stepped slots have a turn");
            t.steps += 1;
            if t.first_step.is_none() {
                if let Some(a) = t.ended_at {
                    t.first_step = Some(a.elapsed().as_secs_f64());
                }
            }
            for f in o.frames {
                if t.reply_frames.len() < max_reply {
                    t.reply_frames.push(f.clone());
                }
                s.decode_q.push_back((t.turn, f));
            }
            if o.end_of_turn {
                if t.phase == Phase::Generating {
                    t.finished = Some(if t.reply_frames.len() >= max_reply {
                        TurnEndReason::Truncated
                    } else {
                        TurnEndReason::Done
                    });
                } else {
                    // Stream mode: the reply to what was said so far is over while the user
                    // still speaks; the next segment starts on the coming source.
                    let seed = t.setup.seed.wrapping_add(t.steps as u64);
                    st.start(i, t.setup.cond.clone(), seed)
                        .map_err(err("s2s start"))?;
                    t.context_len = 0;
                    t.steps = 0;
                    t.src_pushed = 0;
                }
            }
        }
        Ok(true)
    }

    fn decode_pass(&mut self) -> Res<bool> {
        let b = self.slots.len();
        let mut active = vec![false; b];
        let mut codes = vec![0u32; b * self.k];
        let mut turns = vec![0u32; b];
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some((turn, f)) = s.decode_q.pop_front() {
                active[i] = true;
                turns[i] = turn;
                for (c, &v) in f.iter().take(self.k).enumerate() {
                    codes[c * b + i] = v;
                }
            }
        }
        if !active.iter().any(|&a| a) {
            return Ok(false);
        }
        let t0 = Instant::now();
        // codes laid out [K, B] then transposed to [B, K, 1].
        let x = Tensor::from_vec(codes, (self.k, b), &self.models.device)
            .and_then(|t| t.t()?.contiguous()?.unsqueeze(2))
            .map_err(err("decode input"))?;
        let y = self
            .dec
            .decode_step(&x, &StreamMask::from_slots(&active))
            .map_err(err("codec decode"))?;
        let Some(y) = y else { return Ok(true) };
        let rows: Vec<Vec<Vec<f32>>> = y
            .to_dtype(candle_core::DType::F32)
            .and_then(|y| y.to_vec3::<f32>())
            .map_err(err("decoded audio"))?;
        let dt = t0.elapsed().as_secs_f64();
        for i in 0..b {
            if !active[i] {
                continue;
            }
            let pcm: Vec<i16> = rows[i][0]
                .iter()
                .map(|&x| (x.clamp(-1.0, 1.0) * 32767.0).round() as i16)
                .collect();
            let turn = turns[i];
            let mut latency = None;
            if let Some(t) = &mut self.slots[i].turn {
                if t.turn == turn && !t.latency_sent {
                    t.latency_sent = true;
                    if let Some(a) = t.ended_at {
                        latency = Some(WorkerStages {
                            encode_flush: t.encode_flush.unwrap_or(0.0),
                            first_decoder_step: t.first_step.unwrap_or(0.0),
                            codec_decode: dt,
                            server_total: a.elapsed().as_secs_f64(),
                        });
                    }
                }
            }
            if let Some(stages) = latency {
                self.send(i, WorkerEvent::Latency { turn, stages });
            }
            self.send(i, WorkerEvent::Audio { turn, pcm });
        }
        Ok(true)
    }

    fn finish_turns(&mut self) {
        let n = self.cfg.context_turns;
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            let done = s.turn.as_ref().is_some_and(|t| {
                t.phase == Phase::Generating && t.finished.is_some() && s.decode_q.is_empty()
            });
            if !done {
                continue;
            }
            let t = s.turn.take().expect("checked");
            let turn = t.turn;
            let reason = t.finished.expect("checked");
            if t.setup.mode == Mode::Converse {
                Self::remember(s, t.user_frames, t.reply_frames, n);
            }
            self.send(i, WorkerEvent::TurnDone { turn, reason });
        }
    }
}
