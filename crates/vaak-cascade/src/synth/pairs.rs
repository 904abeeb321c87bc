//! `vaak data synth --parallel` / `--dialogue`: seeded source/target speech pairs from
//! espeak-ng, written in the cascade's parallel layout (`vaak_data::parallel`) so the S2S
//! trainer's paired stage reads them unchanged.
//!
//! - Parallel (`--direction ruen`): source and target say the same thing in two languages: a
//!   number ("число 42" / "number 42"), a day-month date ("12 марта" / "12 March"), a clock
//!   time ("Сейчас 9:15." / "The time is 9:15.") or one of [`PHRASES`]. Numbers and dates are written with digits, which espeak-ng reads out in the
//!   voice's language.
//! - Dialogue (`--langs en,ru`, directions `enen`, `ruru`, ...): the source is a question, the
//!   target its answer in the same language: small sums drawn from the seed, "today is Monday,
//!   what day is tomorrow", and a few fixed exchanges ([`FIXED_QA`]).
//!
//! Item `i` is fixed by `(seed, i)` alone (its language in dialogue mode is
//! `langs[i % langs.len()]`), so the job count changes nothing: the same settings give the same
//! files, byte for byte. Each sample goes through `vaak_data::parallel::write_sample` (temp
//! directory, rename, `DONE` last); a sample whose directory has `DONE` is skipped, so a killed
//! run resumes where it stopped.
//!
//! Voices: the source voice is drawn as in [`super::voices::draw`]. In parallel mode the target
//! speaks with the target language's first base voice and the *same variant, rate and pitch*,
//! so one source speaker maps to one target voice. In dialogue mode the answer is spoken by a
//! second voice drawn from the same stream. `spk.npy` is a 192-d float32 unit vector drawn from
//! a seed derived from the target voice name: a **voice id**, equal for equal voices and
//! unrelated otherwise, not an ECAPA speaker embedding. `tokens.npy` is empty (`[0, 0]`): the
//! trainer then encodes `tgt.wav` with its own codec.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Map};
use vaak_data::parallel::{self as layout, SampleOutput, SourceAudio, SrcAudioMode};
use vaak_data::Lang;
use vaak_teachers::tts::{EspeakConfig, EspeakTts};

use super::error::{Result, SynthError};
use super::{item_seed, text, voices};

/// Dimension of the `spk.npy` voice id (the size of the cascade's speaker embeddings).
pub const VOICE_ID_DIM: usize = 192;

/// What pairs to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairMode {
    /// Translation pairs from `src` to `tgt` (different languages).
    Parallel { src: Lang, tgt: Lang },
    /// Question → answer in each language (directions `enen`, `ruru`, ...).
    Dialogue { langs: Vec<Lang> },
}

/// Settings of [`synthesize_pairs`].
#[derive(Clone, Debug)]
pub struct PairConfig {
    /// Output root: samples go to `<out>/data/parallel/<direction>/<id>/`.
    pub out: PathBuf,
    pub mode: PairMode,
    pub utterances: usize,
    pub seed: u64,
    pub jobs: usize,
    pub program: PathBuf,
    pub progress: bool,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PairSummary {
    pub samples: usize,
    pub written: usize,
    /// Samples already finished (`DONE`) by an earlier run.
    pub reused: usize,
    pub failed: usize,
    /// The directories holding the samples (`--data` for `vaak train s2s` is `<out>/data`).
    pub directions: Vec<PathBuf>,
}

/// Parses a direction such as `ruen` into its two languages (which must differ).
pub fn parse_direction(s: &str) -> Result<(Lang, Lang)> {
    let bad = || {
        SynthError::arg(
            "direction",
            format!("'{s}' is not SRCTGT of two different languages of en, ru, hi, te (e.g. ruen)"),
        )
    };
    let s = s.trim();
    if s.len() != 4 || !s.is_ascii() {
        return Err(bad());
    }
    let (a, b) = s.split_at(2);
    let a: Lang = a.parse().map_err(|_| bad())?;
    let b: Lang = b.parse().map_err(|_| bad())?;
    if a == b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Greetings and everyday phrases: `[en, ru, hi, te]`.
pub const PHRASES: &[[&str; 4]] = &[
    ["Hello.", "Здравствуйте.", "नमस्ते।", "నమస్కారం."],
    ["Thank you.", "Спасибо.", "धन्यवाद।", "ధన్యవాదాలు."],
    ["Yes.", "Да.", "हाँ।", "అవును."],
    ["No.", "Нет.", "नहीं।", "కాదు."],
    ["Good morning.", "Доброе утро.", "सुप्रभात।", "శుభోదయం."],
    ["Good night.", "Спокойной ночи.", "शुभ रात्रि।", "శుభ రాత్రి."],
    ["Goodbye.", "До свидания.", "अलविदा।", "వీడ్కోలు."],
    ["How are you?", "Как дела?", "आप कैसे हैं?", "మీరు ఎలా ఉన్నారు?"],
    [
        "I am fine.",
        "У меня всё хорошо.",
        "मैं ठीक हूँ।",
        "నేను బాగున్నాను.",
    ],
    [
        "What is your name?",
        "Как вас зовут?",
        "आपका नाम क्या है?",
        "మీ పేరు ఏమిటి?",
    ],
    ["Please.", "Пожалуйста.", "कृपया।", "దయచేసి."],
    ["Sorry.", "Извините.", "माफ़ कीजिए।", "క్షమించండి."],
    ["Welcome.", "Добро пожаловать.", "स्वागत है।", "స్వాగతం."],
    ["I don't know.", "Я не знаю.", "मुझे नहीं पता।", "నాకు తెలియదు."],
    [
        "Where is the station?",
        "Где вокзал?",
        "स्टेशन कहाँ है?",
        "స్టేషన్ ఎక్కడ ఉంది?",
    ],
    ["Water.", "Вода.", "पानी।", "నీళ్ళు."],
    ["Very good.", "Очень хорошо.", "बहुत अच्छा।", "చాలా బాగుంది."],
    ["Today.", "Сегодня.", "आज।", "ఈరోజు."],
    ["Help!", "Помогите!", "मदद कीजिए!", "సహాయం చేయండి!"],
    [
        "Happy birthday!",
        "С днём рождения!",
        "जन्मदिन मुबारक!",
        "పుట్టినరోజు శుభాకాంక్షలు!",
    ],
    [
        "What time is it?",
        "Который час?",
        "कितने बजे हैं?",
        "సమయం ఎంత?",
    ],
    [
        "How much does it cost?",
        "Сколько это стоит?",
        "यह कितने का है?",
        "దీని ధర ఎంత?",
    ],
    [
        "I love you.",
        "Я тебя люблю.",
        "मैं तुमसे प्यार करता हूँ।",
        "నేను నిన్ను ప్రేమిస్తున్నాను.",
    ],
    [
        "Where are you from?",
        "Откуда вы?",
        "आप कहाँ से हैं?",
        "మీరు ఎక్కడి నుండి వచ్చారు?",
    ],
];

/// Fixed question → answer exchanges: `[(q, a); en, ru, hi, te]`.
pub const FIXED_QA: &[[(&str, &str); 4]] = &[
    [
        ("How are you?", "I am fine."),
        ("Как дела?", "У меня всё хорошо."),
        ("आप कैसे हैं?", "मैं ठीक हूँ।"),
        ("మీరు ఎలా ఉన్నారు?", "నేను బాగున్నాను."),
    ],
    [
        ("Hello.", "Hello."),
        ("Здравствуйте.", "Здравствуйте."),
        ("नमस्ते।", "नमस्ते।"),
        ("నమస్కారం.", "నమస్కారం."),
    ],
    [
        ("Good morning.", "Good morning."),
        ("Доброе утро.", "Доброе утро."),
        ("सुप्रभात।", "सुप्रभात।"),
        ("శుభోదయం.", "శుభోదయం."),
    ],
    [
        ("Thank you.", "You are welcome."),
        ("Спасибо.", "Пожалуйста."),
        ("धन्यवाद।", "कोई बात नहीं।"),
        ("ధన్యవాదాలు.", "పర్వాలేదు."),
    ],
];

const DAYS: [[&str; 7]; 4] = [
    [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ],
    [
        "понедельник",
        "вторник",
        "среда",
        "четверг",
        "пятница",
        "суббота",
        "воскресенье",
    ],
    [
        "सोमवार",
        "मंगलवार",
        "बुधवार",
        "गुरुवार",
        "शुक्रवार",
        "शनिवार",
        "रविवार",
    ],
    [
        "సోమవారం",
        "మంగళవారం",
        "బుధవారం",
        "గురువారం",
        "శుక్రవారం",
        "శనివారం",
        "ఆదివారం",
    ],
];

fn li(l: Lang) -> usize {
    match l {
        Lang::En => 0,
        Lang::Ru => 1,
        Lang::Hi => 2,
        Lang::Te => 3,
    }
}

/// "number N" in `l` (a word in the language's script, then digits).
fn number(l: Lang, n: u32) -> String {
    match l {
        Lang::En => format!("Number {n}."),
        Lang::Ru => format!("Число {n}."),
        Lang::Hi => format!("संख्या {n}।"),
        Lang::Te => format!("సంఖ్య {n}."),
    }
}

fn date(l: Lang, day: usize, month: usize) -> String {
    let m = text::months(l)[month];
    let stop = if l == Lang::Hi { "।" } else { "." };
    format!("{day} {m}{stop}")
}

/// Minutes of [`time`]: espeak-ng reads `7:00` as "seven zero zero", so never `:00`.
const TIME_MINUTES: [u32; 7] = [10, 15, 20, 30, 40, 45, 50];

/// "the time is H:MM" in `l` (espeak-ng reads `9:15` as "nine fifteen" in each language).
fn time(l: Lang, h: u32, m: u32) -> String {
    match l {
        Lang::En => format!("The time is {h}:{m:02}."),
        Lang::Ru => format!("Сейчас {h}:{m:02}."),
        Lang::Hi => format!("समय {h}:{m:02} है।"),
        Lang::Te => format!("సమయం {h}:{m:02}."),
    }
}

/// One parallel item's texts and kind.
pub fn parallel_texts<R: Rng>(rng: &mut R, src: Lang, tgt: Lang) -> (String, String, &'static str) {
    match rng.random_range(0..5u32) {
        0 => {
            let n = if rng.random_bool(0.5) {
                rng.random_range(0..=100)
            } else {
                rng.random_range(101..=9999)
            };
            (number(src, n), number(tgt, n), "number")
        }
        1 => {
            let (d, m) = (rng.random_range(1..=28), rng.random_range(0..12));
            (date(src, d, m), date(tgt, d, m), "date")
        }
        2 => {
            let h = rng.random_range(1..=12u32);
            let m = TIME_MINUTES[rng.random_range(0..TIME_MINUTES.len())];
            (time(src, h, m), time(tgt, h, m), "time")
        }
        _ => {
            let p = &PHRASES[rng.random_range(0..PHRASES.len())];
            (p[li(src)].to_string(), p[li(tgt)].to_string(), "phrase")
        }
    }
}

/// One dialogue item's question, answer and kind.
pub fn dialogue_texts<R: Rng>(rng: &mut R, l: Lang) -> (String, String, &'static str) {
    match rng.random_range(0..3u32) {
        0 => {
            let (a, b) = (rng.random_range(1..=20u32), rng.random_range(1..=20u32));
            let s = a + b;
            let (q, ans) = match l {
                Lang::En => (
                    format!("What is {a} plus {b}?"),
                    format!("The answer is {s}."),
                ),
                Lang::Ru => (
                    format!("Сколько будет {a} плюс {b}?"),
                    format!("Ответ {s}."),
                ),
                Lang::Hi => (format!("{a} और {b} का योग क्या है?"), format!("उत्तर {s} है।")),
                Lang::Te => (format!("{a} మరియు {b} కలిపితే ఎంత?"), format!("సమాధానం {s}.")),
            };
            (q, ans, "sum")
        }
        1 => {
            let d = rng.random_range(0..7);
            let days = &DAYS[li(l)];
            let (today, tomorrow) = (days[d], days[(d + 1) % 7]);
            let (q, a) = match l {
                Lang::En => (
                    format!("Today is {today}. What day is tomorrow?"),
                    format!("Tomorrow is {tomorrow}."),
                ),
                Lang::Ru => (
                    format!("Сегодня {today}. Какой завтра день?"),
                    format!("Завтра {tomorrow}."),
                ),
                Lang::Hi => (
                    format!("आज {today} है। कल कौन सा दिन है?"),
                    format!("कल {tomorrow} है।"),
                ),
                Lang::Te => (
                    format!("ఈరోజు {today}. రేపు ఏ రోజు?"),
                    format!("రేపు {tomorrow}."),
                ),
            };
            (q, a, "next_day")
        }
        _ => {
            let (q, a) = FIXED_QA[rng.random_range(0..FIXED_QA.len())][li(l)];
            (q.to_string(), a.to_string(), "fixed")
        }
    }
}

/// The `spk.npy` voice id of `voice` (e.g. `en-us+f3`): a seeded 192-d unit vector.
pub fn voice_id(voice: &str) -> Vec<f32> {
    // FNV-1a of the name: stable across platforms and releases.
    let h = voice.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let v: Vec<f32> = (0..VOICE_ID_DIM)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / norm).collect()
}

/// Everything about item `i` except its audio.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPair {
    pub index: usize,
    pub id: String,
    pub direction: String,
    pub src_lang: Lang,
    pub tgt_lang: Lang,
    pub src_text: String,
    pub tgt_text: String,
    pub kind: &'static str,
    pub src_voice: voices::VoiceDraw,
    pub tgt_voice: voices::VoiceDraw,
}

/// Plans item `i` (pure: see the module doc).
pub fn plan_pair(seed: u64, i: usize, mode: &PairMode) -> PlannedPair {
    let mut rng = ChaCha8Rng::seed_from_u64(item_seed(seed ^ 0x7061_6972, i as u64));
    let (src, tgt) = match mode {
        PairMode::Parallel { src, tgt } => (*src, *tgt),
        PairMode::Dialogue { langs } => {
            let l = langs[i % langs.len()];
            (l, l)
        }
    };
    let (src_text, tgt_text, kind) = match mode {
        PairMode::Parallel { .. } => parallel_texts(&mut rng, src, tgt),
        PairMode::Dialogue { .. } => dialogue_texts(&mut rng, src),
    };
    let src_voice = voices::draw(&mut rng, src);
    let tgt_voice = match mode {
        PairMode::Parallel { .. } => {
            let variant = src_voice.voice.split_once('+').map(|(_, v)| v);
            let base = voices::base_voices(tgt)[0];
            voices::VoiceDraw {
                voice: variant.map_or(base.to_string(), |v| format!("{base}+{v}")),
                ..src_voice.clone()
            }
        }
        PairMode::Dialogue { .. } => voices::draw(&mut rng, tgt),
    };
    let direction = format!("{}{}", src.code(), tgt.code());
    PlannedPair {
        index: i,
        id: format!("synth-{direction}-s{seed}-{i:07}"),
        direction,
        src_lang: src,
        tgt_lang: tgt,
        src_text,
        tgt_text,
        kind,
        src_voice,
        tgt_voice,
    }
}

/// Writes (or completes) the pairs described by `cfg`.
pub fn synthesize_pairs(cfg: &PairConfig) -> Result<PairSummary> {
    if cfg.utterances == 0 {
        return Err(SynthError::arg("utterances", "must be > 0"));
    }
    if cfg.jobs == 0 {
        return Err(SynthError::arg("jobs", "must be >= 1"));
    }
    let langs: Vec<Lang> = match &cfg.mode {
        PairMode::Parallel { src, tgt } if src == tgt => {
            return Err(SynthError::arg(
                "direction",
                "source and target language are the same (use --dialogue)",
            ))
        }
        PairMode::Parallel { src, tgt } => vec![*src, *tgt],
        PairMode::Dialogue { langs } if langs.is_empty() => {
            return Err(SynthError::arg("langs", "no language given"))
        }
        PairMode::Dialogue { langs } => langs.clone(),
    };
    voices::check_variants(&cfg.program)?;
    let tts = |rate| {
        EspeakTts::new(EspeakConfig {
            program: cfg.program.clone(),
            output_rate: rate,
            max_concurrency: 1,
            ..EspeakConfig::default()
        })
        .map_err(|e| SynthError::Espeak(e.to_string()))
    };
    let (src_tts, tgt_tts) = (tts(layout::SRC_SAMPLE_RATE)?, tts(layout::TGT_SAMPLE_RATE)?);
    for l in &langs {
        for b in voices::base_voices(*l) {
            src_tts
                .synthesize_voice("a", b, 175, 50)
                .map_err(|e| SynthError::Espeak(format!("voice '{b}' ({l}) does not work: {e}")))?;
        }
    }

    let bar = if cfg.progress {
        let b = indicatif::ProgressBar::new(cfg.utterances as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} pairs ETA {eta}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::result::Result<bool, String>>>> =
        Mutex::new(vec![None; cfg.utterances]);
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.min(cfg.utterances) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.utterances {
                    return;
                }
                let p = plan_pair(cfg.seed, i, &cfg.mode);
                let r = one_pair(cfg, &src_tts, &tgt_tts, &p);
                if let Err(e) = &r {
                    tracing::warn!("{} ({} → {}): {e}", p.id, p.src_text, p.tgt_text);
                }
                results.lock().expect("no panics while held")[i] = Some(r);
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let mut sum = PairSummary::default();
    for r in results.into_inner().expect("no panics while held") {
        match r {
            Some(Ok(true)) => sum.reused += 1,
            Some(Ok(false)) => sum.written += 1,
            _ => sum.failed += 1,
        }
    }
    sum.samples = sum.reused + sum.written;
    let mut dirs: Vec<PathBuf> = match &cfg.mode {
        PairMode::Parallel { src, tgt } => vec![format!("{}{}", src.code(), tgt.code())],
        PairMode::Dialogue { langs } => langs.iter().map(|l| format!("{0}{0}", l.code())).collect(),
    }
    .into_iter()
    .map(|d| layout::direction_dir(&cfg.out, &d))
    .filter(|d| d.is_dir())
    .collect();
    dirs.sort();
    sum.directions = dirs;
    if sum.failed > 0 {
        return Err(SynthError::Espeak(format!(
            "{} of {} pairs failed (see the log); run again to retry them",
            sum.failed, cfg.utterances
        )));
    }
    Ok(sum)
}

/// Writes item `p` unless finished; `Ok(true)`: it was already there.
fn one_pair(
    cfg: &PairConfig,
    src_tts: &EspeakTts,
    tgt_tts: &EspeakTts,
    p: &PlannedPair,
) -> std::result::Result<bool, String> {
    let parent = layout::direction_dir(&cfg.out, &p.direction);
    let safe = vaak_data::safe_id::safe_id(&p.id);
    if layout::is_done(&parent.join(&safe)) {
        return Ok(true);
    }
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let say = |tts: &EspeakTts, t: &str, v: &voices::VoiceDraw| {
        tts.synthesize_voice(t, &v.voice, v.rate_wpm, v.pitch)
            .map(|s| s.samples)
            .map_err(|e| e.to_string())
    };
    let src = say(src_tts, &p.src_text, &p.src_voice)?;
    let tgt = say(tgt_tts, &p.tgt_text, &p.tgt_voice)?;
    let src_s = src.len() as f64 / f64::from(layout::SRC_SAMPLE_RATE);
    let tgt_s = tgt.len() as f64 / f64::from(layout::TGT_SAMPLE_RATE);
    let fields: Vec<(String, String)> = vec![
        ("id".into(), p.id.clone()),
        ("lang".into(), p.src_lang.code().into()),
        ("text".into(), p.src_text.clone()),
        ("emotion".into(), "neutral".into()),
    ];
    let extra = Map::from_iter([
        ("status".to_string(), json!("ok")),
        ("emotion".to_string(), json!("neutral")),
        ("src_text".to_string(), json!(p.src_text)),
        ("tgt_text".to_string(), json!(p.tgt_text)),
        ("src_duration_s".to_string(), json!(src_s)),
        ("tgt_duration_s".to_string(), json!(tgt_s)),
        ("kind".to_string(), json!(p.kind)),
        (
            "synth".to_string(),
            json!({
                "mode": match cfg.mode { PairMode::Parallel { .. } => "parallel", PairMode::Dialogue { .. } => "dialogue" },
                "seed": cfg.seed,
                "index": p.index,
                "src_voice": p.src_voice.voice,
                "tgt_voice": p.tgt_voice.voice,
                "rate_wpm": [p.src_voice.rate_wpm, p.tgt_voice.rate_wpm],
                "pitch": [p.src_voice.pitch, p.tgt_voice.pitch],
                "speaker": p.tgt_voice.voice,
                "spk_npy": "voice id: seeded 192-d unit vector of the target voice name, not an ECAPA embedding",
            }),
        ),
    ]);
    let meta = layout::meta_json(
        &fields,
        &p.id,
        &safe,
        p.index as u64,
        &p.direction,
        p.src_lang.code(),
        p.tgt_lang.code(),
        extra,
    );
    let sample = SampleOutput {
        safe_id: safe,
        src: SourceAudio {
            path: PathBuf::new(),
            is_wav: false,
            decoded: src,
        },
        src_text: p.src_text.clone(),
        tgt_text: p.tgt_text.clone(),
        tgt_audio: tgt,
        speaker: voice_id(&p.tgt_voice.voice),
        tokens: Vec::new(),
        num_codebooks: 0,
        meta,
    };
    layout::write_sample(&parent, &sample, SrcAudioMode::Copy).map_err(|e| e.to_string())?;
    Ok(false)
}

/// The direction directory of a parallel run (`<out>/data/parallel/<src><tgt>`).
pub fn parallel_dir(out: &Path, src: Lang, tgt: Lang) -> PathBuf {
    layout::direction_dir(out, &format!("{}{}", src.code(), tgt.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_ok(s: &str, l: Lang) -> bool {
        let letters: Vec<char> = s.chars().filter(|c| c.is_alphabetic()).collect();
        !letters.is_empty()
            && letters.iter().all(|&c| match l {
                Lang::En => c.is_ascii_alphabetic(),
                Lang::Ru => ('\u{0400}'..='\u{04FF}').contains(&c),
                Lang::Hi => ('\u{0900}'..='\u{097F}').contains(&c),
                Lang::Te => ('\u{0C00}'..='\u{0C7F}').contains(&c),
            })
    }

    #[test]
    fn every_kind_comes_up_in_every_language_in_its_script() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for src in Lang::ALL {
            for tgt in Lang::ALL {
                let mut kinds = std::collections::BTreeSet::new();
                for _ in 0..200 {
                    let (a, b, k) = if src == tgt {
                        dialogue_texts(&mut rng, src)
                    } else {
                        parallel_texts(&mut rng, src, tgt)
                    };
                    assert!(script_ok(&a, src) && script_ok(&b, tgt), "{a} / {b}");
                    kinds.insert(k);
                }
                let want: &[&str] = if src == tgt {
                    &["fixed", "next_day", "sum"]
                } else {
                    &["date", "number", "phrase", "time"]
                };
                assert_eq!(kinds.into_iter().collect::<Vec<_>>(), want);
            }
        }
        for row in PHRASES {
            for l in Lang::ALL {
                assert!(script_ok(row[li(l)], l), "{}", row[li(l)]);
            }
        }
    }

    #[test]
    fn directions_parse_and_voice_ids_are_unit_and_distinct() {
        assert_eq!(parse_direction("ruen").unwrap(), (Lang::Ru, Lang::En));
        assert!(parse_direction("enen").is_err());
        assert!(parse_direction("rux").is_err());
        assert!(parse_direction("frfr").is_err());
        let a = voice_id("en-us+f3");
        assert_eq!(a.len(), VOICE_ID_DIM);
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(a, voice_id("en-us+f3"));
        assert_ne!(a, voice_id("en-us+m3"));
    }

    #[test]
    fn parallel_target_keeps_the_source_variant_and_dialogue_answers_sums() {
        let mode = PairMode::Parallel {
            src: Lang::Ru,
            tgt: Lang::En,
        };
        for i in 0..50 {
            let p = plan_pair(3, i, &mode);
            assert_eq!(p, plan_pair(3, i, &mode));
            let sv = p.src_voice.voice.split_once('+').map(|x| x.1);
            let tv = p.tgt_voice.voice.split_once('+').map(|x| x.1);
            assert_eq!(sv, tv);
            assert!(p.tgt_voice.voice.starts_with("en-us"));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut sums = 0;
        for _ in 0..60 {
            let (q, a, k) = dialogue_texts(&mut rng, Lang::En);
            if k == "sum" {
                sums += 1;
                let n: Vec<u32> = q
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|x| x.parse().ok())
                    .collect();
                assert_eq!(a, format!("The answer is {}.", n[0] + n[1]));
            }
        }
        assert!(sums > 5);
    }
}
