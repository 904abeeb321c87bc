//! The teacher cascade's parallel samples as `vaak_s2s::train::PairFiles`: every finished
//! (`DONE`) sample directory under `<root>/parallel/<direction>/`, or under one
//! `parallel/<direction>` directory given directly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vaak_s2s::train::PairFiles;

/// The `parallel/<direction>` directories `data` holds (itself when it is one).
fn direction_dirs(data: &Path) -> Result<Vec<PathBuf>> {
    let has_samples = |d: &Path| -> bool {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().join("DONE").is_file() || e.path().join("meta.json").is_file())
        })
    };
    if has_samples(data) {
        return Ok(vec![data.to_path_buf()]);
    }
    let root = if data.join("parallel").is_dir() {
        data.join("parallel")
    } else {
        data.to_path_buf()
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("listing {}", root.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && has_samples(p))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// A string field of `meta.json` (top level, then the manifest columns).
fn meta_str(meta: &serde_json::Value, key: &str) -> Option<String> {
    meta.get(key)
        .or_else(|| meta.get("manifest").and_then(|m| m.get(key)))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The finished samples of the cascade output at `data`, in direction then directory order.
/// A sample whose `meta.json` cannot be read is still listed (its files decide whether it is
/// usable); unfinished and temporary directories are passed over.
pub fn parallel_pairs(data: &Path) -> Result<Vec<PairFiles>> {
    if !data.is_dir() {
        bail!(
            "--data {}: stages s2s and cond read the teacher cascade's output directory \
             (<root>/parallel/<direction>/<id>/ with src.wav, tgt.wav, spk.npy, meta.json)",
            data.display()
        );
    }
    let dirs = direction_dirs(data)?;
    if dirs.is_empty() {
        bail!(
            "{}: no parallel/<direction>/ sample directories (run `vaak cascade` first)",
            data.display()
        );
    }
    let mut out = Vec::new();
    for d in dirs {
        let mut samples: Vec<PathBuf> = std::fs::read_dir(&d)
            .with_context(|| format!("listing {}", d.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join("DONE").is_file())
            .collect();
        samples.sort();
        for s in samples {
            let meta: Option<serde_json::Value> = std::fs::read(s.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let name = s
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let m = meta.unwrap_or(serde_json::Value::Null);
            out.push(PairFiles {
                id: meta_str(&m, "id").unwrap_or(name),
                src_wav: s.join("src.wav"),
                tgt_wav: s.join("tgt.wav"),
                // Part of every sample: a missing one skips the sample (counted).
                spk_npy: Some(s.join("spk.npy")),
                tokens_npy: Some(s.join("tokens.npy")),
                tgt_lang: meta_str(&m, "tgt_lang"),
                emotion: meta_str(&m, "emotion"),
                bad: meta_str(&m, "status").is_some_and(|s| s != "ok"),
            });
        }
    }
    Ok(out)
}
