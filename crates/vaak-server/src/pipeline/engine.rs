//! The pipeline's model thread (cargo feature `pipeline`): Whisper, the translator, espeak-ng
//! and the OpenVoice converter, plus one thread per streamed LLM reply.
//!
//! The thread blocks on its job queue, then takes every job waiting and runs them grouped by
//! model, skipping the jobs of flushed turns: LLM streams are started first (each on its own
//! thread, so a slow LLM never holds the models; its deltas go straight to the session, which
//! sends back TTS jobs), then every session's ASR segments run as one Whisper batch, then the
//! translations (one batch of the waiting turns), then a session's first voice embedding, then
//! TTS sentence by sentence (espeak-ng and the converter take one clip at a time: the
//! converter's decoder has no padding mask, see `vaak_teachers::vc`), then the refreshed voice
//! embeddings (a refresh never holds back a reply's text or speech; later sentences use it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Device;
use tokio::sync::mpsc as tmpsc;
use vaak_audio::resample::resample;
use vaak_teachers::asr::WhisperAsr;
use vaak_teachers::mt::{ChatEnd, ChatMessage, OpenAiChat, OpenAiConfig};
use vaak_teachers::spec::{
    build_translator_for, weights_location, whisper_load_options, ModelSpec,
};
use vaak_teachers::tts::{EspeakConfig, EspeakTts, VoiceConvertingTts, VoiceConvertingTtsConfig};
use vaak_teachers::vc::{ConverterOptions, ToneColorConverter};
use vaak_teachers::{Asr, AsrOptions, AudioRef, Lang, Translator, Tts, TtsRequest};

use super::{is_flushed, Job, PipeEvent};
use crate::config::{PipelineConfig, PipelineMode, PipelineModel};
use crate::error::{Result, ServeError};

/// The protocol's sample rate.
const RATE: u32 = 16_000;

fn perr(stage: &'static str) -> impl Fn(String) -> ServeError {
    move |reason| ServeError::Pipeline { stage, reason }
}

/// The teachers' spec of a pipeline model (the cascade config's keys; options as YAML).
fn spec(m: &PipelineModel, default_kind: &str) -> std::result::Result<ModelSpec, String> {
    let options = match serde_yaml::to_value(&m.options).map_err(|e| e.to_string())? {
        serde_yaml::Value::Mapping(map) => map,
        _ => serde_yaml::Mapping::new(),
    };
    Ok(ModelSpec {
        kind: if m.kind.is_empty() {
            default_kind.to_string()
        } else {
            m.kind.clone()
        },
        weights: m.weights.clone(),
        revision: m.revision.clone(),
        options,
    })
}

fn lang(key: &str, code: &str) -> std::result::Result<Lang, String> {
    code.parse::<Lang>()
        .map_err(|_| format!("{key} {code:?}: use one of {}", Lang::supported_list()))
}

enum Reply {
    Translate(Arc<dyn Translator>),
    Chat(Box<OpenAiChat>),
}

struct Engine {
    asr: WhisperAsr,
    window: usize,
    max_new_tokens: usize,
    reply: Reply,
    espeak: EspeakTts,
    vc: Option<VoiceConvertingTts<EspeakTts>>,
    src: Lang,
    tgt: Lang,
    tau: f32,
    seed: u64,
    min_reference: usize,
    slots: HashMap<usize, SlotState>,
}

struct SlotState {
    events: tmpsc::UnboundedSender<PipeEvent>,
    flushed: Arc<AtomicU64>,
    /// The user's tone colour, once enough speech was heard.
    voice: Option<Vec<f32>>,
}

/// Loads every model of `cfg` and starts the engine thread.
pub(super) fn spawn(cfg: &PipelineConfig, device: &str) -> Result<(Sender<Job>, JoinHandle<()>)> {
    let dev = vaak_nn::parse_device(device).map_err(|e| ServeError::Device {
        spec: device.to_string(),
        source: Box::new(e),
    })?;
    let src = lang("pipeline.source_lang", &cfg.source_lang).map_err(perr("config"))?;
    let tgt = lang(
        "pipeline.target_lang",
        cfg.reply_lang().unwrap_or(&cfg.source_lang),
    )
    .map_err(perr("config"))?;
    let (asr, max_new_tokens) = load_whisper(&cfg.asr, &dev).map_err(perr("asr"))?;
    let window = asr.window_samples();
    let reply = match cfg.mode {
        PipelineMode::Converse => {
            let l = &cfg.llm;
            let c = OpenAiConfig {
                base_url: l.base_url.clone().unwrap_or_default(),
                model: l.model.clone().unwrap_or_default(),
                api_key_env: l.api_key_env.clone(),
                timeout_ms: l.timeout_ms,
                temperature: l.temperature,
                max_tokens: Some(l.max_tokens).filter(|&t| t > 0),
                ..OpenAiConfig::default()
            };
            Reply::Chat(Box::new(
                OpenAiChat::new(c).map_err(|e| perr("llm")(e.to_string()))?,
            ))
        }
        _ => {
            let s = spec(&cfg.translator, "m2m100").map_err(perr("translator"))?;
            let t = build_translator_for(&s, &dev, src, tgt)
                .map_err(|e| perr("translator")(format!("kind '{}': {e}", s.kind)))?;
            Reply::Translate(t)
        }
    };
    let t = &cfg.tts;
    let mut espeak_cfg = EspeakConfig {
        rate_wpm: t.rate_wpm,
        output_rate: RATE,
        max_concurrency: 1,
        ..EspeakConfig::default()
    };
    for (code, voice) in &t.voices {
        let l = lang("pipeline.tts.voices", code).map_err(perr("tts"))?;
        let v = &mut espeak_cfg.voices;
        *match l {
            Lang::En => &mut v.en,
            Lang::Ru => &mut v.ru,
            Lang::Hi => &mut v.hi,
            Lang::Te => &mut v.te,
        } = voice.clone();
    }
    let espeak = EspeakTts::new(espeak_cfg.clone()).map_err(|e| perr("tts")(e.to_string()))?;
    let converter = t.converter.as_deref().unwrap_or("none");
    let vc = if converter == "none" {
        None
    } else {
        let conv = ToneColorConverter::load(
            converter,
            &ConverterOptions {
                device: dev.clone(),
                ..ConverterOptions::default()
            },
        )
        .map_err(|e| perr("tts")(format!("converter {converter}: {e}")))?;
        let base = EspeakTts::new(EspeakConfig {
            output_rate: conv.sample_rate(),
            ..espeak_cfg
        })
        .map_err(|e| perr("tts")(e.to_string()))?;
        let vcfg = VoiceConvertingTtsConfig {
            tau: t.tau,
            seed: t.seed,
            output_rate: RATE,
            min_reference_s: t.min_reference_s,
            ..VoiceConvertingTtsConfig::default()
        };
        let vc = VoiceConvertingTts::new(base, Arc::new(conv), vcfg)
            .map_err(|e| perr("tts")(e.to_string()))?;
        // The base voice's tone colour, measured now and cached for every reply.
        vc.base_embedding(tgt)
            .map_err(|e| perr("tts")(format!("base voice embedding: {e}")))?;
        Some(vc)
    };
    if !espeak.supports(tgt) {
        return Err(perr("tts")(format!("espeak-ng cannot speak {tgt}")));
    }
    let mut engine = Engine {
        asr,
        window,
        max_new_tokens,
        reply,
        espeak,
        vc,
        src,
        tgt,
        tau: t.tau,
        seed: t.seed,
        min_reference: (t.min_reference_s * RATE as f64) as usize,
        slots: HashMap::new(),
    };
    let (tx, rx) = mpsc::channel();
    let join = std::thread::Builder::new()
        .name("vaak-pipeline".into())
        .spawn(move || engine.run(rx))
        .map_err(|e| ServeError::Worker(e.to_string()))?;
    Ok((tx, join))
}
/// The pipeline's Whisper and its `max_new_tokens` (a pipeline option; the rest of `options`
/// is the cascade's `whisper` spec: dtype and thresholds).
fn load_whisper(
    m: &PipelineModel,
    dev: &Device,
) -> std::result::Result<(WhisperAsr, usize), String> {
    let mut m = m.clone();
    let max_new_tokens = match m.options.remove("max_new_tokens") {
        None => 128,
        Some(v) => match v.as_integer() {
            Some(n) if (1..=440).contains(&n) => n as usize,
            _ => {
                return Err(format!(
                    "pipeline.asr.options.max_new_tokens = {v}: use 1..=440"
                ))
            }
        },
    };
    let s = spec(&m, "whisper")?;
    if s.kind != "whisper" {
        return Err(format!(
            "pipeline.asr.kind '{}': the pipeline runs kind 'whisper'",
            s.kind
        ));
    }
    let opts = whisper_load_options(&s, dev)?;
    let loc = weights_location("pipeline.asr", &s)?;
    let w = WhisperAsr::load(&loc, &opts).map_err(|e| format!("{loc}: {e}"))?;
    Ok((w, max_new_tokens))
}

impl Engine {
    fn run(&mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let mut asr = Vec::new();
            let mut mt = Vec::new();
            let mut voice = Vec::new();
            let mut tts = Vec::new();
            for j in jobs {
                if let Some((slot, turn)) = j.turn() {
                    let live = self
                        .slots
                        .get(&slot)
                        .is_some_and(|s| !is_flushed(&s.flushed, turn));
                    if !live {
                        continue;
                    }
                }
                match j {
                    Job::Shutdown => return,
                    Job::Open {
                        slot,
                        events,
                        flushed,
                    } => {
                        self.slots.insert(
                            slot,
                            SlotState {
                                events,
                                flushed,
                                voice: None,
                            },
                        );
                    }
                    Job::Close { slot } => {
                        self.slots.remove(&slot);
                    }
                    Job::Voice { slot, audio } => voice.push((slot, audio)),
                    Job::Chat {
                        slot,
                        turn,
                        messages,
                    } => self.chat(slot, turn, messages),
                    j @ Job::Asr { .. } => asr.push(j),
                    j @ Job::Translate { .. } => mt.push(j),
                    j @ Job::Speak { .. } => tts.push(j),
                }
            }
            self.transcribe(asr);
            self.translate(mt);
            // After the turns' ASR and MT (and the LLM streams, started above), so the
            // embedding never delays a reply's text. A session's first voice is computed before
            // its speech; a refresh after it (the first sentences of a turn keep the voice of
            // the turns before, and the speech is not held back by the embedding).
            let (first, refresh): (Vec<_>, Vec<_>) = voice
                .into_iter()
                .partition(|(slot, _)| self.slots.get(slot).is_some_and(|s| s.voice.is_none()));
            for (slot, audio) in first {
                self.voice(slot, &audio);
            }
            for j in tts {
                self.speak(j);
            }
            for (slot, audio) in refresh {
                self.voice(slot, &audio);
            }
        }
    }

    fn send(&self, slot: usize, e: PipeEvent) {
        if let Some(s) = self.slots.get(&slot) {
            let _ = s.events.send(e);
        }
    }

    fn live(&self, slot: usize, turn: u32) -> bool {
        self.slots
            .get(&slot)
            .is_some_and(|s| !is_flushed(&s.flushed, turn))
    }

    fn voice(&mut self, slot: usize, audio: &[f32]) {
        let Some(vc) = &self.vc else { return };
        if audio.len() < self.min_reference {
            return;
        }
        match vc.converter().tone_color(AudioRef::new(audio, RATE)) {
            Ok(se) if se.iter().all(|v| v.is_finite()) => {
                if let Some(s) = self.slots.get_mut(&slot) {
                    s.voice = Some(se);
                }
            }
            Ok(_) => tracing::warn!(slot, "the voice embedding is not finite; keeping the last"),
            Err(e) => tracing::warn!(slot, error = %e, "voice embedding failed"),
        }
    }

    /// Every waiting segment of every session as one Whisper batch (segments longer than
    /// the model's window are cut into windows, and their texts joined).
    fn transcribe(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut pieces: Vec<(usize, &[f32])> = Vec::new();
        let mut meta = Vec::new();
        for (k, j) in jobs.iter().enumerate() {
            if let Job::Asr {
                slot,
                turn,
                seg,
                audio,
            } = j
            {
                meta.push((*slot, *turn, *seg));
                for c in audio.chunks(self.window.max(1)) {
                    pieces.push((k, c));
                }
            }
        }
        let batch: Vec<AudioRef> = pieces.iter().map(|(_, c)| AudioRef::new(c, RATE)).collect();
        let opts = AsrOptions {
            language: Some(self.src),
            max_new_tokens: self.max_new_tokens,
        };
        let results = self.asr.transcribe(&batch, &opts);
        let mut texts: Vec<(Vec<String>, Option<String>)> = vec![(Vec::new(), None); meta.len()];
        match results {
            Ok(rs) => {
                for ((k, _), r) in pieces.iter().zip(rs) {
                    match r {
                        Ok(t) => texts[*k].0.push(t.text.trim().to_string()),
                        Err(e) => texts[*k].1 = Some(e.to_string()),
                    }
                }
            }
            Err(e) => {
                for t in &mut texts {
                    t.1 = Some(e.to_string());
                }
            }
        }
        for ((slot, turn, seg), (parts, error)) in meta.into_iter().zip(texts) {
            let text = parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            self.send(
                slot,
                PipeEvent::Transcript {
                    turn,
                    seg,
                    text,
                    error,
                },
            );
        }
    }

    /// The waiting turns' transcripts as one translator batch.
    fn translate(&self, jobs: Vec<Job>) {
        let Reply::Translate(tr) = &self.reply else {
            return;
        };
        let items: Vec<(usize, u32, String)> = jobs
            .into_iter()
            .filter_map(|j| match j {
                Job::Translate { slot, turn, text } => Some((slot, turn, text)),
                _ => None,
            })
            .collect();
        if items.is_empty() {
            return;
        }
        let texts: Vec<&str> = items.iter().map(|(_, _, t)| t.as_str()).collect();
        let out = tr.translate(&texts, self.src, self.tgt);
        for (k, (slot, turn, _)) in items.iter().enumerate() {
            let r = match &out {
                Ok(rs) => match rs.get(k) {
                    Some(Ok(t)) => Ok(t.clone()),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("the translator returned too few results".into()),
                },
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(text) => {
                    self.send(*slot, PipeEvent::Token { turn: *turn, text });
                    self.send(
                        *slot,
                        PipeEvent::ReplyEnd {
                            turn: *turn,
                            error: None,
                        },
                    );
                }
                Err(e) => self.send(
                    *slot,
                    PipeEvent::ReplyEnd {
                        turn: *turn,
                        error: Some(format!("translation failed: {e}")),
                    },
                ),
            }
        }
    }

    /// Streams the LLM's reply on its own thread; a flushed turn drops the stream (and so the
    /// HTTP connection) at its next delta.
    fn chat(&self, slot: usize, turn: u32, messages: Vec<(String, String)>) {
        let Reply::Chat(client) = &self.reply else {
            return;
        };
        let Some(s) = self.slots.get(&slot) else {
            return;
        };
        let client = (**client).clone();
        let events = s.events.clone();
        let flushed = s.flushed.clone();
        let msgs: Vec<ChatMessage> = messages
            .into_iter()
            .map(|(r, c)| ChatMessage::new(&r, c))
            .collect();
        let spawned = std::thread::Builder::new()
            .name("vaak-llm-stream".into())
            .spawn(move || {
                let never = AtomicBool::new(false);
                let end = client.stream_with(&msgs, &never, |d| {
                    !is_flushed(&flushed, turn)
                        && events
                            .send(PipeEvent::Token {
                                turn,
                                text: d.to_string(),
                            })
                            .is_ok()
                });
                let error = match end {
                    Ok(ChatEnd::Done { finish_reason }) => {
                        if finish_reason.as_deref() == Some("length") {
                            tracing::info!(turn, "LLM reply cut at max_tokens");
                        }
                        None
                    }
                    Ok(ChatEnd::Cancelled) => return,
                    Err(e) => Some(format!("llm: {e}")),
                };
                let _ = events.send(PipeEvent::ReplyEnd { turn, error });
            });
        if let Err(e) = spawned {
            self.send(
                slot,
                PipeEvent::ReplyEnd {
                    turn,
                    error: Some(format!("llm: cannot start the stream thread: {e}")),
                },
            );
        }
    }

    fn speak(&self, job: Job) {
        let Job::Speak {
            slot,
            turn,
            index,
            text,
        } = job
        else {
            return;
        };
        if !self.live(slot, turn) {
            return;
        }
        let voice = self.slots.get(&slot).and_then(|s| s.voice.clone());
        let r = self.synthesize(&text, voice.as_deref());
        let (samples, error) = match r {
            Ok(s) => (s, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        self.send(
            slot,
            PipeEvent::Speech {
                turn,
                index,
                samples,
                error,
            },
        );
    }

    /// espeak-ng, then (with a converter and a voice) the user's tone colour; 16 kHz out.
    fn synthesize(
        &self,
        text: &str,
        voice: Option<&[f32]>,
    ) -> std::result::Result<Vec<f32>, String> {
        let req = TtsRequest {
            text,
            lang: self.tgt,
            reference: None,
        };
        match (&self.vc, voice) {
            (Some(vc), Some(tgt_se)) => {
                let base = vc
                    .base()
                    .synthesize(&[req])
                    .map_err(|e| e.to_string())?
                    .pop()
                    .ok_or("espeak-ng returned nothing")?
                    .map_err(|e| e.to_string())?;
                let src_se = vc.base_embedding(self.tgt).map_err(|e| e.to_string())?;
                let seed = self.seed ^ fnv(text);
                let conv = vc.converter();
                let wav = conv
                    .convert(
                        AudioRef::new(&base.samples, base.sample_rate),
                        &src_se,
                        tgt_se,
                        self.tau,
                        seed,
                    )
                    .map_err(|e| e.to_string())?;
                let out = resample(&wav, conv.sample_rate(), RATE).map_err(|e| e.to_string())?;
                Ok(out)
            }
            _ => {
                let s = self
                    .espeak
                    .synthesize(&[req])
                    .map_err(|e| e.to_string())?
                    .pop()
                    .ok_or("espeak-ng returned nothing")?
                    .map_err(|e| e.to_string())?;
                Ok(s.samples)
            }
        }
    }
}

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
