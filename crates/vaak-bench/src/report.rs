//! Benchmark results: one row per (case, implementation), a text table and a JSON file.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to keep repeating a case, and the bounds on the repeat count.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub min_time: Duration,
    pub min_iters: usize,
    pub max_iters: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            min_time: Duration::from_millis(800),
            min_iters: 3,
            max_iters: 1000,
        }
    }
}

/// Runs `f` once to warm up, then repeatedly; returns the median seconds per call.
pub fn time_median<F: FnMut() -> Result<()>>(timing: Timing, mut f: F) -> Result<f64> {
    f()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < timing.max_iters
        && (samples.len() < timing.min_iters || start.elapsed() < timing.min_time)
    {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[samples.len() / 2])
}

/// One measured implementation of one case.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub implementation: String,
    /// Median seconds for one pass over the case's whole input.
    pub seconds: f64,
    /// Units of work per second; for audio, seconds of audio per second (x real time).
    pub throughput: f64,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub unit: String,
    pub vaak: Measurement,
    pub peers: Vec<Measurement>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub benchmark: String,
    pub machine: Machine,
    pub input: serde_json::Value,
    pub cases: Vec<CaseResult>,
    /// Why a peer is absent, when it is.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub os: &'static str,
    pub arch: &'static str,
    pub logical_cpus: usize,
    pub vaak_version: &'static str,
    pub profile: &'static str,
}

impl Machine {
    pub fn here() -> Self {
        Self {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            vaak_version: env!("CARGO_PKG_VERSION"),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

impl Report {
    /// The text table: one line per implementation, with vaak's speed-up over each peer.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "case",
            "implementation",
            "threads",
            "time/pass",
            "throughput",
            "vaak speed-up",
        ]
        .map(String::from)
        .to_vec()];
        for c in &self.cases {
            rows.push(vec![
                c.case.clone(),
                c.vaak.implementation.clone(),
                c.vaak.threads.to_string(),
                fmt_secs(c.vaak.seconds),
                format!("{:.1} {}", c.vaak.throughput, c.unit),
                String::new(),
            ]);
            for p in &c.peers {
                rows.push(vec![
                    String::new(),
                    p.implementation.clone(),
                    p.threads.to_string(),
                    fmt_secs(p.seconds),
                    format!("{:.1} {}", p.throughput, c.unit),
                    format!("{:.2}x", p.seconds / c.vaak.seconds),
                ]);
            }
        }
        let mut out = columns(&rows);
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// Prints the table on stdout and writes the JSON to `path`.
    pub fn emit(&self, path: &Path) -> Result<()> {
        print!("{}", self.table());
        self.write_json(path)
    }
}

/// Writes `value` as pretty JSON to `path` (creating its directory; atomically, through a
/// `.json.tmp` beside it) and says so on stderr.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Rows as left-aligned columns two spaces apart, with a dashed rule under the first (the
/// header); trailing blanks trimmed.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n_cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n_cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let total = widths.iter().sum::<usize>() + 2 * n_cols.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, seconds: f64) -> Measurement {
        Measurement {
            implementation: name.into(),
            seconds,
            throughput: 10.0 / seconds,
            threads: 1,
        }
    }

    #[test]
    fn table_reports_speedup_as_peer_over_vaak_time() {
        let r = Report {
            benchmark: "t".into(),
            machine: Machine::here(),
            input: serde_json::json!({}),
            cases: vec![CaseResult {
                case: "c".into(),
                unit: "x RT".into(),
                vaak: m("vaak", 0.5),
                peers: vec![m("peer", 2.0)],
            }],
            notes: vec!["n".into()],
        };
        let t = r.table();
        assert!(t.contains("4.00x"), "{t}");
        assert!(t.contains("note: n"));
    }

    #[test]
    fn median_uses_the_middle_sample() -> Result<()> {
        let mut calls = 0;
        let timing = Timing {
            min_time: Duration::ZERO,
            min_iters: 5,
            max_iters: 5,
        };
        let s = time_median(timing, || {
            calls += 1;
            Ok(())
        })?;
        assert_eq!(calls, 6, "one warm-up plus five timed calls");
        assert!(s >= 0.0);
        Ok(())
    }
}
