//! `vaak data split`: speaker-disjoint train/val/test manifests, ratios by hours, seeded.
//!
//! Rows are grouped by speaker (a row without a speaker is a group of its own, keyed by its
//! id). The groups are shuffled with a ChaCha8 generator seeded by `seed`, then dealt one by one
//! to the split furthest below its target hours (target minus hours so far, relative to the
//! target). No speaker is in two splits; the hours land near the ratios when there are many
//! speakers, and as near as whole speakers allow when there are few. Each row's `split` field
//! is rewritten to `train`, `val` or `test`.
//!
//! Audio paths are copied unchanged: the split manifests resolve them against the same data
//! root as the input (write them into the manifest's directory, or read them with
//! `--data-root` pointing there).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::corpus::{read_corpus, write_corpus, CorpusRow};
use crate::error::{DataError, Result};

/// The split names, in order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// One split's totals.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SplitStats {
    pub name: String,
    pub rows: usize,
    pub hours: f64,
    /// Distinct speaker groups (rows without a speaker count one each).
    pub speakers: usize,
    pub path: PathBuf,
}

/// Assigns each row to a split: returns, per split, the row indices. `ratios` are normalised
/// (they must be finite, non-negative and not all zero).
pub fn assign(rows: &[CorpusRow], ratios: [f64; 3], seed: u64) -> Result<[Vec<usize>; 3]> {
    let total_ratio: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| !r.is_finite() || *r < 0.0) || total_ratio <= 0.0 {
        return Err(DataError::Manifest {
            path: PathBuf::from("<split ratios>"),
            reason: format!("ratios {ratios:?} must be non-negative and not all zero"),
        });
    }
    let mut groups: BTreeMap<String, (Vec<usize>, f64)> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let key = match &r.speaker {
            Some(s) if !s.is_empty() => format!("spk:{s}"),
            _ => format!("id:{}", r.id),
        };
        let g = groups.entry(key).or_default();
        g.0.push(i);
        g.1 += r.duration_s.max(0.0);
    }
    let mut groups: Vec<(Vec<usize>, f64)> = groups.into_values().collect();
    groups.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let total_h: f64 = groups.iter().map(|g| g.1).sum();
    let target: Vec<f64> = ratios.iter().map(|r| r / total_ratio * total_h).collect();
    let mut have = [0f64; 3];
    let mut out: [Vec<usize>; 3] = Default::default();
    for (idx, hours) in groups {
        let pick = (0..3)
            .filter(|&s| target[s] > 0.0)
            .max_by(|&a, &b| {
                let da = (target[a] - have[a]) / target[a];
                let db = (target[b] - have[b]) / target[b];
                da.total_cmp(&db).then(b.cmp(&a))
            })
            .expect("some ratio is positive");
        have[pick] += hours;
        out[pick].extend(idx);
    }
    for s in &mut out {
        s.sort_unstable();
    }
    Ok(out)
}

/// Splits `manifest` into `out/{train,val,test}.jsonl`.
pub fn split(manifest: &Path, out: &Path, ratios: [f64; 3], seed: u64) -> Result<Vec<SplitStats>> {
    let m = read_corpus(manifest)?;
    if !m.malformed.is_empty() {
        let b = &m.malformed[0];
        return Err(DataError::Manifest {
            path: manifest.into(),
            reason: format!(
                "{} malformed line(s), first line {}: {}",
                m.malformed.len(),
                b.line,
                b.reason
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let parts = assign(&m.rows, ratios, seed)?;
    let mut stats = Vec::new();
    for (name, idx) in SPLITS.iter().zip(parts) {
        let mut rows = Vec::with_capacity(idx.len());
        let mut speakers = HashSet::new();
        for i in idx {
            let mut r = m.rows[i].clone();
            speakers.insert(r.speaker.clone().unwrap_or_else(|| format!("\0{}", r.id)));
            r.split = (*name).to_string();
            rows.push(r);
        }
        let path = out.join(format!("{name}.jsonl"));
        write_corpus(&path, &rows)?;
        stats.push(SplitStats {
            name: (*name).to_string(),
            rows: rows.len(),
            hours: rows.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0,
            speakers: speakers.len(),
            path,
        });
    }
    Ok(stats)
}

/// Parses `0.8,0.1,0.1`.
pub fn parse_ratios(s: &str) -> std::result::Result<[f64; 3], String> {
    let v = crate::augment::parse_list(s)?;
    <[f64; 3]>::try_from(v).map_err(|v| format!("--ratios needs 3 numbers, got {}", v.len()))
}
