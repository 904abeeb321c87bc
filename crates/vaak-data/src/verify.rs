//! `vaak data verify`: what a corpus manifest holds and what is wrong with it.
//!
//! Every row's audio is decoded in full (files in parallel over `jobs` threads; each parquet
//! shard is read in one pass, its cells decoded over the threads no other shard needs), and its
//! header read where it has one.
//! The report has counts, hours per language / split / speaker, the sample-rate and channel
//! histograms, and the defects:
//!
//! - **errors**: lines of the manifest that cannot be read, audio that fails to decode (with
//!   the reason), durations that disagree (manifest vs decoded, header vs decoded, beyond
//!   `tolerance_s`), empty texts, duplicate ids; and, when asked for with `expected_rate` /
//!   `require_mono`, rows at another rate or with more than one channel;
//! - **warnings** otherwise for those last two: rows whose rate differs from the most common
//!   one, rows with more than one channel.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::audio_ref::resolve_ref_file;
use crate::corpus::{AudioRef, CorpusManifest};
use crate::parquet_audio::{for_each_row, header_of_bytes, AudioCell, ColumnNames};
use crate::recipes::{par_map, Progress};

/// How verify runs.
#[derive(Clone)]
pub struct VerifyOptions {
    pub jobs: usize,
    /// Largest allowed difference between two durations of a row, in seconds.
    pub tolerance_s: f64,
    /// Rows at another rate are errors (without it, rows off the most common rate are
    /// warnings).
    pub expected_rate: Option<u32>,
    /// Rows with more than one channel are errors (warnings without it).
    pub require_mono: bool,
    pub progress: Option<Progress>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            tolerance_s: 0.05,
            expected_rate: None,
            require_mono: false,
            progress: None,
        }
    }
}

/// Rows and hours of one language, split or speaker.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    pub rows: usize,
    pub hours: f64,
}

/// A row with a problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowProblem {
    pub id: String,
    pub audio_path: String,
    pub reason: String,
}

/// A row whose durations disagree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DurationMismatch {
    pub id: String,
    pub audio_path: String,
    pub manifest_s: f64,
    /// From the container header; `None` when it has none (MP3 cells, ...).
    pub header_s: Option<f64>,
    pub decoded_s: f64,
}

/// An id used by more than one row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DuplicateId {
    pub id: String,
    pub count: usize,
}

/// A manifest line that could not be read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

/// Everything verify found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub rows: usize,
    /// Sum of the manifest's durations.
    pub hours: f64,
    /// Sum of the decoded durations (rows that decode).
    pub decoded_hours: f64,
    pub speakers: usize,
    pub by_lang: BTreeMap<String, Group>,
    pub by_split: BTreeMap<String, Group>,
    pub by_speaker: BTreeMap<String, Group>,
    /// Rate in Hz (`unknown` when neither header nor decoder gave one) -> rows.
    pub sample_rates: BTreeMap<String, usize>,
    /// Channel count (`unknown` without a header) -> rows.
    pub channels: BTreeMap<String, usize>,
    pub malformed_lines: Vec<BadLine>,
    pub decode_failures: Vec<RowProblem>,
    pub duration_mismatches: Vec<DurationMismatch>,
    /// Ids of rows whose text is empty.
    pub empty_texts: Vec<String>,
    pub duplicate_ids: Vec<DuplicateId>,
    /// Rows at another rate than expected (or than the most common one).
    pub off_rate: Vec<RowProblem>,
    pub multi_channel: Vec<RowProblem>,
    pub errors: usize,
    pub warnings: usize,
}

impl VerifyReport {
    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }
}

/// What one row's audio turned out to be.
#[derive(Clone, Debug, Default)]
struct Check {
    /// (rate, channels, duration) from the header.
    header: Option<(u32, u16, Option<f64>)>,
    /// (duration, rate) decoded, or why not.
    decoded: Option<Result<(f64, u32), String>>,
}

enum Job {
    File(usize),
    Parquet {
        file: PathBuf,
        column: String,
        /// (row in the file, index in the manifest)
        rows: Vec<(usize, usize)>,
    },
}

fn check_file(data_root: &Path, r: &AudioRef) -> Check {
    let path = match resolve_ref_file(data_root, r) {
        Ok(p) => p,
        Err(e) => {
            return Check {
                header: None,
                decoded: Some(Err(e.to_string())),
            }
        }
    };
    let header = vaak_audio::io::probe_info(&path)
        .ok()
        .map(|i| (i.sample_rate, i.channels, i.duration_s));
    let decoded = vaak_audio::io::decode_file(&path, None)
        .map(|a| (a.duration_s(), a.sample_rate))
        .map_err(|e| e.to_string());
    Check {
        header,
        decoded: Some(decoded),
    }
}

fn check_cell(cell: &std::result::Result<AudioCell, String>, path: &Path) -> Check {
    match cell {
        Err(e) => Check {
            header: None,
            decoded: Some(Err(e.clone())),
        },
        Ok(cell) => {
            let header = header_of_bytes(&cell.bytes)
                .map(|(r, c, n)| (r, c, (r > 0).then(|| n as f64 / f64::from(r))));
            let decoded =
                vaak_audio::io::decode_bytes(cell.bytes.clone(), cell.ext_hint(), path, None)
                    .map(|a| (a.duration_s(), a.sample_rate))
                    .map_err(|e| e.to_string());
            Check {
                header,
                decoded: Some(decoded),
            }
        }
    }
}

fn check_parquet(
    data_root: &Path,
    file: &Path,
    column: &str,
    rows: &[(usize, usize)],
    inner: usize,
) -> Vec<(usize, Check)> {
    let fail_all = |reason: String| -> Vec<(usize, Check)> {
        rows.iter()
            .map(|&(_, i)| {
                (
                    i,
                    Check {
                        header: None,
                        decoded: Some(Err(reason.clone())),
                    },
                )
            })
            .collect()
    };
    let path = match crate::paths::resolve_audio_path(data_root, &file.to_string_lossy()) {
        Ok(p) => p,
        Err(e) => return fail_all(e),
    };
    let want: HashMap<usize, Vec<usize>> = rows.iter().fold(HashMap::new(), |mut m, &(r, i)| {
        m.entry(r).or_default().push(i);
        m
    });
    let names = ColumnNames {
        audio: vec![column.to_string()],
        ..ColumnNames::default()
    };
    let mut out: HashMap<usize, Check> = HashMap::new();
    let mut batch: Vec<(Vec<usize>, std::result::Result<AudioCell, String>)> = Vec::new();
    // Cells are decoded in batches over `inner` threads, so one big shard uses every core.
    let flush = |batch: &mut Vec<(Vec<usize>, std::result::Result<AudioCell, String>)>,
                 out: &mut HashMap<usize, Check>| {
        let done = par_map(batch, inner, |(_, cell)| check_cell(cell, &path));
        for ((idxs, _), check) in batch.drain(..).zip(done) {
            for i in idxs {
                out.insert(i, check.clone());
            }
        }
    };
    let res = for_each_row(&path, &names, |pr| {
        if let Some(idxs) = want.get(&pr.row) {
            batch.push((idxs.clone(), pr.audio));
            if batch.len() >= 64 {
                flush(&mut batch, &mut out);
            }
        }
    });
    flush(&mut batch, &mut out);
    let file_err = res.err().map(|e| e.to_string());
    rows.iter()
        .map(|&(r, i)| {
            let c = out.remove(&i).unwrap_or_else(|| Check {
                header: None,
                decoded: Some(Err(file_err.clone().unwrap_or_else(|| {
                    format!("row {r} does not exist in {}", file.display())
                }))),
            });
            (i, c)
        })
        .collect()
}

/// Checks every row of `m`; audio paths are resolved inside `data_root`.
pub fn verify(m: &CorpusManifest, data_root: &Path, opts: &VerifyOptions) -> VerifyReport {
    let rows = &m.rows;
    let mut checks: Vec<Check> = vec![Check::default(); rows.len()];
    let mut jobs: Vec<Job> = Vec::new();
    let mut parquet: BTreeMap<(String, String), Vec<(usize, usize)>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        match r.audio() {
            Ok(AudioRef::File(_)) => jobs.push(Job::File(i)),
            Ok(AudioRef::Parquet { file, row, column }) => {
                parquet.entry((file, column)).or_default().push((row, i))
            }
            Err(e) => checks[i].decoded = Some(Err(e.to_string())),
        }
    }
    for ((file, column), rs) in parquet {
        jobs.push(Job::Parquet {
            file: PathBuf::from(file),
            column,
            rows: rs,
        });
    }
    // Threads left over when there are fewer jobs than threads decode inside a shard.
    let inner = (opts.jobs / jobs.len().max(1)).max(1);
    let total = rows.len() as u64;
    let done = AtomicUsize::new(0);
    let tick = |n: usize| {
        let d = done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(p) = &opts.progress {
            p(d as u64, total);
        }
    };
    let results = par_map(&jobs, opts.jobs, |j| {
        let out = match j {
            Job::File(i) => {
                let aref = AudioRef::File(rows[*i].audio_path.clone());
                vec![(*i, check_file(data_root, &aref))]
            }
            Job::Parquet { file, column, rows } => {
                check_parquet(data_root, file, column, rows, inner)
            }
        };
        tick(out.len());
        out
    });
    for (i, c) in results.into_iter().flatten() {
        checks[i] = c;
    }
    summarize(m, &checks, opts)
}

fn summarize(m: &CorpusManifest, checks: &[Check], opts: &VerifyOptions) -> VerifyReport {
    let mut rep = VerifyReport {
        rows: m.rows.len(),
        malformed_lines: m
            .malformed
            .iter()
            .map(|b| BadLine {
                line: b.line,
                reason: b.reason.clone(),
            })
            .collect(),
        ..VerifyReport::default()
    };
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rates: Vec<Option<u32>> = Vec::with_capacity(m.rows.len());
    for (r, c) in m.rows.iter().zip(checks) {
        let h = r.duration_s / 3600.0;
        rep.hours += h;
        for (map, key) in [
            (&mut rep.by_lang, r.lang.clone()),
            (&mut rep.by_split, r.split.clone()),
        ] {
            let g = map.entry(key).or_default();
            g.rows += 1;
            g.hours += h;
        }
        if let Some(s) = r.speaker.as_ref().filter(|s| !s.is_empty()) {
            let g = rep.by_speaker.entry(s.clone()).or_default();
            g.rows += 1;
            g.hours += h;
        }
        *ids.entry(r.id.as_str()).or_default() += 1;
        if r.text.trim().is_empty() {
            rep.empty_texts.push(r.id.clone());
        }
        let problem = |reason: String| RowProblem {
            id: r.id.clone(),
            audio_path: r.audio_path.clone(),
            reason,
        };
        let decoded_rate = match &c.decoded {
            Some(Ok((d, rate))) => {
                rep.decoded_hours += d / 3600.0;
                let header_s = c.header.and_then(|h| h.2);
                let off = |a: f64, b: f64| (a - b).abs() > opts.tolerance_s;
                if off(r.duration_s, *d) || header_s.is_some_and(|hs| off(hs, *d)) {
                    rep.duration_mismatches.push(DurationMismatch {
                        id: r.id.clone(),
                        audio_path: r.audio_path.clone(),
                        manifest_s: r.duration_s,
                        header_s,
                        decoded_s: *d,
                    });
                }
                Some(*rate)
            }
            Some(Err(e)) => {
                rep.decode_failures.push(problem(e.clone()));
                None
            }
            None => {
                rep.decode_failures.push(problem("not checked".into()));
                None
            }
        };
        let rate = c.header.map(|h| h.0).or(decoded_rate);
        rates.push(rate);
        *rep.sample_rates
            .entry(rate.map_or_else(|| "unknown".into(), |r| r.to_string()))
            .or_default() += 1;
        let ch = c.header.map(|h| h.1);
        *rep.channels
            .entry(ch.map_or_else(|| "unknown".into(), |c| c.to_string()))
            .or_default() += 1;
        if let Some(n) = ch.filter(|&n| n > 1) {
            rep.multi_channel.push(problem(format!("{n} channels")));
        }
    }
    rep.speakers = rep.by_speaker.len();
    rep.duplicate_ids = ids
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, count)| DuplicateId {
            id: id.into(),
            count,
        })
        .collect();
    let common = opts.expected_rate.or_else(|| {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for r in rates.iter().flatten() {
            *counts.entry(*r).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(r, n)| (n, std::cmp::Reverse(r)))
            .map(|(r, _)| r)
    });
    if let Some(want) = common {
        for (r, rate) in m.rows.iter().zip(&rates) {
            if let Some(got) = rate.filter(|g| *g != want) {
                rep.off_rate.push(RowProblem {
                    id: r.id.clone(),
                    audio_path: r.audio_path.clone(),
                    reason: format!("{got} Hz, expected {want} Hz"),
                });
            }
        }
    }
    let (rate_n, mono_n) = (rep.off_rate.len(), rep.multi_channel.len());
    rep.errors = rep.malformed_lines.len()
        + rep.decode_failures.len()
        + rep.duration_mismatches.len()
        + rep.empty_texts.len()
        + rep.duplicate_ids.len()
        + if opts.expected_rate.is_some() {
            rate_n
        } else {
            0
        }
        + if opts.require_mono { mono_n } else { 0 };
    rep.warnings = if opts.expected_rate.is_some() {
        0
    } else {
        rate_n
    } + if opts.require_mono { 0 } else { mono_n };
    rep
}

/// The report as a plain-text table; lists show their first `max_list` entries.
pub fn render_table(rep: &VerifyReport, max_list: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "rows           {:>10}", rep.rows);
    let _ = writeln!(
        s,
        "hours          {:>10.3}  (decoded {:.3})",
        rep.hours, rep.decoded_hours
    );
    let _ = writeln!(s, "speakers       {:>10}", rep.speakers);
    let groups = |s: &mut String, title: &str, m: &BTreeMap<String, Group>, limit: usize| {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.hours.total_cmp(&a.1.hours).then(a.0.cmp(b.0)));
        let w = v
            .iter()
            .take(limit)
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(title.chars().count().saturating_sub(2))
            .max(12);
        let _ = writeln!(
            s,
            "\n{title:<tw$} {:>10} {:>10}",
            "rows",
            "hours",
            tw = w + 2
        );
        for (k, g) in v.iter().take(limit) {
            let _ = writeln!(s, "  {k:<w$} {:>10} {:>10.3}", g.rows, g.hours);
        }
        if v.len() > limit {
            let _ = writeln!(s, "  ... {} more", v.len() - limit);
        }
    };
    groups(&mut s, "language", &rep.by_lang, usize::MAX);
    groups(&mut s, "split", &rep.by_split, usize::MAX);
    groups(&mut s, "speaker (top)", &rep.by_speaker, 10);
    let hist = |m: &BTreeMap<String, usize>, unit: &str| {
        m.iter()
            .map(|(k, n)| format!("{k}{unit}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "\nsample rates   {}", hist(&rep.sample_rates, " Hz"));
    let _ = writeln!(s, "channels       {}", hist(&rep.channels, ""));
    let _ = writeln!(s, "\n{:<22} {:>8}", "check", "found");
    let lines: [(&str, Vec<String>); 8] = [
        (
            "malformed lines",
            rep.malformed_lines
                .iter()
                .map(|b| format!("line {}: {}", b.line, b.reason))
                .collect(),
        ),
        (
            "decode failures",
            rep.decode_failures
                .iter()
                .map(|p| format!("{} ({}): {}", p.id, p.audio_path, p.reason))
                .collect(),
        ),
        (
            "duration mismatches",
            rep.duration_mismatches
                .iter()
                .map(|d| {
                    format!(
                        "{}: manifest {:.3} s, header {}, decoded {:.3} s",
                        d.id,
                        d.manifest_s,
                        d.header_s.map_or("-".into(), |h| format!("{h:.3} s")),
                        d.decoded_s
                    )
                })
                .collect(),
        ),
        ("empty texts", rep.empty_texts.clone()),
        (
            "duplicate ids",
            rep.duplicate_ids
                .iter()
                .map(|d| format!("{} x{}", d.id, d.count))
                .collect(),
        ),
        (
            "off-rate rows",
            rep.off_rate
                .iter()
                .map(|p| format!("{}: {}", p.id, p.reason))
                .collect(),
        ),
        (
            "multi-channel rows",
            rep.multi_channel
                .iter()
                .map(|p| format!("{}: {}", p.id, p.reason))
                .collect(),
        ),
        ("", Vec::new()),
    ];
    for (name, items) in lines.iter().filter(|(n, _)| !n.is_empty()) {
        let _ = writeln!(s, "{name:<22} {:>8}", items.len());
        for it in items.iter().take(max_list) {
            let _ = writeln!(s, "    {it}");
        }
        if items.len() > max_list {
            let _ = writeln!(s, "    ... {} more (see --json)", items.len() - max_list);
        }
    }
    let _ = writeln!(s, "\nerrors {}, warnings {}", rep.errors, rep.warnings);
    s
}
