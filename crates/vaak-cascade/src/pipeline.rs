//! The batched, resumable run over one shard.
//!
//! Threads: `compute.num_workers` loaders check `DONE`, resolve and decode audio (16 kHz) and
//! drop duration mismatches; they feed a bounded channel (`compute.queue_depth`). The calling
//! thread gathers a chunk of clips (the largest stage batch) and runs the stages in order, each
//! in sub-batches of its own `batch.<stage>` size: ASR, translation, speaker embedding, TTS,
//! codec tokens. Finished samples go over a second bounded channel to one writer thread, which
//! writes directories, the error log, the progress bar and the counts. One sample's failure
//! (per-item `Err`, a whole-batch `Err`, even a panic inside a teacher) is logged with its stage
//! and the run continues.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Map, Value};
use vaak_teachers::{AsrOptions, AudioRef, ItemResult, Lang, Transcript, TtsRequest};

use crate::config::{Config, Shard};
use crate::error::{CascadeError, Result};
use crate::select::{self, Filter};
use crate::teachers::Teachers;
use vaak_data::manifest::{read_manifest, ManifestRow};
use vaak_data::parallel::{
    self as output, SampleOutput, SourceAudio, SRC_SAMPLE_RATE, TGT_SAMPLE_RATE,
};
use vaak_data::paths::{check_no_symlink_escape, resolve_audio_path};
use vaak_data::safe_id::safe_id;

/// Stage names, as used in the error log and timings.
pub mod stage {
    pub const PATH: &str = "path";
    pub const LOAD: &str = "load";
    pub const ASR: &str = "asr";
    pub const TRANSLATE: &str = "translate";
    pub const SPEAKER: &str = "speaker";
    pub const TTS: &str = "tts";
    /// Speaker embedding of the TTS output, for the speaker-similarity gate.
    pub const SPEAKER_TGT: &str = "speaker_tgt";
    pub const CODEC: &str = "codec";
    pub const WRITE: &str = "write";
}

/// Quality flags that make a sample `bad`.
pub mod flag {
    pub const EMPTY_SRC_TEXT: &str = "empty_src_text";
    pub const EMPTY_TGT_TEXT: &str = "empty_tgt_text";
    pub const EMPTY_TGT_AUDIO: &str = "empty_tgt_audio";
    pub const TOKENS_TOO_SHORT: &str = "tokens_too_short";
    pub const DURATION_RATIO: &str = "duration_ratio_out_of_bounds";
    pub const ASR_NO_SPEECH: &str = "asr_no_speech";
    /// Prefix for the ASR's own flags (`asr:hallucination`, ...).
    pub const ASR_PREFIX: &str = "asr:";
    /// The source, used as the TTS voice reference, is shorter than `quality.min_reference_s`.
    pub const SHORT_REFERENCE: &str = "short_reference";
    /// The source's RMS level is below `quality.min_reference_rms_dbfs`.
    pub const SILENT_REFERENCE: &str = "silent_reference";
    /// Speaker similarity of source and target is below `quality.min_speaker_similarity`.
    pub const LOW_SPEAKER_SIMILARITY: &str = "low_speaker_similarity";
    /// The similarity could not be computed although a threshold is set.
    pub const NO_SPEAKER_SIMILARITY: &str = "speaker_similarity_unavailable";
}

/// Cosine similarity of two embeddings; `None` when the lengths differ, either is all zeros or
/// a value is not finite.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let c = dot / (na.sqrt() * nb.sqrt());
    c.is_finite().then_some(c.clamp(-1.0, 1.0) as f32)
}

/// RMS level of a clip in dBFS (`-inf` for digital silence or an empty clip).
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let ms = samples.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / samples.len() as f64;
    10.0 * ms.log10()
}

/// Why a source clip is unfit as a voice reference: `(flag, reason)` pairs, empty if it is fine.
pub fn reference_problems(
    q: &crate::config::QualityConfig,
    samples: &[f32],
    rate: u32,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let dur = samples.len() as f64 / f64::from(rate);
    if dur < q.min_reference_s {
        out.push((
            flag::SHORT_REFERENCE,
            format!(
                "source is {dur:.3} s, shorter than quality.min_reference_s = {} s",
                q.min_reference_s
            ),
        ));
    }
    let level = rms_dbfs(samples);
    if level < q.min_reference_rms_dbfs {
        out.push((
            flag::SILENT_REFERENCE,
            format!(
                "source RMS is {level:.1} dBFS, below quality.min_reference_rms_dbfs = {} dBFS",
                q.min_reference_rms_dbfs
            ),
        ));
    }
    out
}

/// One row this shard must process.
#[derive(Clone, Debug)]
pub struct WorkItem {
    pub row: ManifestRow,
    pub safe_id: String,
}

/// What a shard will do, before any audio is touched.
#[derive(Clone, Debug)]
pub struct Plan {
    pub manifest: PathBuf,
    pub lang: Lang,
    pub shard: Shard,
    /// Usable rows in the whole manifest.
    pub manifest_rows: usize,
    /// Malformed rows in the whole manifest (the same in every shard, like `manifest_rows`).
    pub manifest_malformed: usize,
    /// Malformed rows this shard owns: they have no reliable id, so the one whose manifest line
    /// number is `shard_idx` modulo `num_shards` counts them; summed over shards this is
    /// `manifest_malformed`.
    pub shard_malformed: usize,
    /// Rows of this shard before filtering.
    pub shard_rows: usize,
    /// Rows of this shard dropped by the filters, per reason.
    pub filtered: BTreeMap<String, usize>,
    pub items: Vec<WorkItem>,
}

/// Reads the manifest of `lang`, shards and filters it.
pub fn plan(cfg: &Config, lang: Lang, shard: Shard) -> Result<Plan> {
    let path = cfg
        .manifests
        .get(lang)
        .ok_or_else(|| CascadeError::Config {
            origin: "manifests".into(),
            reason: format!("no manifest configured for language '{lang}' (manifests.{lang})"),
        })?;
    let tier = cfg.pipeline.tier.as_deref();
    let m = read_manifest(path, tier.is_some())?;
    let manifest_rows = m.rows.len();
    let rows = select::shard_rows(m.rows, cfg.pipeline.shuffle_seed, shard.idx, shard.count);
    let shard_rows = rows.len();
    let filter = Filter {
        lang: lang.code(),
        tier,
        min_duration: cfg.pipeline.min_duration,
        max_duration: cfg.pipeline.max_duration,
    };
    let (kept, filtered) = select::filter_rows(rows, &filter);
    let items = kept
        .into_iter()
        .map(|row| WorkItem {
            safe_id: safe_id(&row.id),
            row,
        })
        .collect();
    Ok(Plan {
        manifest: path.clone(),
        lang,
        shard,
        manifest_rows,
        manifest_malformed: m.malformed.len(),
        shard_malformed: m
            .malformed
            .iter()
            .filter(|r| r.line % shard.count as u64 == shard.idx as u64)
            .count(),
        shard_rows,
        filtered,
        items,
    })
}

/// Counts and rates of a run, also written to `summary_<shard>.json`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub direction: String,
    pub shard_idx: usize,
    pub num_shards: usize,
    pub manifest: String,
    pub manifest_rows: usize,
    /// Malformed rows in the whole manifest (the same in every shard).
    pub manifest_malformed: usize,
    /// Malformed rows counted by this shard (each in exactly one shard; see [`Plan`]).
    #[serde(default)]
    pub shard_malformed: usize,
    pub shard_rows: usize,
    /// Samples written with status `ok`.
    pub ok: usize,
    /// Samples written with status `bad` (quality flags set).
    pub bad: usize,
    /// Samples that failed at some stage (see the error log).
    pub errored: usize,
    /// Samples already `DONE` from an earlier run.
    pub skipped: usize,
    /// Rows dropped by filters (including decoded-duration mismatches).
    pub filtered: usize,
    pub filtered_by: BTreeMap<String, usize>,
    pub errored_by_stage: BTreeMap<String, usize>,
    /// Source audio hours of the samples written (ok + bad).
    pub hours_processed: f64,
    pub wall_s: f64,
    /// Hours of audio per wall-clock hour.
    pub audio_hours_per_hour: f64,
    pub samples_per_s: f64,
    /// Total seconds spent per stage (batch calls; load and write on their own threads).
    pub stage_s: BTreeMap<String, f64>,
    pub errors_log: String,
}

impl Summary {
    /// Every row of the shard accounted for exactly once.
    pub fn accounted(&self) -> usize {
        self.ok + self.bad + self.errored + self.skipped + self.filtered
    }
}

/// Directory of the samples of a direction.
pub fn samples_dir(cfg: &Config) -> PathBuf {
    output::direction_dir(&cfg.output_root, &cfg.pipeline.direction.to_string())
}

/// Directory of the logs and summaries of a direction.
pub fn logs_dir(cfg: &Config) -> PathBuf {
    cfg.output_root
        .join("logs")
        .join(cfg.pipeline.direction.to_string())
}

struct Loaded {
    item: WorkItem,
    src: SourceAudio,
    load_s: f64,
}

enum Event {
    Skipped,
    Filtered(&'static str),
    Failed {
        item: Box<WorkItem>,
        stage: &'static str,
        error: String,
    },
    Finished(Box<(SampleOutput, f64, bool)>),
    Stage(&'static str, f64),
}

/// Runs the plan with the given teachers. Returns the summary (also written to disk).
pub fn run(cfg: &Config, plan: Plan, teachers: &Teachers) -> Result<Summary> {
    let started = Instant::now();
    let dir = samples_dir(cfg);
    let logs = logs_dir(cfg);
    for d in [&dir, &logs] {
        std::fs::create_dir_all(d).map_err(|e| CascadeError::io(d, e))?;
    }
    let err_path = logs.join(format!("errors_{}.log", plan.shard.idx));
    let attempts = compact_error_log(&err_path)?;
    let err_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&err_path)
        .map_err(|e| CascadeError::io(&err_path, e))?;

    let mut summary = Summary {
        direction: cfg.pipeline.direction.to_string(),
        shard_idx: plan.shard.idx,
        num_shards: plan.shard.count,
        manifest: plan.manifest.display().to_string(),
        manifest_rows: plan.manifest_rows,
        manifest_malformed: plan.manifest_malformed,
        shard_malformed: plan.shard_malformed,
        shard_rows: plan.shard_rows,
        filtered: plan.filtered.values().sum(),
        filtered_by: plan.filtered.clone(),
        errors_log: err_path.display().to_string(),
        ..Default::default()
    };
    let items = Arc::new(plan.items);
    let total = items.len();
    tracing::info!(
        "cascade {}: shard {}/{} of {}: {} rows, {} to process, {} filtered",
        summary.direction,
        plan.shard.idx,
        plan.shard.count,
        summary.manifest,
        plan.shard_rows,
        total,
        summary.filtered
    );

    let chunk = cfg.batch.chunk();
    let (load_tx, load_rx) = sync_channel::<Loaded>(cfg.compute.queue_depth);
    let (ev_tx, ev_rx) = sync_channel::<Event>(cfg.compute.queue_depth + 2 * chunk);
    let next = Arc::new(AtomicUsize::new(0));

    let writer = {
        let cfg = cfg.clone();
        let dir = dir.clone();
        let mut summary = summary.clone();
        std::thread::Builder::new()
            .name("cascade-writer".into())
            .spawn(move || {
                writer_loop(&cfg, &dir, ev_rx, err_file, attempts, total, &mut summary);
                summary
            })
            .map_err(|e| CascadeError::InvalidArgument(format!("spawning writer: {e}")))?
    };

    let mut loaders = Vec::new();
    for w in 0..cfg.compute.num_workers.min(total.max(1)) {
        let (items, next, load_tx, ev_tx) =
            (items.clone(), next.clone(), load_tx.clone(), ev_tx.clone());
        let cfg = cfg.clone();
        let dir = dir.clone();
        let h = std::thread::Builder::new()
            .name(format!("cascade-load-{w}"))
            .spawn(move || loader_loop(&cfg, &dir, &items, &next, &load_tx, &ev_tx))
            .map_err(|e| CascadeError::InvalidArgument(format!("spawning loader: {e}")))?;
        loaders.push(h);
    }
    drop(load_tx);

    let src = cfg.pipeline.direction.src;
    let tgt = cfg.pipeline.direction.tgt;
    let mut buf = Vec::with_capacity(chunk);
    loop {
        let got = load_rx.recv();
        let end = got.is_err();
        if let Ok(l) = got {
            buf.push(l);
        }
        if buf.len() >= chunk || (end && !buf.is_empty()) {
            let batch = std::mem::take(&mut buf);
            process_chunk(cfg, teachers, batch, src, tgt, &ev_tx);
        }
        if end {
            break;
        }
    }
    for h in loaders {
        let _ = h.join();
    }
    drop(ev_tx);
    summary = writer
        .join()
        .map_err(|_| CascadeError::InvalidArgument("the writer thread panicked".into()))?;
    compact_error_log(&err_path)?;
    summary.wall_s = started.elapsed().as_secs_f64();
    if summary.wall_s > 0.0 {
        summary.audio_hours_per_hour = summary.hours_processed / (summary.wall_s / 3600.0);
        summary.samples_per_s = (summary.ok + summary.bad) as f64 / summary.wall_s;
    }
    let sum_path = logs.join(format!("summary_{}.json", plan.shard.idx));
    let text = serde_json::to_vec_pretty(&summary).expect("summary serialises");
    output::write_synced(&sum_path, &text).map_err(|e| CascadeError::io(&sum_path, e))?;
    tracing::info!(
        "cascade done: ok {} bad {} errored {} skipped {} filtered {}; {:.3} h audio in {:.1} s ({:.1} h/h)",
        summary.ok,
        summary.bad,
        summary.errored,
        summary.skipped,
        summary.filtered,
        summary.hours_processed,
        summary.wall_s,
        summary.audio_hours_per_hour
    );
    Ok(summary)
}

/// Rewrites the error log with one entry per id, the last failure, whose `attempts` counts the
/// runs it failed in (a log left by a crash has the same id several times; an entry from before
/// `attempts` existed counts as one). Lines that are not such entries are kept as they are.
/// Returns the attempts so far per id.
pub fn compact_error_log(path: &Path) -> Result<std::collections::HashMap<String, u64>> {
    let mut attempts = std::collections::HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(attempts),
        Err(e) => return Err(CascadeError::io(path, e)),
    };
    // In first-seen order: (id, the entry as a line).
    let mut lines: Vec<(Option<String>, String)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec: Option<Map<String, Value>> = serde_json::from_str(line).ok();
        let Some((id, mut rec)) = rec.and_then(|r| Some((r.get("id")?.as_str()?.to_string(), r)))
        else {
            lines.push((None, line.to_string()));
            continue;
        };
        let prev = attempts.get(&id).copied().unwrap_or(0);
        let n = rec
            .get("attempts")
            .and_then(Value::as_u64)
            .unwrap_or(prev + 1)
            .max(prev);
        attempts.insert(id.clone(), n);
        rec.insert("attempts".into(), json!(n));
        let entry = Value::Object(rec).to_string();
        match at.get(&id) {
            Some(&k) => lines[k].1 = entry,
            None => {
                at.insert(id.clone(), lines.len());
                lines.push((Some(id), entry));
            }
        }
    }
    let mut out = String::new();
    for (_, l) in &lines {
        out.push_str(l);
        out.push('\n');
    }
    if out != text {
        // Write aside and rename, so a crash never leaves the log half written.
        let tmp = path.with_extension("log.tmp");
        output::write_synced(&tmp, out.as_bytes()).map_err(|e| CascadeError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| CascadeError::io(path, e))?;
    }
    Ok(attempts)
}

fn loader_loop(
    cfg: &Config,
    dir: &Path,
    items: &[WorkItem],
    next: &AtomicUsize,
    load_tx: &SyncSender<Loaded>,
    ev_tx: &SyncSender<Event>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { return };
        let t0 = Instant::now();
        if output::is_done(&dir.join(&item.safe_id)) {
            let _ = ev_tx.send(Event::Skipped);
            continue;
        }
        let fail = |stage, error: String| Event::Failed {
            item: Box::new(item.clone()),
            stage,
            error,
        };
        let path = match resolve_audio_path(&cfg.data_root, &item.row.audio_path)
            .and_then(|p| check_no_symlink_escape(&cfg.data_root, &p).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let _ = ev_tx.send(fail(stage::PATH, e));
                continue;
            }
        };
        let decoded =
            match catch_unwind(|| vaak_audio::io::decode_file(&path, Some(SRC_SAMPLE_RATE))) {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    let _ = ev_tx.send(fail(stage::LOAD, e.to_string()));
                    continue;
                }
                Err(_) => {
                    let _ = ev_tx.send(fail(stage::LOAD, "decoder panicked".into()));
                    continue;
                }
            };
        let dur = decoded.duration_s();
        if select::duration_mismatch(item.row.duration_s, dur, cfg.pipeline.duration_tolerance) {
            tracing::warn!(
                "id '{}': decoded {dur:.3} s vs manifest {:.3} s; dropped",
                item.row.id,
                item.row.duration_s
            );
            let _ = ev_tx.send(Event::Filtered(select::reason::DURATION_MISMATCH));
            continue;
        }
        let is_wav = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        let loaded = Loaded {
            item: item.clone(),
            src: SourceAudio {
                path,
                is_wav,
                decoded: decoded.samples,
            },
            load_s: t0.elapsed().as_secs_f64(),
        };
        if load_tx.send(loaded).is_err() {
            return;
        }
    }
}

/// Per-sample state while the stages run.
struct Slot {
    l: Loaded,
    failed: bool,
    transcript: Option<Transcript>,
    tgt_text: String,
    speaker: Vec<f32>,
    tgt_audio: Vec<f32>,
    tokens: Vec<Vec<u32>>,
    timings: BTreeMap<&'static str, f64>,
    /// Problems of the source as a voice reference (see [`reference_problems`]).
    ref_problems: Vec<(&'static str, String)>,
    /// Cosine of the source and target speaker embeddings, or why there is none.
    similarity: Option<std::result::Result<f32, String>>,
    /// Why the TTS could not speak a sample sent without its (unfit) voice reference; such a
    /// failure makes the sample `bad`, not errored: the reference flags already say why.
    tts_error: Option<String>,
}

/// Runs `call` over `idxs` in sub-batches of `batch`; per-item results go to `ok`, failures
/// (per item, whole batch, wrong result count, panic) are reported and the slot marked failed,
/// or, with `soft`, recorded in the slot's `tts_error` and the sample left alive.
#[allow(clippy::too_many_arguments)]
fn run_stage<T>(
    name: &'static str,
    slots: &mut [Slot],
    idxs: &[usize],
    batch: usize,
    soft: bool,
    ev_tx: &SyncSender<Event>,
    call: impl Fn(&[Slot], &[usize]) -> vaak_teachers::Result<Vec<ItemResult<T>>>,
    mut ok: impl FnMut(&mut Slot, T) -> std::result::Result<(), String>,
) {
    for part in idxs.chunks(batch.max(1)) {
        let t0 = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| call(slots, part)));
        let dt = t0.elapsed().as_secs_f64();
        let _ = ev_tx.send(Event::Stage(name, dt));
        let per_item = dt / part.len() as f64;
        let results: std::result::Result<Vec<ItemResult<T>>, String> = match res {
            Ok(Ok(v)) if v.len() == part.len() => Ok(v),
            Ok(Ok(v)) => Err(format!(
                "teacher returned {} results for a batch of {}",
                v.len(),
                part.len()
            )),
            Ok(Err(e)) => Err(format!("batch failed: {e}")),
            Err(p) => Err(format!("teacher panicked: {}", panic_text(&p))),
        };
        match results {
            Ok(v) => {
                for (&i, r) in part.iter().zip(v) {
                    let s = &mut slots[i];
                    s.timings.insert(name, per_item);
                    let r = r.map_err(|e| e.to_string()).and_then(|t| ok(s, t));
                    if let Err(e) = r {
                        fail_slot(s, name, e, soft, ev_tx);
                    }
                }
            }
            Err(e) => {
                for &i in part {
                    fail_slot(&mut slots[i], name, e.clone(), soft, ev_tx);
                }
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn fail_slot(
    s: &mut Slot,
    stage: &'static str,
    error: String,
    soft: bool,
    ev_tx: &SyncSender<Event>,
) {
    if soft {
        s.tts_error = Some(error);
        return;
    }
    s.failed = true;
    let _ = ev_tx.send(Event::Failed {
        item: Box::new(s.l.item.clone()),
        stage,
        error,
    });
}

fn alive(slots: &[Slot], pred: impl Fn(&Slot) -> bool) -> Vec<usize> {
    (0..slots.len())
        .filter(|&i| !slots[i].failed && pred(&slots[i]))
        .collect()
}

fn process_chunk(
    cfg: &Config,
    t: &Teachers,
    batch: Vec<Loaded>,
    src: Lang,
    tgt: Lang,
    ev_tx: &SyncSender<Event>,
) {
    let mut slots: Vec<Slot> = batch
        .into_iter()
        .map(|l| {
            let mut timings = BTreeMap::new();
            timings.insert(stage::LOAD, l.load_s);
            let ref_problems = reference_problems(&cfg.quality, &l.src.decoded, SRC_SAMPLE_RATE);
            Slot {
                ref_problems,
                similarity: None,
                tts_error: None,
                l,
                failed: false,
                transcript: None,
                tgt_text: String::new(),
                speaker: Vec::new(),
                tgt_audio: Vec::new(),
                tokens: Vec::new(),
                timings,
            }
        })
        .collect();
    let b = &cfg.batch;

    let opts = AsrOptions {
        language: Some(src),
        max_new_tokens: cfg.pipeline.asr_max_new_tokens,
    };
    let idx = alive(&slots, |_| true);
    run_stage(
        stage::ASR,
        &mut slots,
        &idx,
        b.asr,
        false,
        ev_tx,
        |s, part| {
            t.asr.transcribe(
                &part.iter().map(|&i| audio(&s[i])).collect::<Vec<_>>(),
                &opts,
            )
        },
        |s, tr| {
            s.transcript = Some(tr);
            Ok(())
        },
    );

    let has_src_text = |s: &Slot| {
        s.transcript
            .as_ref()
            .is_some_and(|t| !t.text.trim().is_empty())
    };
    let idx = alive(&slots, has_src_text);
    run_stage(
        stage::TRANSLATE,
        &mut slots,
        &idx,
        b.translator,
        false,
        ev_tx,
        |s, part| {
            let texts: Vec<&str> = part
                .iter()
                .map(|&i| s[i].transcript.as_ref().map_or("", |t| t.text.trim()))
                .collect();
            t.translator.translate(&texts, src, tgt)
        },
        |s, text| {
            s.tgt_text = text.trim().to_string();
            Ok(())
        },
    );

    let dim = t.speaker.dim();
    let idx = alive(&slots, |_| true);
    run_stage(
        stage::SPEAKER,
        &mut slots,
        &idx,
        b.speaker,
        false,
        ev_tx,
        |s, part| {
            t.speaker
                .embed(&part.iter().map(|&i| audio(&s[i])).collect::<Vec<_>>())
        },
        |s, e| {
            if e.len() != dim {
                return Err(format!(
                    "embedding has {} values, the encoder says {dim}",
                    e.len()
                ));
            }
            if let Some(i) = e.iter().position(|v| !v.is_finite()) {
                return Err(format!("embedding value {i} is not finite"));
            }
            s.speaker = e;
            Ok(())
        },
    );

    // A clip unfit as a voice reference is sent without it (it would only mislead a
    // voice-cloning TTS); the sample is flagged either way. Such clips go in their own batches,
    // and a TTS that cannot speak without a reference (OpenVoice) leaves them `bad` with their
    // reference flags instead of failing them.
    let tts_call = |s: &[Slot], part: &[usize]| {
        let reqs: Vec<TtsRequest> = part
            .iter()
            .map(|&i| TtsRequest {
                text: &s[i].tgt_text,
                lang: tgt,
                reference: s[i].ref_problems.is_empty().then(|| audio(&s[i])),
            })
            .collect();
        t.tts.synthesize(&reqs)
    };
    let tts_ok = |s: &mut Slot, sp: vaak_teachers::Speech| -> std::result::Result<(), String> {
        if sp.sample_rate == 0 {
            return Err("TTS returned a 0 Hz sample rate".into());
        }
        if sp.samples.iter().any(|v| !v.is_finite()) {
            return Err("TTS returned non-finite samples".into());
        }
        s.tgt_audio = if sp.sample_rate == TGT_SAMPLE_RATE || sp.samples.is_empty() {
            sp.samples
        } else {
            vaak_audio::resample::resample(&sp.samples, sp.sample_rate, TGT_SAMPLE_RATE)
                .map_err(|e| e.to_string())?
        };
        Ok(())
    };
    for unfit in [false, true] {
        let idx = alive(&slots, |s| {
            !s.tgt_text.is_empty() && s.ref_problems.is_empty() != unfit
        });
        run_stage(
            stage::TTS,
            &mut slots,
            &idx,
            b.tts,
            unfit,
            ev_tx,
            tts_call,
            &tts_ok,
        );
    }

    speaker_similarity(t, &mut slots, b.speaker, ev_tx);

    let ncb = t.codec.num_codebooks();
    let crate_rate = t.codec.sample_rate();
    let idx = alive(&slots, |s| !s.tgt_audio.is_empty());
    run_stage(
        stage::CODEC,
        &mut slots,
        &idx,
        b.codec,
        false,
        ev_tx,
        |s, part| {
            if crate_rate == TGT_SAMPLE_RATE {
                let refs: Vec<_> = part
                    .iter()
                    .map(|&i| AudioRef::new(&s[i].tgt_audio, TGT_SAMPLE_RATE))
                    .collect();
                t.codec.encode(&refs)
            } else {
                let rs: Vec<Vec<f32>> = part
                    .iter()
                    .map(|&i| {
                        vaak_audio::resample::resample(&s[i].tgt_audio, TGT_SAMPLE_RATE, crate_rate)
                    })
                    .collect::<std::result::Result<_, _>>()?;
                let refs: Vec<_> = rs.iter().map(|a| AudioRef::new(a, crate_rate)).collect();
                t.codec.encode(&refs)
            }
        },
        |s, tok| {
            if tok.len() != ncb {
                return Err(format!(
                    "codec returned {} codebooks, expected {ncb}",
                    tok.len()
                ));
            }
            let frames = tok.first().map_or(0, Vec::len);
            if tok.iter().any(|r| r.len() != frames) {
                return Err("codec returned ragged codebook rows".into());
            }
            s.tokens = tok;
            Ok(())
        },
    );

    for s in slots.into_iter().filter(|s| !s.failed) {
        let out = finish(cfg, t, s, src, tgt, ncb);
        if ev_tx.send(Event::Finished(Box::new(out))).is_err() {
            return;
        }
    }
}

/// Embeds each target clip with the speaker encoder and records its cosine with the source's
/// embedding. A failure here never fails the sample: it is recorded as the reason there is no
/// similarity (and flags the sample only when a threshold is set).
fn speaker_similarity(t: &Teachers, slots: &mut [Slot], batch: usize, ev_tx: &SyncSender<Event>) {
    let idx = alive(slots, |s| !s.tgt_audio.is_empty() && !s.speaker.is_empty());
    for part in idx.chunks(batch.max(1)) {
        let t0 = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let refs: Vec<AudioRef> = part
                .iter()
                .map(|&i| AudioRef::new(&slots[i].tgt_audio, TGT_SAMPLE_RATE))
                .collect();
            t.speaker.embed(&refs)
        }));
        let dt = t0.elapsed().as_secs_f64();
        let _ = ev_tx.send(Event::Stage(stage::SPEAKER_TGT, dt));
        let results: std::result::Result<Vec<ItemResult<Vec<f32>>>, String> = match res {
            Ok(Ok(v)) if v.len() == part.len() => Ok(v),
            Ok(Ok(v)) => Err(format!(
                "speaker encoder returned {} results for a batch of {}",
                v.len(),
                part.len()
            )),
            Ok(Err(e)) => Err(format!("target embedding batch failed: {e}")),
            Err(p) => Err(format!("speaker encoder panicked: {}", panic_text(&p))),
        };
        for (k, &i) in part.iter().enumerate() {
            let s = &mut slots[i];
            s.timings.insert(stage::SPEAKER_TGT, dt / part.len() as f64);
            s.similarity = Some(match &results {
                Err(e) => Err(e.clone()),
                Ok(v) => match &v[k] {
                    Err(e) => Err(format!("target embedding failed: {e}")),
                    Ok(e) => cosine_similarity(&s.speaker, e).ok_or_else(|| {
                        "embeddings differ in length, are all zero or not finite".to_string()
                    }),
                },
            });
        }
    }
}

fn audio(s: &Slot) -> AudioRef<'_> {
    AudioRef::new(&s.l.src.decoded, SRC_SAMPLE_RATE)
}

/// The quality flags of a finished sample, each with a human-readable reason.
fn quality_flags(cfg: &Config, s: &Slot, src_dur: f64, tgt_dur: f64) -> Vec<(String, String)> {
    let p = &cfg.pipeline;
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut push = |f: &str, why: String| flags.push((f.to_string(), why));
    let tr = s.transcript.as_ref();
    if tr.is_none_or(|t| t.text.trim().is_empty()) {
        push(
            flag::EMPTY_SRC_TEXT,
            "the transcript is empty or whitespace only; nothing to translate".into(),
        );
    }
    if let Some(t) = tr {
        if t.no_speech_prob > p.max_no_speech_prob {
            push(
                flag::ASR_NO_SPEECH,
                format!(
                    "ASR no-speech probability {:.3} > pipeline.max_no_speech_prob = {}",
                    t.no_speech_prob, p.max_no_speech_prob
                ),
            );
        }
        for f in &t.flags {
            push(
                &format!("{}{f}", flag::ASR_PREFIX),
                format!("the ASR flagged its transcript: {f}"),
            );
        }
    }
    if s.tgt_text.is_empty() {
        push(
            flag::EMPTY_TGT_TEXT,
            if tr.is_some_and(|t| !t.text.trim().is_empty()) {
                "the translation is empty or whitespace only".into()
            } else {
                "no translation (empty transcript)".into()
            },
        );
    } else if s.tgt_audio.is_empty() {
        push(
            flag::EMPTY_TGT_AUDIO,
            match &s.tts_error {
                Some(e) => format!("the TTS could not speak without a usable voice reference: {e}"),
                None => "the TTS returned no samples".into(),
            },
        );
    }
    if !s.tgt_audio.is_empty() {
        let frames = s.tokens.first().map_or(0, Vec::len);
        if frames < p.min_token_frames {
            push(
                flag::TOKENS_TOO_SHORT,
                format!(
                    "{frames} codec frames < pipeline.min_token_frames = {}",
                    p.min_token_frames
                ),
            );
        }
        let ratio = if src_dur > 0.0 {
            tgt_dur / src_dur
        } else {
            f64::INFINITY
        };
        if !(p.min_duration_ratio..=p.max_duration_ratio).contains(&ratio) {
            push(
                flag::DURATION_RATIO,
                format!(
                    "tgt/src duration ratio {ratio:.3} outside [{}, {}]",
                    p.min_duration_ratio, p.max_duration_ratio
                ),
            );
        }
    }
    for (f, why) in &s.ref_problems {
        push(f, why.clone());
    }
    if let Some(min) = cfg.quality.min_speaker_similarity {
        match &s.similarity {
            Some(Ok(c)) if *c < min => push(
                flag::LOW_SPEAKER_SIMILARITY,
                format!("speaker similarity {c:.4} < quality.min_speaker_similarity = {min}"),
            ),
            Some(Ok(_)) => {}
            Some(Err(e)) => push(flag::NO_SPEAKER_SIMILARITY, e.clone()),
            // No target audio: already flagged above for its own reason.
            None if s.tgt_audio.is_empty() => {}
            None => push(
                flag::NO_SPEAKER_SIMILARITY,
                "no source speaker embedding".into(),
            ),
        }
    }
    flags
}

fn finish(
    cfg: &Config,
    t: &Teachers,
    s: Slot,
    src: Lang,
    tgt: Lang,
    ncb: usize,
) -> (SampleOutput, f64, bool) {
    let src_dur = s.l.src.decoded.len() as f64 / f64::from(SRC_SAMPLE_RATE);
    let tgt_dur = s.tgt_audio.len() as f64 / f64::from(TGT_SAMPLE_RATE);
    let flagged = quality_flags(cfg, &s, src_dur, tgt_dur);
    let ok = flagged.is_empty();
    let flags: Vec<&str> = flagged.iter().map(|(f, _)| f.as_str()).collect();
    let reasons: Map<String, Value> = flagged
        .iter()
        .map(|(f, why)| (f.clone(), json!(why)))
        .collect();
    let src_text = s
        .transcript
        .as_ref()
        .map_or(String::new(), |t| t.text.trim().to_string());
    let frames = s.tokens.first().map_or(0, Vec::len);
    let mid = |m: vaak_teachers::ModelId| json!({"name": m.name, "revision": m.revision});
    let mut extra = Map::new();
    extra.insert("status".into(), json!(if ok { "ok" } else { "bad" }));
    extra.insert("quality_flags".into(), json!(flags));
    extra.insert("quality_reasons".into(), Value::Object(reasons));
    extra.insert(
        "speaker_similarity".into(),
        match &s.similarity {
            Some(Ok(c)) => json!(c),
            _ => Value::Null,
        },
    );
    if let Some(Err(e)) = &s.similarity {
        extra.insert("speaker_similarity_error".into(), json!(e));
    }
    extra.insert(
        "src_rms_dbfs".into(),
        // JSON has no -inf; digital silence is null.
        json!(Some(rms_dbfs(&s.l.src.decoded)).filter(|v| v.is_finite())),
    );
    extra.insert("manifest_duration_s".into(), json!(s.l.item.row.duration_s));
    extra.insert("src_duration_s".into(), json!(src_dur));
    extra.insert("tgt_duration_s".into(), json!(tgt_dur));
    extra.insert("src_text_len".into(), json!(src_text.chars().count()));
    extra.insert("tgt_text_len".into(), json!(s.tgt_text.chars().count()));
    extra.insert("src_audio".into(), json!(s.l.item.row.audio_path));
    extra.insert(
        "src_wav".into(),
        json!(if s.l.src.is_wav {
            match cfg.pipeline.src_audio {
                crate::config::SrcAudioMode::Copy => "copy",
                crate::config::SrcAudioMode::Symlink => "symlink",
            }
        } else {
            "reencoded_16k"
        }),
    );
    extra.insert("tgt_sample_rate".into(), json!(TGT_SAMPLE_RATE));
    extra.insert("speaker_dim".into(), json!(s.speaker.len()));
    extra.insert("tokens_shape".into(), json!([ncb, frames]));
    if let Some(tr) = &s.transcript {
        extra.insert(
            "asr".into(),
            json!({
                "language": tr.language,
                "no_speech_prob": tr.no_speech_prob,
                "avg_logprob": tr.avg_logprob,
                "compression_ratio": tr.compression_ratio,
                "flags": tr.flags,
            }),
        );
    }
    extra.insert(
        "models".into(),
        json!({
            "asr": mid(t.asr.model_id()),
            "translator": mid(t.translator.model_id()),
            "speaker": mid(t.speaker.model_id()),
            "tts": mid(t.tts.model_id()),
            "codec": mid(t.codec.model_id()),
        }),
    );
    let timings: Map<String, Value> = s
        .timings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    extra.insert("timings_s".into(), Value::Object(timings));
    let row = &s.l.item.row;
    let meta = output::meta_json(
        &row.fields,
        &row.id,
        &s.l.item.safe_id,
        row.line,
        &cfg.pipeline.direction.to_string(),
        src.code(),
        tgt.code(),
        extra,
    );
    let tokens = if s.tokens.is_empty() {
        vec![Vec::new(); ncb]
    } else {
        s.tokens
    };
    (
        SampleOutput {
            safe_id: s.l.item.safe_id.clone(),
            src: s.l.src,
            src_text,
            tgt_text: s.tgt_text,
            tgt_audio: s.tgt_audio,
            speaker: s.speaker,
            tokens,
            num_codebooks: ncb,
            meta,
        },
        src_dur,
        ok,
    )
}

fn writer_loop(
    cfg: &Config,
    dir: &Path,
    rx: Receiver<Event>,
    mut err_file: std::fs::File,
    mut attempts: std::collections::HashMap<String, u64>,
    total: usize,
    summary: &mut Summary,
) {
    let bar = if cfg.compute.progress_bar {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut done = 0usize;
    let mut log_error = |id: &str, line: u64, stage: &str, error: &str| {
        tracing::warn!("id '{id}' (line {line}) failed at {stage}: {error}");
        let n = attempts.entry(id.to_string()).or_insert(0);
        *n += 1;
        let rec = json!({
            "time_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "id": id, "manifest_line": line, "stage": stage, "error": error, "attempts": *n,
        });
        let _ = writeln!(err_file, "{rec}");
        let _ = err_file.flush();
    };
    for ev in rx {
        match ev {
            Event::Stage(name, dt) => {
                *summary.stage_s.entry(name.to_string()).or_default() += dt;
                continue;
            }
            Event::Skipped => summary.skipped += 1,
            Event::Filtered(r) => {
                summary.filtered += 1;
                *summary.filtered_by.entry(r.to_string()).or_default() += 1;
            }
            Event::Failed { item, stage, error } => {
                summary.errored += 1;
                *summary
                    .errored_by_stage
                    .entry(stage.to_string())
                    .or_default() += 1;
                log_error(&item.row.id, item.row.line, stage, &error);
            }
            Event::Finished(b) => {
                let (out, src_dur, ok) = *b;
                let t0 = Instant::now();
                let r = output::write_sample(dir, &out, cfg.pipeline.src_audio);
                *summary.stage_s.entry(stage::WRITE.to_string()).or_default() +=
                    t0.elapsed().as_secs_f64();
                match r {
                    Ok(_) => {
                        if ok {
                            summary.ok += 1;
                        } else {
                            summary.bad += 1;
                        }
                        summary.hours_processed += src_dur / 3600.0;
                    }
                    Err(e) => {
                        summary.errored += 1;
                        *summary
                            .errored_by_stage
                            .entry(stage::WRITE.to_string())
                            .or_default() += 1;
                        let id = out.meta.get("id").and_then(Value::as_str).unwrap_or("");
                        let line = out
                            .meta
                            .get("manifest_line")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        log_error(id, line, stage::WRITE, &e.to_string());
                    }
                }
            }
        }
        done += 1;
        let hours_h =
            summary.hours_processed / (started.elapsed().as_secs_f64().max(1e-9) / 3600.0);
        bar.set_position(done as u64);
        bar.set_message(format!("{hours_h:.1} h audio/h"));
        if cfg.compute.log_interval > 0 && done.is_multiple_of(cfg.compute.log_interval) {
            tracing::info!(
                "{done}/{total}: ok {} bad {} errored {} skipped {} filtered(in-run) {}; {:.3} h audio, {hours_h:.1} h/h",
                summary.ok,
                summary.bad,
                summary.errored,
                summary.skipped,
                summary.filtered_by.get(select::reason::DURATION_MISMATCH).copied().unwrap_or(0),
                summary.hours_processed
            );
        }
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QualityConfig;

    #[test]
    fn cosine_is_bounded_and_undefined_for_degenerate_inputs() {
        let c = |a: &[f32], b: &[f32]| cosine_similarity(a, b);
        assert!((c(&[1.0, 2.0], &[2.0, 4.0]).unwrap() - 1.0).abs() < 1e-6);
        assert!((c(&[1.0, 0.0], &[0.0, 3.0]).unwrap()).abs() < 1e-6);
        assert!((c(&[1.0, 1.0], &[-1.0, -1.0]).unwrap() + 1.0).abs() < 1e-6);
        assert_eq!(c(&[0.0, 0.0], &[1.0, 1.0]), None);
        assert_eq!(c(&[1.0], &[1.0, 1.0]), None);
        assert_eq!(c(&[f32::NAN, 1.0], &[1.0, 1.0]), None);
        assert_eq!(c(&[], &[]), None);
    }

    #[test]
    fn reference_problems_flag_short_and_silent_clips() {
        let q = QualityConfig::default();
        let tone = |n: usize, amp: f32| -> Vec<f32> {
            (0..n).map(|i| amp * (i as f32 * 0.1).sin()).collect()
        };
        assert!(reference_problems(&q, &tone(16_000, 0.5), 16_000).is_empty());
        let flags = |v: &[f32]| -> Vec<&str> {
            reference_problems(&q, v, 16_000)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(flags(&tone(15_999, 0.5)), [flag::SHORT_REFERENCE]);
        assert_eq!(flags(&tone(32_000, 0.0)), [flag::SILENT_REFERENCE]);
        assert_eq!(flags(&tone(32_000, 1e-4)), [flag::SILENT_REFERENCE]);
        assert_eq!(flags(&[]), [flag::SHORT_REFERENCE, flag::SILENT_REFERENCE]);
        assert_eq!(rms_dbfs(&[]), f64::NEG_INFINITY);
        assert!((rms_dbfs(&[0.5, -0.5]) - 20.0 * 0.5f64.log10()).abs() < 1e-9);
    }
}
