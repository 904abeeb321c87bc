//! Running a Python peer benchmark from the fixture venv.
//!
//! The peer scripts are embedded in the binary, so `vaak bench` works from any directory; only
//! the interpreter is looked up: `--python`, then `$VAAK_PYTHON`, then the fixture venv at
//! `tools/fixtures/.venv` below the current directory.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Writes `script` to a temp file, runs it with `args` plus `--json <out>`, and parses the JSON
/// it wrote. The peer's stderr is passed through so its failures are visible.
pub fn run_script(
    python: &Path,
    name: &str,
    script: &str,
    args: &[String],
) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir().context("creating a temp dir for the peer script")?;
    let script_path = dir.path().join(name);
    std::fs::write(&script_path, script)
        .with_context(|| format!("writing {}", script_path.display()))?;
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
