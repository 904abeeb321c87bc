//! `vaak data synth`: a seeded synthetic speech corpus in en/ru/hi/te from espeak-ng's voices
//! and variants ([`voices`]) reading sentences ([`text`]) built from Debian word lists
//! ([`wordlist`]). It feeds codec training and tests, and stands in for speech in a language
//! with little recorded data (Telugu). Here, not in `vaak-data`, because it speaks through the
//! teachers' `EspeakTts`; its manifests are `vaak_data::manifest`'s format.
//! [`pairs`] makes source/target speech pairs (translations, questions and answers) in the
//! cascade's parallel layout instead (`vaak data synth --parallel` / `--dialogue`).
//!
//! Utterance `i` is fixed by `(seed, i)` alone: its language is `langs[i % langs.len()]` (so the
//! languages take turns), and a ChaCha8 stream seeded from `(seed, i)` draws its sentence
//! ([`text`]) and voice ([`voices`]). The number of worker processes, the order
//! they finish in and earlier interrupted runs therefore change nothing: the same settings give
//! the same manifest, byte for byte.
//!
//! Output under `out`:
//! - `wav/<id>.wav`: mono PCM16 at `sample_rate` (espeak-ng's 22.05 kHz resampled), written to a
//!   temporary file and renamed, so a present file is a complete one;
//! - `manifest.jsonl`: one JSON object per utterance (`id`, `audio_path` relative to `out`,
//!   `duration_s`, `text`, `lang`, `voice`, `rate_wpm`, `pitch`, `seed`, `template`);
//! - `manifest.csv`: the same rows with the columns `vaak cascade` reads (`id`, `lang`,
//!   `audio_path`, `duration_s`, `text`, ...), with `data_root` = `out`;
//! - `synth.json`: the settings that fix the content (seed, languages, rate, word lists). A
//!   second run into the same `out` must agree with them; then it resumes, reading the duration
//!   of each WAV already there instead of synthesising it again.
//!
//! With a target in hours, utterances are taken in index order until their total duration
//! reaches it; WAVs synthesised past that point in the last parallel window (at most
//! `4 * jobs - 1`) stay on disk for a later, longer run, but are not in the manifest. With a
//! target in utterances nothing past the target is synthesised.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vaak_data::Lang;
use vaak_teachers::tts::{EspeakConfig, EspeakTts};

pub mod error;
pub mod pairs;
pub mod text;
pub mod voices;
pub mod wordlist;

pub use error::{Result, SynthError};
use text::Template;
use wordlist::WordList;

/// How much to make.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Hours(f64),
    Utterances(usize),
}

/// Settings of [`synthesize`].
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub out: PathBuf,
    pub langs: Vec<Lang>,
    pub target: Target,
    pub seed: u64,
    /// espeak-ng processes at once (>= 1).
    pub jobs: usize,
    pub sample_rate: u32,
    /// Word list files replacing the Debian defaults.
    pub wordlists: HashMap<Lang, PathBuf>,
    /// The espeak-ng program.
    pub program: PathBuf,
    pub progress: bool,
}

impl SynthConfig {
    pub fn new(out: impl Into<PathBuf>, target: Target) -> Self {
        Self {
            out: out.into(),
            langs: Lang::ALL.to_vec(),
            target,
            seed: 0,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            sample_rate: 16_000,
            wordlists: HashMap::new(),
            program: "espeak-ng".into(),
            progress: false,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.langs.is_empty() {
            return Err(SynthError::arg("langs", "no language given"));
        }
        let mut seen = self.langs.clone();
        seen.sort_by_key(|l| l.code());
        seen.dedup();
        if seen.len() != self.langs.len() {
            return Err(SynthError::arg("langs", "a language is listed twice"));
        }
        match self.target {
            Target::Hours(h) if !(h.is_finite() && h > 0.0) => {
                return Err(SynthError::arg(
                    "hours",
                    format!("{h} is not a positive number"),
                ))
            }
            Target::Utterances(0) => return Err(SynthError::arg("utterances", "must be > 0")),
            _ => {}
        }
        if self.jobs == 0 {
            return Err(SynthError::arg("jobs", "must be >= 1"));
        }
        if !(8_000..=48_000).contains(&self.sample_rate) {
            return Err(SynthError::arg(
                "sample-rate",
                format!("{} Hz is outside 8000..=48000", self.sample_rate),
            ));
        }
        for l in self.wordlists.keys() {
            if !self.langs.contains(l) {
                return Err(SynthError::arg(
                    "wordlist",
                    format!("a word list for '{l}', which is not in --langs"),
                ));
            }
        }
        Ok(())
    }
}

/// One manifest row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    pub id: String,
    /// Relative to the output directory, `/`-separated.
    pub audio_path: String,
    pub duration_s: f64,
    pub text: String,
    pub lang: String,
    pub voice: String,
    pub rate_wpm: u32,
    pub pitch: u32,
    /// The seed of this utterance's own random stream.
    pub seed: u64,
    pub template: Template,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SynthSummary {
    pub utterances: usize,
    pub hours: f64,
    /// Utterances whose WAV was already there.
    pub reused: usize,
    pub synthesized: usize,
    /// Utterances espeak-ng failed on (left out of the manifest; see the log).
    pub failed: usize,
    pub per_lang: BTreeMap<String, LangStats>,
    pub manifest_jsonl: PathBuf,
    pub manifest_csv: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LangStats {
    pub utterances: usize,
    pub hours: f64,
    pub voices: usize,
}

/// The settings that fix a corpus's content (`synth.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    seed: u64,
    langs: Vec<String>,
    sample_rate: u32,
    espeak_version: String,
    /// `lang -> word list digest` (hex).
    wordlists: BTreeMap<String, String>,
}

/// The seed of utterance `i`'s stream (SplitMix64 of the pair, so neighbours are unrelated).
pub fn item_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Everything about utterance `i` except its audio.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub index: usize,
    pub id: String,
    pub lang: Lang,
    pub text: String,
    pub template: Template,
    pub voice: voices::VoiceDraw,
    pub seed: u64,
}

/// Plans utterance `i` (pure: see the module doc).
pub fn plan(seed: u64, i: usize, langs: &[Lang], lists: &HashMap<Lang, WordList>) -> Planned {
    let lang = langs[i % langs.len()];
    let s = item_seed(seed, i as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(s);
    let (text, template) = text::sentence(&mut rng, &lists[&lang]);
    let voice = voices::draw(&mut rng, lang);
    Planned {
        index: i,
        id: format!("synth-s{seed}-{i:07}-{}", lang.code()),
        lang,
        text,
        template,
        voice,
        seed: s,
    }
}

/// Utterances per parallel window, per job.
const WINDOW_PER_JOB: usize = 4;
/// Above this share of failed utterances the run stops (something is wrong with espeak-ng).
const MAX_FAILED_FRACTION: f64 = 0.05;

/// Writes (or completes) the corpus described by `cfg`.
pub fn synthesize(cfg: &SynthConfig) -> Result<SynthSummary> {
    cfg.validate()?;
    let mut lists = HashMap::new();
    for &l in &cfg.langs {
        lists.insert(
            l,
            WordList::load(l, cfg.wordlists.get(&l).map(PathBuf::as_path))?,
        );
    }
    voices::check_variants(&cfg.program)?;
    let tts = EspeakTts::new(EspeakConfig {
        program: cfg.program.clone(),
        output_rate: cfg.sample_rate,
        max_concurrency: 1,
        ..EspeakConfig::default()
    })
    .map_err(|e| SynthError::Espeak(e.to_string()))?;
    // Every language voice is tried once, in parallel, so a missing one fails here.
    let bases: Vec<(Lang, &str)> = cfg
        .langs
        .iter()
        .flat_map(|&l| voices::base_voices(l).iter().map(move |&b| (l, b)))
        .collect();
    let probes: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = bases
            .iter()
            .map(|&(l, b)| {
                let tts = &tts;
                s.spawn(move || (l, b, tts.synthesize_voice("a", b, 175, 50)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (l, base, r) in probes {
        r.map_err(|e| SynthError::Espeak(format!("voice '{base}' ({l}) does not work: {e}")))?;
    }

    let wav_dir = cfg.out.join("wav");
    std::fs::create_dir_all(&wav_dir).map_err(|e| SynthError::io(&wav_dir, e))?;
    let fp = Fingerprint {
        seed: cfg.seed,
        langs: cfg.langs.iter().map(|l| l.code().to_string()).collect(),
        sample_rate: cfg.sample_rate,
        espeak_version: tts.version().to_string(),
        wordlists: cfg
            .langs
            .iter()
            .map(|l| (l.code().to_string(), format!("{:016x}", lists[l].digest())))
            .collect(),
    };
    check_fingerprint(&cfg.out, &fp)?;

    let bar = progress_bar(cfg);
    let window = cfg.jobs * WINDOW_PER_JOB;
    let mut rows: Vec<Utterance> = Vec::new();
    let mut summary = SynthSummary::default();
    let mut total_s = 0.0;
    let mut next = 0usize;
    'outer: loop {
        // With a count target, never synthesise past it (a later run may ask for more).
        let take = match cfg.target {
            Target::Utterances(n) => window.min(n - rows.len()),
            Target::Hours(_) => window,
        };
        let planned: Vec<Planned> = (next..next + take)
            .map(|i| plan(cfg.seed, i, &cfg.langs, &lists))
            .collect();
        next += take;
        let results = run_window(cfg, &tts, &wav_dir, &planned);
        for (p, r) in planned.iter().zip(results) {
            match r {
                Ok((dur, reused)) => {
                    if reused {
                        summary.reused += 1;
                    } else {
                        summary.synthesized += 1;
                    }
                    total_s += dur;
                    rows.push(Utterance {
                        id: p.id.clone(),
                        audio_path: format!("wav/{}.wav", p.id),
                        duration_s: dur,
                        text: p.text.clone(),
                        lang: p.lang.code().to_string(),
                        voice: p.voice.voice.clone(),
                        rate_wpm: p.voice.rate_wpm,
                        pitch: p.voice.pitch,
                        seed: p.seed,
                        template: p.template,
                    });
                    match cfg.target {
                        Target::Hours(_) => bar.set_position(total_s as u64),
                        Target::Utterances(_) => bar.set_position(rows.len() as u64),
                    }
                }
                Err(e) => {
                    summary.failed += 1;
                    tracing::warn!("{} ({}, voice {}): {e}", p.id, p.text, p.voice.voice);
                }
            }
            let done = match cfg.target {
                Target::Hours(h) => total_s >= h * 3600.0,
                Target::Utterances(n) => rows.len() >= n,
            };
            if done {
                break 'outer;
            }
        }
        let tried = summary.failed + rows.len();
        if summary.failed > 0 && summary.failed as f64 > MAX_FAILED_FRACTION * tried as f64 {
            return Err(SynthError::Espeak(format!(
                "{} of the first {tried} utterances failed (see the log); stopping",
                summary.failed
            )));
        }
    }
    bar.finish_and_clear();

    summary.utterances = rows.len();
    summary.hours = total_s / 3600.0;
    for r in &rows {
        let s = summary.per_lang.entry(r.lang.clone()).or_default();
        s.utterances += 1;
        s.hours += r.duration_s / 3600.0;
    }
    for (lang, s) in summary.per_lang.iter_mut() {
        let mut v: Vec<&str> = rows
            .iter()
            .filter(|r| &r.lang == lang)
            .map(|r| r.voice.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        s.voices = v.len();
    }
    summary.manifest_jsonl = cfg.out.join("manifest.jsonl");
    summary.manifest_csv = cfg.out.join("manifest.csv");
    write_manifests(&rows, &summary.manifest_jsonl, &summary.manifest_csv)?;
    Ok(summary)
}

fn progress_bar(cfg: &SynthConfig) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let (len, unit) = match cfg.target {
        Target::Hours(h) => ((h * 3600.0).ceil() as u64, "s audio"),
        Target::Utterances(n) => (n as u64, "utt"),
    };
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {unit} ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    b
}

/// Synthesises (or reuses) one window of utterances on `cfg.jobs` threads, each running one
/// espeak-ng process at a time. Returns `(duration_s, reused)` per utterance, in order.
fn run_window(
    cfg: &SynthConfig,
    tts: &EspeakTts,
    wav_dir: &Path,
    planned: &[Planned],
) -> Vec<std::result::Result<(f64, bool), String>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![None; planned.len()]);
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.min(planned.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = planned.get(k) else { return };
                let r = one(cfg, tts, wav_dir, p);
                results.lock().expect("no panics while held")[k] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("no panics while held")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("worker did not run".into())))
        .collect()
}

fn one(
    cfg: &SynthConfig,
    tts: &EspeakTts,
    wav_dir: &Path,
    p: &Planned,
) -> std::result::Result<(f64, bool), String> {
    let path = wav_dir.join(format!("{}.wav", p.id));
    if path.exists() {
        match vaak_audio::io::probe_info(&path) {
            Ok(info) if info.sample_rate == cfg.sample_rate && info.n_frames.unwrap_or(0) > 0 => {
                let n = info.n_frames.unwrap_or(0);
                return Ok((n as f64 / f64::from(cfg.sample_rate), true));
            }
            Ok(_) | Err(_) => {
                tracing::warn!("{}: unreadable or wrong rate; redoing it", path.display())
            }
        }
    }
    let sp = tts
        .synthesize_voice(&p.text, &p.voice.voice, p.voice.rate_wpm, p.voice.pitch)
        .map_err(|e| e.to_string())?;
    vaak_audio::io::write_wav(
        &path,
        &sp.samples,
        sp.sample_rate,
        vaak_audio::io::WavFormat::Pcm16,
    )
    .map_err(|e| e.to_string())?;
    Ok((sp.samples.len() as f64 / f64::from(sp.sample_rate), false))
}

fn check_fingerprint(out: &Path, fp: &Fingerprint) -> Result<()> {
    let path = out.join("synth.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old: Fingerprint =
                serde_json::from_slice(&bytes).map_err(|e| SynthError::SettingsMismatch {
                    out: out.to_path_buf(),
                    reason: format!("unreadable synth.json: {e}"),
                })?;
            if &old != fp {
                return Err(SynthError::SettingsMismatch {
                    out: out.to_path_buf(),
                    reason: format!(
                        "synth.json has {}, this run {}",
                        serde_json::to_string(&old).unwrap_or_default(),
                        serde_json::to_string(fp).unwrap_or_default()
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_vec_pretty(fp).expect("fingerprint serialises");
            write_atomic(&path, &text)
        }
        Err(e) => Err(SynthError::io(&path, e)),
    }
}

/// Writes `bytes` atomically ([`vaak_data::atomic`]); the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    vaak_data::atomic::write_atomic_io(path, bytes).map_err(|e| SynthError::io(path, e))
}

fn write_manifests(rows: &[Utterance], jsonl: &Path, csv_path: &Path) -> Result<()> {
    let mut j = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut j, r).expect("row serialises");
        j.push(b'\n');
    }
    write_atomic(jsonl, &j)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| SynthError::io(csv_path, std::io::Error::other(e));
    w.write_record([
        "id",
        "lang",
        "audio_path",
        "duration_s",
        "text",
        "voice",
        "rate_wpm",
        "pitch",
        "seed",
        "template",
    ])
    .map_err(csv_err)?;
    for r in rows {
        let template = serde_json::to_value(r.template)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        w.write_record([
            r.id.as_str(),
            r.lang.as_str(),
            r.audio_path.as_str(),
            &r.duration_s.to_string(),
            r.text.as_str(),
            r.voice.as_str(),
            &r.rate_wpm.to_string(),
            &r.pitch.to_string(),
            &r.seed.to_string(),
            &template,
        ])
        .map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| SynthError::io(csv_path, std::io::Error::other(e.to_string())))?;
    write_atomic(csv_path, &bytes)
}

/// Parses `en,ru,hi,te`.
pub fn parse_langs(s: &str) -> Result<Vec<Lang>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|c| {
            Lang::ALL
                .iter()
                .copied()
                .find(|l| l.code() == c)
                .ok_or_else(|| {
                    SynthError::arg("langs", format!("unknown language '{c}' (en, ru, hi, te)"))
                })
        })
        .collect()
}

/// Parses `lang=path` for `--wordlist`.
pub fn parse_wordlist_arg(s: &str) -> Result<(Lang, PathBuf)> {
    let (l, p) = s
        .split_once('=')
        .ok_or_else(|| SynthError::arg("wordlist", format!("'{s}' is not LANG=PATH")))?;
    let lang = parse_langs(l)?;
    match (lang.as_slice(), p.trim()) {
        ([one], p) if !p.is_empty() => Ok((*one, PathBuf::from(p))),
        _ => Err(SynthError::arg(
            "wordlist",
            format!("'{s}' is not LANG=PATH"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_seeds_differ_and_are_stable() {
        assert_eq!(item_seed(1, 5), item_seed(1, 5));
        assert_ne!(item_seed(1, 5), item_seed(1, 6));
        assert_ne!(item_seed(1, 5), item_seed(2, 5));
        assert_ne!(item_seed(0, 0), 0);
    }

    #[test]
    fn arguments_are_parsed_or_named_in_the_error() {
        assert_eq!(parse_langs("en, te").unwrap(), [Lang::En, Lang::Te]);
        assert!(parse_langs("en,xx")
            .unwrap_err()
            .to_string()
            .contains("'xx'"));
        let (l, p) = parse_wordlist_arg("ru=/tmp/w.txt").unwrap();
        assert_eq!((l, p), (Lang::Ru, PathBuf::from("/tmp/w.txt")));
        assert!(parse_wordlist_arg("ru").is_err());
        assert!(parse_wordlist_arg("ru=").is_err());
        let bad = |f: fn(&mut SynthConfig)| {
            let mut c = SynthConfig::new("/tmp/x", Target::Utterances(4));
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.langs.clear()).contains("langs"));
        assert!(bad(|c| c.langs = vec![Lang::En, Lang::En]).contains("twice"));
        assert!(bad(|c| c.target = Target::Hours(-1.0)).contains("hours"));
        assert!(bad(|c| c.target = Target::Hours(f64::NAN)).contains("hours"));
        assert!(bad(|c| c.target = Target::Utterances(0)).contains("utterances"));
        assert!(bad(|c| c.jobs = 0).contains("jobs"));
        assert!(bad(|c| c.sample_rate = 100).contains("sample-rate"));
        assert!(bad(|c| {
            c.langs = vec![Lang::En];
            c.wordlists.insert(Lang::Te, "/x".into());
        })
        .contains("wordlist"));
    }
}
