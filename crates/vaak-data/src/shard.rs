//! `vaak data shard`: a corpus cut into sequential-read shards, in the style of lhotse Shar and
//! WebDataset.
//!
//! A shard directory holds, per shard `NNNNNN` (from `000000`):
//!
//! - `cuts.NNNNNN.jsonl`: the shard's [`CorpusRow`]s, unchanged (the original `audio_path`
//!   stays, for provenance);
//! - `audio.NNNNNN.tar`: one member per row, in the same order, named `<safe id>.<ext>` (see
//!   [`crate::safe_id`]; `ext` is the source file's extension, or for a parquet cell the
//!   extension of the file name stored with it), holding the file's bytes as they are (FLAC,
//!   WAV, ...);
//!
//! and `shards.json`, the index ([`ShardIndex`]), written last. Every file is written to a
//! temporary name and renamed, so a directory with `shards.json` is complete.
//!
//! [`ShardReader::iter`] reads rank `rank`'s shards (shard `i` goes to rank `i % world_size`)
//! one after the other, each from start to end.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::atomic::write_atomic;
use crate::audio_ref::resolve_ref_file;
use crate::corpus::{read_corpus, AudioRef, CorpusRow};
use crate::error::{DataError, Result};
use crate::parquet_audio::read_audio_cell_full;
use crate::paths::resolve_audio_path;
use crate::safe_id::safe_id;

/// The index file's name; its presence marks a shard directory.
pub const SHARD_INDEX: &str = "shards.json";

/// One shard's entry in the index.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardEntry {
    pub cuts: String,
    pub audio: String,
    pub rows: usize,
    pub hours: f64,
}

/// `shards.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardIndex {
    pub format: String,
    pub shard_size: usize,
    pub rows: usize,
    pub hours: f64,
    pub shards: Vec<ShardEntry>,
}

/// The format name in [`ShardIndex::format`].
pub const SHARD_FORMAT: &str = "vaak-shards-v1";

/// Whether `dir` is a shard directory (has `shards.json`).
pub fn is_shard_dir(dir: &Path) -> bool {
    dir.join(SHARD_INDEX).is_file()
}

/// The tar member name of a row whose audio file is `audio_path`.
pub fn member_name(row: &CorpusRow, audio_path: &str) -> String {
    let ext = Path::new(audio_path)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty())
        .unwrap_or("audio");
    format!("{}.{}", safe_id(&row.id), ext.to_ascii_lowercase())
}

/// Writes the shards of `manifest` into `out`; returns the index.
pub fn shard(
    manifest: &Path,
    out: &Path,
    data_root: Option<&Path>,
    shard_size: usize,
) -> Result<ShardIndex> {
    if shard_size == 0 {
        return Err(DataError::Manifest {
            path: manifest.into(),
            reason: "--shard-size must be at least 1".into(),
        });
    }
    let m = read_corpus(manifest)?;
    if let Some(b) = m.malformed.first() {
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
    let root = data_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.parent().map(Path::to_path_buf).unwrap_or_default());
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    // A rerun rewrites the whole directory; drop the old index first so a crash in between
    // never leaves an index naming shards of another run.
    let index_path = out.join(SHARD_INDEX);
    if index_path.exists() {
        std::fs::remove_file(&index_path).map_err(|e| DataError::io(&index_path, e))?;
    }
    let mut shards = Vec::new();
    for (i, chunk) in m.rows.chunks(shard_size).enumerate() {
        let cuts = format!("cuts.{i:06}.jsonl");
        let audio = format!("audio.{i:06}.tar");
        let mut tar = tar::Builder::new(Vec::new());
        let mut lines = Vec::new();
        for row in chunk {
            // A parquet cell is stored as the file it was (its original name's extension).
            let r = row.audio()?;
            let (name, bytes) = match &r {
                AudioRef::File(p) => {
                    let path =
                        resolve_audio_path(&root, p).map_err(|reason| DataError::AudioSource {
                            path: p.clone().into(),
                            reason: format!("row {}: {reason}", row.id),
                        })?;
                    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
                    (member_name(row, p), bytes)
                }
                AudioRef::Parquet {
                    row: cell_row,
                    column,
                    ..
                } => {
                    let file = resolve_ref_file(&root, &r)?;
                    let cell = read_audio_cell_full(&file, *cell_row, column)?;
                    let name = member_name(row, cell.path.as_deref().unwrap_or(""));
                    (name, cell.bytes)
                }
            };
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, &name, bytes.as_slice())
                .map_err(|e| DataError::io(out.join(&audio), e))?;
            serde_json::to_writer(&mut lines, row).expect("a CorpusRow always serializes");
            lines.push(b'\n');
        }
        let tar_bytes = tar
            .into_inner()
            .map_err(|e| DataError::io(out.join(&audio), e))?;
        write_atomic(&out.join(&audio), &tar_bytes)?;
        write_atomic(&out.join(&cuts), &lines)?;
        shards.push(ShardEntry {
            cuts,
            audio,
            rows: chunk.len(),
            hours: chunk.iter().map(|r| r.duration_s).sum::<f64>() / 3600.0,
        });
    }
    let index = ShardIndex {
        format: SHARD_FORMAT.into(),
        shard_size,
        rows: m.rows.len(),
        hours: shards.iter().map(|s| s.hours).sum(),
        shards,
    };
    let json = serde_json::to_vec_pretty(&index).expect("the index always serializes");
    write_atomic(&index_path, &json)?;
    Ok(index)
}

/// One row read back from a shard, with its audio file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardItem {
    pub shard: usize,
    pub row: CorpusRow,
    /// The tar member name (`<safe id>.<ext>`).
    pub member: String,
    pub audio: Vec<u8>,
}

/// Reads a shard directory.
#[derive(Clone, Debug)]
pub struct ShardReader {
    dir: PathBuf,
    index: ShardIndex,
}

impl ShardReader {
    /// Opens `dir` (reads `shards.json`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let p = dir.join(SHARD_INDEX);
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| DataError::Manifest {
            path: p.clone(),
            reason: format!("bad shard index: {e}"),
        })?;
        if index.format != SHARD_FORMAT {
            return Err(DataError::Manifest {
                path: p,
                reason: format!("shard format {:?}, expected {SHARD_FORMAT:?}", index.format),
            });
        }
        Ok(Self { dir, index })
    }

    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// The shard numbers rank `rank` of `world_size` reads: `i % world_size == rank`.
    pub fn shards_of(&self, rank: usize, world_size: usize) -> Result<Vec<usize>> {
        if world_size == 0 || rank >= world_size {
            return Err(DataError::Manifest {
                path: self.dir.join(SHARD_INDEX),
                reason: format!("rank {rank} of world size {world_size}"),
            });
        }
        Ok((0..self.index.shards.len())
            .filter(|i| i % world_size == rank)
            .collect())
    }

    /// The items of rank `rank`'s shards, shard by shard, each read sequentially.
    pub fn iter(
        &self,
        rank: usize,
        world_size: usize,
    ) -> Result<impl Iterator<Item = Result<ShardItem>> + '_> {
        let shards = self.shards_of(rank, world_size)?;
        Ok(shards
            .into_iter()
            .flat_map(move |i| match self.read_shard(i) {
                Ok(items) => items,
                Err(e) => vec![Err(e)],
            }))
    }

    /// Every item of shard `i`, in order. Each element is `Ok` unless the shard is corrupt.
    fn read_shard(&self, i: usize) -> Result<Vec<Result<ShardItem>>> {
        let e = &self.index.shards[i];
        let cuts_path = self.dir.join(&e.cuts);
        let f = File::open(&cuts_path).map_err(|err| DataError::io(&cuts_path, err))?;
        let mut rows = Vec::new();
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|err| DataError::io(&cuts_path, err))?;
            if line.trim().is_empty() {
                continue;
            }
            rows.push(serde_json::from_str::<CorpusRow>(&line).map_err(|err| {
                DataError::Manifest {
                    path: cuts_path.clone(),
                    reason: format!("line {}: {err}", n + 1),
                }
            })?);
        }
        let tar_path = self.dir.join(&e.audio);
        let f = File::open(&tar_path).map_err(|err| DataError::io(&tar_path, err))?;
        let mut archive = tar::Archive::new(BufReader::new(f));
        let mut out = Vec::with_capacity(rows.len());
        let mut rows = rows.into_iter();
        for entry in archive
            .entries()
            .map_err(|err| DataError::io(&tar_path, err))?
        {
            let mut entry = entry.map_err(|err| DataError::io(&tar_path, err))?;
            let member = entry
                .path()
                .map_err(|err| DataError::io(&tar_path, err))?
                .display()
                .to_string();
            let Some(row) = rows.next() else {
                return Err(DataError::Manifest {
                    path: tar_path,
                    reason: format!("member {member} has no row in {}", e.cuts),
                });
            };
            let stem = member.rsplit_once('.').map_or(member.as_str(), |m| m.0);
            if stem != safe_id(&row.id) {
                return Err(DataError::Manifest {
                    path: tar_path,
                    reason: format!("member {member} where row {} was expected", row.id),
                });
            }
            let mut audio = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut audio)
                .map_err(|err| DataError::io(&tar_path, err))?;
            out.push(Ok(ShardItem {
                shard: i,
                row,
                member,
                audio,
            }));
        }
        if let Some(row) = rows.next() {
            return Err(DataError::Manifest {
                path: tar_path,
                reason: format!("no member for row {}", row.id),
            });
        }
        Ok(out)
    }
}

/// Writes rank `rank`'s audio members into `dest` as files (kept when one of the same size is
/// already there; written atomically otherwise) and returns their paths in read order: how the
/// trainers, which read files, use a shard directory.
pub fn unpack_rank(
    dir: &Path,
    rank: usize,
    world_size: usize,
    dest: &Path,
) -> Result<Vec<PathBuf>> {
    let reader = ShardReader::open(dir)?;
    std::fs::create_dir_all(dest).map_err(|e| DataError::io(dest, e))?;
    let mut paths = Vec::new();
    for item in reader.iter(rank, world_size)? {
        let item = item?;
        let p = dest.join(&item.member);
        let same = std::fs::metadata(&p).is_ok_and(|m| m.len() == item.audio.len() as u64);
        if !same {
            write_atomic(&p, &item.audio)?;
        }
        paths.push(p);
    }
    Ok(paths)
}
