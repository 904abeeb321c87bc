//! TEST DOUBLES for the teacher traits, plus helpers that write inputs.
//!
//! These are deliberately trivial, deterministic stand-ins so the tests exercise the cascade's
//! ORCHESTRATION (batching, error routing, layout, resume), never model quality:
//! - [`DoubleAsr`]: "transcribes" a clip as `round(2 * seconds)` words `w0 w1 ...`; a silent
//!   clip gives a whitespace-only transcript flagged `no_speech`; a clip whose peak is in
//!   (0.05, 0.3) gets the extra word `poison`, which [`ReverseTranslator`] refuses, and one whose
//!   peak is in [0.3, 0.35) gets the word `blank`.
//! - [`ReverseTranslator`]: reverses the word order; a text with `blank` translates to
//!   whitespace only.
//! - [`StatsSpeaker`]: embedding = [mean, rms, peak, seconds] of the clip.
//! - [`SineTts`]: a 220 Hz sine at 24 kHz, `TTS_SECONDS_PER_CHAR` per character.
//! - [`FrameCodec`]: 2 "codebooks" over 320-sample frames (quantised rms, zero crossings).
//!
//! Options (in `models.<stage>.options`): `delay_ms` (sleep per call, for the crash test),
//! `fail_batch` (the whole call returns `Err`), `panic` (the call panics), `fail_rate` (speaker
//! only: clips at this sample rate fail, e.g. 24000 for the TTS output), `needs_reference` (TTS
//! only: a request without a voice reference fails, as OpenVoice's does).
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vaak_audio::io::{write_wav, WavFormat};
use vaak_cascade::config::ModelSpec;
use vaak_cascade::{TeacherFactory, TokenCodec};
use vaak_teachers::{
    Asr, AsrOptions, AudioRef, ItemResult, Lang, ModelId, SpeakerEncoder, Speech, TeacherError,
    Transcript, Translator, Tts, TtsRequest,
};

pub const TTS_SECONDS_PER_CHAR: f64 = 0.12;
pub const CODEC_FRAME: usize = 320;

/// Call statistics shared with the test.
#[derive(Default, Debug)]
pub struct Calls {
    pub asr_items: AtomicUsize,
    pub asr_calls: AtomicUsize,
    pub asr_max_batch: AtomicUsize,
    pub tts_max_batch: AtomicUsize,
    /// TTS requests that came without a voice reference.
    pub tts_without_reference: AtomicUsize,
}

impl Calls {
    fn note(&self, calls: &AtomicUsize, items: &AtomicUsize, max: &AtomicUsize, n: usize) {
        calls.fetch_add(1, Ordering::SeqCst);
        items.fetch_add(n, Ordering::SeqCst);
        max.fetch_max(n, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Behaviour {
    delay_ms: u64,
    fail_batch: bool,
    panic: bool,
    /// Items at this sample rate fail (per item); the speaker double uses it.
    fail_rate: Option<u32>,
    /// The TTS double refuses requests without a reference (per item), like OpenVoice.
    needs_reference: bool,
}

impl Behaviour {
    fn from(spec: &ModelSpec) -> Self {
        let get = |k: &str| spec.options.get(serde_yaml::Value::from(k));
        Self {
            delay_ms: get("delay_ms").and_then(|v| v.as_u64()).unwrap_or(0),
            fail_batch: get("fail_batch").and_then(|v| v.as_bool()).unwrap_or(false),
            panic: get("panic").and_then(|v| v.as_bool()).unwrap_or(false),
            fail_rate: get("fail_rate").and_then(|v| v.as_u64()).map(|r| r as u32),
            needs_reference: get("needs_reference")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        }
    }
    fn act(&self, what: &str) -> vaak_teachers::Result<()> {
        if self.delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.delay_ms));
        }
        if self.panic {
            panic!("{what} double told to panic");
        }
        if self.fail_batch {
            return Err(TeacherError::Msg(format!(
                "{what} double told to fail the batch"
            )));
        }
        Ok(())
    }
}

fn id(name: &str) -> ModelId {
    ModelId {
        name: format!("test-double/{name}"),
        revision: Some("1".into()),
    }
}

fn peak(a: &AudioRef<'_>) -> f32 {
    a.samples.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

pub struct DoubleAsr {
    b: Behaviour,
    calls: Arc<Calls>,
}

impl Asr for DoubleAsr {
    fn model_id(&self) -> ModelId {
        id("asr")
    }
    fn transcribe(
        &self,
        batch: &[AudioRef<'_>],
        opts: &AsrOptions,
    ) -> vaak_teachers::Result<Vec<ItemResult<Transcript>>> {
        let c = &self.calls;
        c.note(&c.asr_calls, &c.asr_items, &c.asr_max_batch, batch.len());
        self.b.act("asr")?;
        Ok(batch
            .iter()
            .map(|a| {
                let p = peak(a);
                let silent = p < 1e-4;
                let n = (a.duration_s() * 2.0).round() as usize;
                let mut words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
                if p > 0.05 && p < 0.3 {
                    words.push("poison".into());
                }
                if (0.3..0.35).contains(&p) {
                    words.push("blank".into());
                }
                Ok(Transcript {
                    text: if silent {
                        " \t ".into()
                    } else {
                        words.join(" ")
                    },
                    language: opts.language.map_or("en".into(), |l| l.code().to_string()),
                    no_speech_prob: if silent { 0.95 } else { 0.01 },
                    avg_logprob: -0.2,
                    compression_ratio: 1.2,
                    flags: if silent {
                        vec!["no_speech".into()]
                    } else {
                        vec![]
                    },
                })
            })
            .collect())
    }
}

pub struct ReverseTranslator {
    b: Behaviour,
}

impl Translator for ReverseTranslator {
    fn model_id(&self) -> ModelId {
        id("reverse")
    }
    fn supports(&self, lang: Lang) -> bool {
        matches!(lang, Lang::En | Lang::Ru)
    }
    fn translate(
        &self,
        batch: &[&str],
        _src: Lang,
        _tgt: Lang,
    ) -> vaak_teachers::Result<Vec<ItemResult<String>>> {
        self.b.act("translator")?;
        Ok(batch
            .iter()
            .map(|t| {
                if t.split_whitespace().any(|w| w == "poison") {
                    Err(TeacherError::BadInput(format!(
                        "refusing to translate '{t}'"
                    )))
                } else if t.split_whitespace().any(|w| w == "blank") {
                    Ok(" \n  ".into())
                } else {
                    Ok(t.split_whitespace().rev().collect::<Vec<_>>().join(" "))
                }
            })
            .collect())
    }
}

pub struct StatsSpeaker {
    b: Behaviour,
}

pub fn clip_stats(samples: &[f32], rate: u32) -> Vec<f32> {
    let n = samples.len().max(1) as f32;
    let mean = samples.iter().sum::<f32>() / n;
    let rms = (samples.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
    let peak = samples.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    vec![mean, rms, peak, samples.len() as f32 / rate as f32]
}

impl SpeakerEncoder for StatsSpeaker {
    fn model_id(&self) -> ModelId {
        id("stats")
    }
    fn dim(&self) -> usize {
        4
    }
    fn embed(&self, batch: &[AudioRef<'_>]) -> vaak_teachers::Result<Vec<ItemResult<Vec<f32>>>> {
        self.b.act("speaker")?;
        Ok(batch
            .iter()
            .map(|a| {
                if self.b.fail_rate == Some(a.sample_rate) {
                    return Err(TeacherError::BadInput(format!(
                        "speaker double told to fail {} Hz clips",
                        a.sample_rate
                    )));
                }
                Ok(clip_stats(a.samples, a.sample_rate))
            })
            .collect())
    }
}

pub struct SineTts {
    b: Behaviour,
    calls: Arc<Calls>,
}

pub fn sine(seconds: f64, rate: u32, freq: f32, amp: f32) -> Vec<f32> {
    let n = (seconds * rate as f64).round() as usize;
    (0..n)
        .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
        .collect()
}

impl Tts for SineTts {
    fn model_id(&self) -> ModelId {
        id("sine")
    }
    fn supports(&self, lang: Lang) -> bool {
        matches!(lang, Lang::En | Lang::Ru)
    }
    fn synthesize(
        &self,
        batch: &[TtsRequest<'_>],
    ) -> vaak_teachers::Result<Vec<ItemResult<Speech>>> {
        self.calls
            .tts_max_batch
            .fetch_max(batch.len(), Ordering::SeqCst);
        self.calls.tts_without_reference.fetch_add(
            batch.iter().filter(|r| r.reference.is_none()).count(),
            Ordering::SeqCst,
        );
        self.b.act("tts")?;
        Ok(batch
            .iter()
            .map(|r| {
                if self.b.needs_reference && r.reference.is_none() {
                    return Err(TeacherError::BadInput(
                        "no reference clip (a voice-preserving TTS needs one)".into(),
                    ));
                }
                Ok(Speech {
                    samples: sine(
                        r.text.chars().count() as f64 * TTS_SECONDS_PER_CHAR,
                        24_000,
                        220.0,
                        0.5,
                    ),
                    sample_rate: 24_000,
                })
            })
            .collect())
    }
}

pub struct FrameCodec {
    b: Behaviour,
}

impl TokenCodec for FrameCodec {
    fn model_id(&self) -> ModelId {
        id("frames")
    }
    fn num_codebooks(&self) -> usize {
        2
    }
    fn sample_rate(&self) -> u32 {
        24_000
    }
    fn encode(
        &self,
        batch: &[AudioRef<'_>],
    ) -> vaak_teachers::Result<Vec<ItemResult<Vec<Vec<u32>>>>> {
        self.b.act("codec")?;
        Ok(batch.iter().map(|a| Ok(frame_codes(a.samples))).collect())
    }
}

pub fn frame_codes(samples: &[f32]) -> Vec<Vec<u32>> {
    let mut rms_row = Vec::new();
    let mut zc_row = Vec::new();
    for f in samples.chunks(CODEC_FRAME) {
        let rms = (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt();
        rms_row.push((rms * 1000.0) as u32 % 1024);
        zc_row.push(
            f.windows(2)
                .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                .count() as u32,
        );
    }
    vec![rms_row, zc_row]
}

/// Builds the doubles for kinds `test-asr`, `test-reverse`, `test-stats`, `test-sine`,
/// `test-frames`; anything else is refused like an unknown real kind would be.
#[derive(Default, Clone)]
pub struct DoubleFactory {
    pub calls: Arc<Calls>,
}

fn want(spec: &ModelSpec, kind: &str) -> Result<Behaviour, String> {
    if spec.kind == kind {
        Ok(Behaviour::from(spec))
    } else {
        Err(format!("unknown kind (test factory knows '{kind}')"))
    }
}

impl TeacherFactory for DoubleFactory {
    fn asr(&self, spec: &ModelSpec, _d: &candle_core::Device) -> Result<Arc<dyn Asr>, String> {
        Ok(Arc::new(DoubleAsr {
            b: want(spec, "test-asr")?,
            calls: self.calls.clone(),
        }))
    }
    fn translator(
        &self,
        spec: &ModelSpec,
        _d: &candle_core::Device,
    ) -> Result<Arc<dyn Translator>, String> {
        Ok(Arc::new(ReverseTranslator {
            b: want(spec, "test-reverse")?,
        }))
    }
    fn speaker(
        &self,
        spec: &ModelSpec,
        _d: &candle_core::Device,
    ) -> Result<Arc<dyn SpeakerEncoder>, String> {
        Ok(Arc::new(StatsSpeaker {
            b: want(spec, "test-stats")?,
        }))
    }
    fn tts(&self, spec: &ModelSpec, _d: &candle_core::Device) -> Result<Arc<dyn Tts>, String> {
        Ok(Arc::new(SineTts {
            b: want(spec, "test-sine")?,
            calls: self.calls.clone(),
        }))
    }
    fn codec(
        &self,
        spec: &ModelSpec,
        _d: &candle_core::Device,
    ) -> Result<Arc<dyn TokenCodec>, String> {
        Ok(Arc::new(FrameCodec {
            b: want(spec, "test-frames")?,
        }))
    }
}

/// A config YAML using the doubles, rooted in `root` (data under `root/data`, output under
/// `root/out`, manifest `root/manifest.csv`). `extra` is appended verbatim under `models`-free
/// top level keys, e.g. batch sizes.
pub fn config_yaml(root: &Path, models_extra: &str, extra: &str) -> String {
    format!(
        r#"data_root: {data}
output_root: {out}
manifests:
  ru: {manifest}
  en: null
pipeline:
  min_duration: 1.0
  max_duration: 20.0
  direction: ruen
  tier: Gold
  min_token_frames: 5
compute:
  num_workers: 3
  device: cpu
  log_interval: 5
  queue_depth: 8
  progress_bar: false
models:
  asr: {{kind: test-asr}}
  translator: {{kind: test-reverse}}
  speaker: {{kind: test-stats}}
  tts: {{kind: test-sine{models_extra}}}
  codec: {{kind: test-frames}}
{extra}"#,
        data = yaml_str(&root.join("data")),
        out = yaml_str(&root.join("out")),
        manifest = yaml_str(&root.join("manifest.csv")),
    )
}

fn yaml_str(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap()
}

/// Writes a 16 kHz PCM16 sine clip under `data_root/rel` (creating directories).
pub fn write_clip(data_root: &Path, rel: &str, seconds: f64, amp: f32) {
    let p = data_root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    write_wav(
        &p,
        &sine(seconds, 16_000, 330.0, amp),
        16_000,
        WavFormat::Pcm16,
    )
    .unwrap();
}

/// One Golos-layout manifest line: `id,lang,dataset,split,audio_path,duration_s,text,tier,tier_rank`.
pub fn ru_line(id: &str, audio_path: &str, dur: f64) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!(
        "{},ru,golos,train,{},{dur},\"текст\",Gold,1\n",
        q(id),
        q(audio_path)
    )
}

pub const RU_HEADER: &str = "id,lang,dataset,split,audio_path,duration_s,text,tier,tier_rank\n";
