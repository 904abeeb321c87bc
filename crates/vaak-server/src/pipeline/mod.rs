//! Pipeline mode: ASR → machine translation or an LLM → voice-preserving TTS, in place of the
//! S2S model, behind the same protocol, turn-taking, barge-in, pacing and metrics.
//!
//! Two halves:
//! - [`PipelineTurns`] (here, always compiled): the session side. It keeps the session's recent
//!   audio, cuts a segment each time the VAD reports "not speaking" inside a user turn and sends
//!   it to ASR at once (so only the last segment is left at the end of the turn), starts the
//!   translation or the LLM stream when the turn's transcript is complete, splits the reply
//!   into sentences and sends each to TTS as soon as it is complete, frames the speech for the
//!   session's pacing lane, and times every stage.
//! - `engine` (cargo feature `pipeline`): the model thread that owns Whisper, the translator,
//!   espeak-ng and the OpenVoice converter, and the LLM stream threads. Without the feature,
//!   [`PipelineHandle::start`] is a typed error.
//!
//! The session side talks to the engine with [`Job`]s and hears back [`PipeEvent`]s. A turn is
//! cancelled by the session's `flushed` counter (shared with the engine): queued jobs of a
//! flushed turn are skipped, an LLM stream of a flushed turn is dropped at its next delta
//! (closing the HTTP connection), and late events of a flushed turn are ignored here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc as tmpsc;

use crate::config::{PipelineConfig, PipelineMode};
use crate::error::Result;
use crate::protocol::{Meta, Stages};

#[cfg(feature = "pipeline")]
mod engine;

/// Session → engine.
pub enum Job {
    Open {
        slot: usize,
        events: tmpsc::UnboundedSender<PipeEvent>,
        flushed: Arc<AtomicU64>,
    },
    Close {
        slot: usize,
    },
    /// One VAD-closed speech segment (mono, 16 kHz) of `turn`.
    Asr {
        slot: usize,
        turn: u32,
        seg: u32,
        audio: Vec<f32>,
    },
    /// The user's recent speech (16 kHz): the voice replies are spoken in.
    Voice {
        slot: usize,
        audio: Vec<f32>,
    },
    Translate {
        slot: usize,
        turn: u32,
        text: String,
    },
    /// A streamed LLM reply to `messages` (`(role, content)`, oldest first).
    Chat {
        slot: usize,
        turn: u32,
        messages: Vec<(String, String)>,
    },
    /// Sentence `index` of the reply of `turn`.
    Speak {
        slot: usize,
        turn: u32,
        index: u32,
        text: String,
    },
    Shutdown,
}

impl Job {
    /// The turn a job belongs to (none for session-wide jobs).
    pub fn turn(&self) -> Option<(usize, u32)> {
        match self {
            Job::Asr { slot, turn, .. }
            | Job::Translate { slot, turn, .. }
            | Job::Chat { slot, turn, .. }
            | Job::Speak { slot, turn, .. } => Some((*slot, *turn)),
            _ => None,
        }
    }
}

/// Engine → session.
#[derive(Clone, Debug, PartialEq)]
pub enum PipeEvent {
    /// The text of one segment (empty when ASR failed or heard nothing; `error` says why).
    Transcript {
        turn: u32,
        seg: u32,
        text: String,
        error: Option<String>,
    },
    /// A piece of the reply: an LLM delta, or the whole translation.
    Token { turn: u32, text: String },
    /// The reply text is complete (`error`: the MT or LLM request failed).
    ReplyEnd { turn: u32, error: Option<String> },
    /// Speech of sentence `index` (mono, 16 kHz); empty with `error` when TTS failed.
    Speech {
        turn: u32,
        index: u32,
        samples: Vec<f32>,
        error: Option<String>,
    },
}

/// The running engine, shared by every session.
pub struct PipelineHandle {
    pub mode: PipelineMode,
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    /// Chat settings the session side needs.
    pub system_prompt: String,
    pub history_turns: usize,
    pub max_reference_s: f64,
    join: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PipelineHandle {
    /// Loads the models of `cfg` on `device` and starts the engine thread.
    pub fn start(cfg: &PipelineConfig, device: &str) -> Result<Self> {
        cfg.check_complete()?;
        #[cfg(feature = "pipeline")]
        {
            let (tx, join) = engine::spawn(cfg, device)?;
            Ok(Self {
                mode: cfg.mode,
                tx: std::sync::Mutex::new(tx),
                system_prompt: cfg.llm.system_prompt.clone(),
                history_turns: cfg.llm.history_turns,
                max_reference_s: cfg.tts.max_reference_s,
                join: std::sync::Mutex::new(Some(join)),
            })
        }
        #[cfg(not(feature = "pipeline"))]
        {
            let _ = device;
            Err(crate::error::ServeError::PipelineNotBuilt {
                mode: cfg.mode.name(),
            })
        }
    }

    pub fn send(&self, job: Job) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(job);
        }
    }

    /// Stops the engine thread and waits for it.
    pub fn stop(&self) {
        self.send(Job::Shutdown);
        let j = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = j {
            let _ = j.join();
        }
    }
}

impl Drop for PipelineHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the session must do after a pipeline step.
#[derive(Debug, PartialEq)]
pub enum Act {
    Meta(Meta),
    /// A non-fatal ERROR (`internal`) for the client.
    Error(String),
    /// One frame of reply audio (PCM16 at the protocol rate) for the pacing lane.
    Audio {
        turn: u32,
        pcm: Vec<i16>,
    },
    /// The reply of `turn` is complete: end it after its audio.
    Done {
        turn: u32,
    },
}

/// Splits a streamed reply into sentences: [`SentenceSplitter::push`] returns the sentences a
/// delta completed, [`SentenceSplitter::finish`] the rest. A sentence ends at `.`, `!`, `?`,
/// `…`, `।` (Hindi danda) or `;` followed by whitespace, at a newline, or, past `max_chars`,
/// at the last space (so a long unpunctuated reply still starts speaking).
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
    max_chars: usize,
}

impl SentenceSplitter {
    pub fn new(max_chars: usize) -> Self {
        Self {
            buf: String::new(),
            max_chars: max_chars.max(16),
        }
    }

    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            let cut = {
                let chars: Vec<(usize, char)> = self.buf.char_indices().collect();
                let mut cut = None;
                for w in 0..chars.len() {
                    let (i, c) = chars[w];
                    if c == '\n' {
                        cut = Some(i + 1);
                        break;
                    }
                    if matches!(c, '.' | '!' | '?' | '…' | '।' | ';')
                        && chars.get(w + 1).is_some_and(|(_, n)| n.is_whitespace())
                    {
                        cut = Some(i + c.len_utf8());
                        break;
                    }
                }
                if cut.is_none() && chars.len() > self.max_chars {
                    // The last space within the first `max_chars` characters.
                    let end = chars[self.max_chars].0;
                    cut = self.buf[..end].rfind(' ').filter(|&i| i > 0);
                }
                cut
            };
            let Some(cut) = cut else { break };
            let s: String = self.buf.drain(..cut).collect();
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
        }
        out
    }

    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }
}

/// One turn's progress through the pipeline.
struct TurnPipe {
    turn: u32,
    /// Segments sent to ASR, and their transcripts as they come back.
    segments: Vec<Option<String>>,
    /// The user turn is over (its last segment was sent).
    ended: bool,
    vad_end: Option<Instant>,
    endpoint_ms: f64,
    speech_end_t_us: u64,
    asr_done: Option<f64>,
    first_token: Option<f64>,
    first_tts: Option<f64>,
    latency_sent: bool,
    transcript: String,
    reply_started: bool,
    splitter: SentenceSplitter,
    reply: String,
    /// Sentences sent to TTS, and spoken so far.
    sentences_sent: u32,
    sentences_done: u32,
    /// Text of the sentences sent, for the history (what the user actually heard).
    spoken_text: Vec<String>,
    reply_ended: bool,
    done: bool,
}

/// The session side of the pipeline (see the module doc).
pub struct PipelineTurns {
    handle: Arc<PipelineHandle>,
    slot: usize,
    rate: u32,
    frame_samples: usize,
    /// The session's recent input audio; `audio[0]` is stream sample `audio_start`.
    audio: VecDeque<f32>,
    audio_start: u64,
    audio_cap: usize,
    /// Where the current segment of the open turn starts.
    seg_start: u64,
    /// Whether the VAD heard speech since `seg_start` (else the turn's last segment is
    /// silence, and no ASR is left at the end of the turn).
    seg_has_speech: bool,
    cur: Option<TurnPipe>,
    /// Completed exchanges (user, reply), oldest first.
    history: VecDeque<(String, String)>,
    /// Recent user speech, for the voice of the replies.
    voice: VecDeque<f32>,
}

impl PipelineTurns {
    /// `rate`: the protocol's sample rate (16 kHz); `max_turn_s`: the longest user turn.
    pub fn new(
        handle: Arc<PipelineHandle>,
        slot: usize,
        rate: u32,
        frame_samples: usize,
        max_turn_s: f64,
        events: tmpsc::UnboundedSender<PipeEvent>,
        flushed: Arc<AtomicU64>,
    ) -> Self {
        handle.send(Job::Open {
            slot,
            events,
            flushed,
        });
        Self {
            handle,
            slot,
            rate,
            frame_samples: frame_samples.max(1),
            audio: VecDeque::new(),
            audio_start: 0,
            audio_cap: ((max_turn_s + 3.0) * rate as f64) as usize,
            seg_start: 0,
            seg_has_speech: false,
            cur: None,
            history: VecDeque::new(),
            voice: VecDeque::new(),
        }
    }

    /// New input audio (protocol rate), ending at stream position `fed`.
    pub fn push_audio(&mut self, x: &[f32]) {
        self.audio.extend(x);
        let over = self.audio.len().saturating_sub(self.audio_cap);
        if over > 0 {
            self.audio.drain(..over);
            self.audio_start += over as u64;
        }
    }

    fn span(&self, from: u64, to: u64) -> Vec<f32> {
        let a = from.max(self.audio_start) - self.audio_start;
        let b = (to.max(self.audio_start) - self.audio_start).min(self.audio.len() as u64);
        if a >= b {
            return Vec::new();
        }
        self.audio.range(a as usize..b as usize).copied().collect()
    }

    /// A user turn begins at stream sample `start`.
    pub fn start_turn(&mut self, turn: u32, start: u64) {
        self.seg_start = start;
        self.seg_has_speech = true;
        self.cur = Some(TurnPipe {
            turn,
            segments: Vec::new(),
            ended: false,
            vad_end: None,
            endpoint_ms: 0.0,
            speech_end_t_us: 0,
            asr_done: None,
            first_token: None,
            first_tts: None,
            latency_sent: false,
            transcript: String::new(),
            reply_started: false,
            splitter: SentenceSplitter::new(160),
            reply: String::new(),
            sentences_sent: 0,
            sentences_done: 0,
            spoken_text: Vec::new(),
            reply_ended: false,
            done: false,
        });
    }

    /// Sends the audio from the segment start to `end` to ASR.
    fn cut_segment(&mut self, end: u64) {
        let audio = self.span(self.seg_start, end);
        self.seg_start = end;
        let Some(t) = &mut self.cur else { return };
        if t.ended || audio.is_empty() {
            return;
        }
        self.voice.extend(audio.iter().copied());
        let keep = (self.handle.max_reference_s * self.rate as f64) as usize;
        let over = self.voice.len().saturating_sub(keep);
        self.voice.drain(..over);
        let seg = t.segments.len() as u32;
        t.segments.push(None);
        self.handle.send(Job::Asr {
            slot: self.slot,
            turn: t.turn,
            seg,
            audio,
        });
    }

    /// The VAD reported "not speaking" inside the open turn, at stream sample `at`: the
    /// segment so far goes to ASR while the user may go on.
    pub fn speech_paused(&mut self, at: u64) {
        if self.cur.as_ref().is_some_and(|t| !t.ended) {
            self.cut_segment(at);
            self.seg_has_speech = false;
        }
    }

    /// The VAD hears speech again inside the open turn.
    pub fn speech_resumed(&mut self) {
        self.seg_has_speech = true;
    }

    /// The user turn is over at stream sample `end` (decided at `at`).
    pub fn end_turn(
        &mut self,
        end: u64,
        at: Instant,
        endpoint_ms: f64,
        speech_end_t_us: u64,
    ) -> Vec<Act> {
        if self.seg_has_speech {
            self.cut_segment(end);
        } else {
            // Only the endpoint's silence since the last cut: nothing left to transcribe.
            self.seg_start = end;
        }
        let Some(t) = &mut self.cur else {
            return Vec::new();
        };
        t.ended = true;
        t.vad_end = Some(at);
        t.endpoint_ms = endpoint_ms;
        t.speech_end_t_us = speech_end_t_us;
        self.advance()
    }

    /// Barge-in: forget the turn (the engine skips its jobs through `flushed`).
    pub fn cancel(&mut self, turn: u32) {
        if let Some(t) = self.cur.take() {
            if t.turn == turn && t.reply_started {
                // What the user heard before cutting in stays in the history.
                let heard = t.spoken_text.join(" ");
                self.remember(t.transcript.clone(), heard);
            }
            if t.turn != turn {
                self.cur = Some(t);
            }
        }
    }

    fn remember(&mut self, user: String, reply: String) {
        if user.trim().is_empty() || self.handle.history_turns == 0 {
            return;
        }
        self.history.push_back((user, reply));
        while self.history.len() > self.handle.history_turns {
            self.history.pop_front();
        }
    }

    fn since(t: &TurnPipe) -> f64 {
        t.vad_end.map_or(0.0, |a| a.elapsed().as_secs_f64())
    }

    /// An event from the engine; ignored unless it is for the current turn.
    pub fn on_event(&mut self, e: PipeEvent) -> Vec<Act> {
        let mut acts = Vec::new();
        let turn = match &e {
            PipeEvent::Transcript { turn, .. }
            | PipeEvent::Token { turn, .. }
            | PipeEvent::ReplyEnd { turn, .. }
            | PipeEvent::Speech { turn, .. } => *turn,
        };
        let Some(t) = self.cur.as_mut().filter(|t| t.turn == turn && !t.done) else {
            return acts;
        };
        let mut to_speak = Vec::new();
        match e {
            PipeEvent::Transcript {
                seg, text, error, ..
            } => {
                if let Some(m) = error {
                    tracing::warn!(turn, seg, error = %m, "pipeline ASR failed on a segment");
                }
                if let Some(s) = t.segments.get_mut(seg as usize) {
                    *s = Some(text);
                }
            }
            PipeEvent::Token { text, .. } => {
                if t.first_token.is_none() {
                    t.first_token = Some(Self::since(t));
                }
                t.reply.push_str(&text);
                to_speak = t.splitter.push(&text);
            }
            PipeEvent::ReplyEnd { error, .. } => {
                if let Some(m) = error {
                    acts.push(Act::Error(m));
                }
                t.reply_ended = true;
                to_speak.extend(t.splitter.finish());
                if !t.reply.trim().is_empty() {
                    acts.push(Act::Meta(Meta::Reply {
                        turn,
                        text: t.reply.trim().to_string(),
                    }));
                }
            }
            PipeEvent::Speech { samples, error, .. } => {
                t.sentences_done += 1;
                if let Some(m) = error {
                    acts.push(Act::Error(format!("tts: {m}")));
                }
                if !samples.is_empty() && t.first_tts.is_none() {
                    t.first_tts = Some(Self::since(t));
                }
                for c in samples.chunks(self.frame_samples) {
                    acts.push(Act::Audio {
                        turn,
                        pcm: c
                            .iter()
                            .map(|&x| (x.clamp(-1.0, 1.0) * 32767.0).round() as i16)
                            .collect(),
                    });
                }
            }
        }
        for s in to_speak {
            self.speak(s);
        }
        acts.extend(self.advance());
        acts
    }

    fn speak(&mut self, text: String) {
        let Some(t) = &mut self.cur else { return };
        let index = t.sentences_sent;
        t.sentences_sent += 1;
        t.spoken_text.push(text.clone());
        self.handle.send(Job::Speak {
            slot: self.slot,
            turn: t.turn,
            index,
            text,
        });
    }

    /// Moves the turn on: transcript complete → MT/LLM; reply and speech complete → done.
    fn advance(&mut self) -> Vec<Act> {
        let mut acts = Vec::new();
        let Some(t) = &mut self.cur else { return acts };
        if t.done {
            return acts;
        }
        if t.ended && !t.reply_started && t.segments.iter().all(Option::is_some) {
            t.asr_done = Some(Self::since(t));
            let text = t
                .segments
                .iter()
                .flatten()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            t.transcript = text.clone();
            t.reply_started = true;
            acts.push(Act::Meta(Meta::Transcript {
                turn: t.turn,
                text: text.clone(),
            }));
            if text.is_empty() {
                // Nothing was heard: no reply.
                t.reply_ended = true;
            } else {
                let job = match self.handle.mode {
                    PipelineMode::Converse => {
                        let mut messages = Vec::new();
                        if !self.handle.system_prompt.trim().is_empty() {
                            messages
                                .push(("system".to_string(), self.handle.system_prompt.clone()));
                        }
                        for (u, r) in &self.history {
                            messages.push(("user".to_string(), u.clone()));
                            messages.push(("assistant".to_string(), r.clone()));
                        }
                        messages.push(("user".to_string(), text));
                        Job::Chat {
                            slot: self.slot,
                            turn: t.turn,
                            messages,
                        }
                    }
                    _ => Job::Translate {
                        slot: self.slot,
                        turn: t.turn,
                        text,
                    },
                };
                self.handle.send(job);
                // The voice is refreshed from the newest speech after the reply's request
                // (so it never delays the text) and before the reply's first sentence.
                self.handle.send(Job::Voice {
                    slot: self.slot,
                    audio: self.voice.iter().copied().collect(),
                });
            }
        }
        let t = self.cur.as_mut().expect("checked");
        if t.reply_started && t.reply_ended && t.sentences_done >= t.sentences_sent {
            t.done = true;
            acts.push(Act::Done { turn: t.turn });
            if self.handle.mode == PipelineMode::Converse {
                let (u, r) = (t.transcript.clone(), t.spoken_text.join(" "));
                self.remember(u, r);
            }
        }
        acts
    }

    /// The first frame of `turn` went to the socket: the turn's latency META, and the stage
    /// histograms (seconds from the end of the turn).
    pub fn on_first_sent(&mut self, turn: u32, metrics: &crate::metrics::Metrics) -> Option<Meta> {
        let t = self.cur.as_mut().filter(|t| t.turn == turn)?;
        if t.latency_sent {
            return None;
        }
        t.latency_sent = true;
        let sent = Self::since(t);
        let stages = [
            ("asr", t.asr_done),
            ("first_token", t.first_token),
            ("first_tts_audio", t.first_tts),
            ("first_audio_sent", Some(sent)),
        ];
        let mut ms = Stages::new();
        ms.insert("endpoint".into(), t.endpoint_ms);
        for (k, v) in stages {
            if let Some(v) = v {
                metrics.observe_stage(k, v);
                ms.insert(k.into(), v * 1000.0);
            }
        }
        Some(Meta::Latency {
            turn,
            speech_end_t_us: t.speech_end_t_us,
            endpoint_ms: t.endpoint_ms,
            stages_ms: ms,
        })
    }

    /// The session is over.
    pub fn close(&self) {
        self.handle.send(Job::Close { slot: self.slot });
    }

    /// Whether `turn`'s latency is still to be reported.
    pub fn wants_first_sent(&self, turn: u32) -> bool {
        self.cur
            .as_ref()
            .is_some_and(|t| t.turn == turn && !t.latency_sent)
    }
}

/// Whether `flushed` (the session's first unflushed turn) has passed `turn`.
pub fn is_flushed(flushed: &AtomicU64, turn: u32) -> bool {
    (turn as u64) < flushed.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "pipeline"))]
    #[test]
    fn without_the_feature_pipeline_mode_is_a_typed_error() {
        let mut c = PipelineConfig {
            mode: PipelineMode::Converse,
            ..Default::default()
        };
        c.asr.weights = Some("/w".into());
        c.tts.converter = Some("none".into());
        c.llm.base_url = Some("http://127.0.0.1:1/v1".into());
        c.llm.model = Some("m".into());
        match PipelineHandle::start(&c, "cpu") {
            Err(e @ crate::ServeError::PipelineNotBuilt { .. }) => {
                assert!(e.to_string().contains("--features pipeline"), "{e}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started without the feature"),
        }
        c.llm.model = None;
        let e = PipelineHandle::start(&c, "cpu").err().unwrap().to_string();
        assert!(e.contains("pipeline.llm.model"), "{e}");
    }

    #[test]
    fn sentences_are_cut_as_soon_as_they_end() {
        let mut s = SentenceSplitter::new(40);
        assert!(s.push("Hello").is_empty());
        assert!(s.push(" there.").is_empty(), "the end needs the next space");
        assert_eq!(s.push(" How"), vec!["Hello there."]);
        assert_eq!(
            s.push(" are you? Fine! 3.5 is"),
            vec!["How are you?", "Fine!"]
        );
        assert!(s.push(" a number").is_empty(), "3.5 is not an end");
        assert_eq!(s.push("\nNext"), vec!["3.5 is a number"]);
        assert_eq!(s.finish().as_deref(), Some("Next"));
        assert_eq!(s.finish(), None);
        let long = "word ".repeat(20);
        let out = s.push(&long);
        assert!(
            !out.is_empty() && out.iter().all(|x| x.len() <= 40),
            "{out:?}"
        );
        assert_eq!(
            SentenceSplitter::new(100).push("Привет. Как дела? "),
            vec!["Привет.", "Как дела?"]
        );
    }
}
