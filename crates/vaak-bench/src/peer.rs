//! Running a Python peer benchmark from the fixture venv.
//!
//! The peer scripts (`crates/vaak-bench/peers/*.py`) are embedded in the binary, so `vaak bench`
//! works from any directory; only the interpreter is looked up: `--python`, then
//! `$VAAK_PYTHON`, then the fixture venv at `tools/fixtures/.venv` below the current directory.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report::Measurement;

/// What every peer script imports (`from bench_common import ...`); written beside it.
const COMMON_NAME: &str = "bench_common.py";
const COMMON_SCRIPT: &str = include_str!("../peers/bench_common.py");

/// The flags of a benchmark's Python peer.
#[derive(Args)]
pub struct PeerArgs {
    /// Python interpreter with the peer libraries (default: $VAAK_PYTHON, then
    /// tools/fixtures/.venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the Python peer.
    #[arg(long)]
    pub no_peer: bool,
}

/// Measuring time and the peer's thread count, for benchmarks whose cases take long.
#[derive(Args)]
pub struct PeerTimingArgs {
    /// Minimum measuring time per case, in seconds (after one warm-up pass).
    #[arg(long, default_value_t = 0.5)]
    pub min_time: f64,
    /// Thread count for the PyTorch peer (default: all logical CPUs, as candle uses).
    #[arg(long)]
    pub peer_threads: Option<usize>,
}

impl PeerArgs {
    /// The interpreter to run the peer with; without one, `None` and a note saying why
    /// (`"<who> skipped (--no-peer)"`, or why none was found).
    pub fn interpreter(&self, who: &str, notes: &mut Vec<String>) -> Option<PathBuf> {
        if self.no_peer {
            notes.push(format!("{who} skipped (--no-peer)"));
            return None;
        }
        find_python(self.python.as_deref())
            .map_err(|why| notes.push(why))
            .ok()
    }
}

/// The interpreter to use, or why there is none.
pub fn find_python(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--python {} does not exist", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("VAAK_PYTHON") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(format!("VAAK_PYTHON={} does not exist", p.display()))
        };
    }
    let venv = Path::new("tools/fixtures/.venv/bin/python");
    if venv.exists() {
        return Ok(venv.to_path_buf());
    }
    Err(
        "no Python peer: set VAAK_PYTHON or create tools/fixtures/.venv \
         (see tools/fixtures/README.md)"
            .to_string(),
    )
}

/// Writes `script` (and the helpers it imports) to a temp dir, runs it with `args` plus
/// `--json <out>`, and parses the JSON it wrote. The peer's stderr is passed through so its
/// failures are visible.
pub fn run_script(
    python: &Path,
    name: &str,
    script: &str,
    args: &[String],
) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("creating a temp dir for the peer script")?;
    let script_path = dir.path().join(name);
    for (path, text) in [
        (script_path.clone(), script),
        (dir.path().join(COMMON_NAME), COMMON_SCRIPT),
    ] {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = dir.path().join("peer.json");
    let status = Command::new(python)
        .arg(&script_path)
        .args(args)
        .arg("--json")
        .arg(&out)
        .status()
        .with_context(|| format!("starting {}", python.display()))?;
    if !status.success() {
        bail!("peer {name} failed ({status})");
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("peer {name} wrote no {}", out.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing peer {name} output"))
}

/// A peer's rows for one case (`[{"implementation", "seconds", "threads"}]`) as measurements
/// of `work` units per pass; rows without a name or a time are left out.
pub fn measurements(rows: &serde_json::Value, work: f64) -> Vec<Measurement> {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Measurement {
                implementation: p["implementation"].as_str()?.to_string(),
                seconds: p["seconds"].as_f64()?,
                throughput: work / p["seconds"].as_f64()?,
                threads: p["threads"].as_u64().unwrap_or(1) as usize,
            })
        })
        .collect()
}

/// `"peer versions: torch 2.x, ..."` from a peer's `"versions"` object, if it wrote one.
pub fn versions_note(peer_out: &serde_json::Value) -> Option<String> {
    let list: Vec<String> = peer_out["versions"]
        .as_object()?
        .iter()
        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
        .collect();
    Some(format!("peer versions: {}", list.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rows_become_measurements_of_the_given_work() {
        let rows = serde_json::json!([
            {"implementation": "torch", "seconds": 0.5, "threads": 2},
            {"implementation": "no time"},
            {"seconds": 1.0},
        ]);
        let m = measurements(&rows, 10.0);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].implementation, "torch");
        assert_eq!(m[0].threads, 2);
        assert!((m[0].throughput - 20.0).abs() < 1e-12);
        assert!(measurements(&serde_json::Value::Null, 1.0).is_empty());
    }

    #[test]
    fn versions_note_lists_each_library() {
        let v = serde_json::json!({"versions": {"torch": "2.5", "transformers": "4.5"}});
        assert_eq!(
            versions_note(&v).unwrap(),
            "peer versions: torch 2.5, transformers 4.5"
        );
        assert_eq!(versions_note(&serde_json::json!({})), None);
    }

    #[test]
    fn no_peer_is_noted_with_who_skipped() {
        let args = PeerArgs {
            python: None,
            no_peer: true,
        };
        let mut notes = Vec::new();
        assert_eq!(args.interpreter("transformers peer", &mut notes), None);
        assert_eq!(notes, ["transformers peer skipped (--no-peer)"]);
    }
}
