//! Corpus manifests: one row per utterance of a downloaded corpus, as `vaak data manifest`
//! writes them and `verify`, `prepare`, `augment`, `split` and `shard` read and write them.
//!
//! The file is JSON Lines (one [`CorpusRow`] object per line), or CSV in the cascade's layout
//! (`id,lang,audio_path,duration_s,text,...`). Both read back through the cascade's own
//! [`crate::manifest`] reader, so every corpus manifest is also a cascade manifest.
//!
//! Audio is a file path (relative to the manifest's data root or absolute) or a cell of a
//! Hugging Face parquet shard with embedded audio bytes, written `shard.parquet#row=12` (column
//! `audio` unless `&column=NAME` follows); [`AudioRef`] parses and prints that form.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{DataError, Result};
use crate::manifest::{read_manifest, MalformedRow, ManifestRow};

/// One utterance of a corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorpusRow {
    pub id: String,
    pub lang: String,
    /// The recipe's name (`librispeech`, `common_voice`, ...).
    pub dataset: String,
    /// The corpus's own split name (`train-clean-100`, `dev`, ...); `split` may rewrite it.
    pub split: String,
    /// A file path or a parquet cell; see [`AudioRef`].
    pub audio_path: String,
    /// From the file header (or the decoded cell), not from the corpus's metadata.
    pub duration_s: f64,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// For derived rows (`prepare`, `augment`): the id of the row it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// For augmented rows: what was done (`speed=0.9`, `pitch=+2`, `noise_snr=10`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
}

/// The columns of the CSV form, in order (the cascade's required four first).
pub const CSV_COLUMNS: [&str; 12] = [
    "id",
    "lang",
    "audio_path",
    "duration_s",
    "text",
    "dataset",
    "split",
    "speaker",
    "sample_rate",
    "channels",
    "source_id",
    "augment",
];

impl CorpusRow {
    /// The row's audio location, parsed.
    pub fn audio(&self) -> Result<AudioRef> {
        AudioRef::parse(&self.audio_path)
    }

    fn from_manifest_row(r: &ManifestRow) -> std::result::Result<Self, String> {
        let opt = |k: &str| r.get(k).filter(|v| !v.is_empty()).map(str::to_string);
        let parse_num = |k: &str| -> std::result::Result<Option<u32>, String> {
            opt(k)
                .map(|v| v.parse::<u32>().map_err(|e| format!("bad {k} {v:?}: {e}")))
                .transpose()
        };
        Ok(Self {
            id: r.id.clone(),
            lang: r.lang.clone(),
            dataset: opt("dataset").unwrap_or_default(),
            split: opt("split").unwrap_or_default(),
            audio_path: r.audio_path.clone(),
            duration_s: r.duration_s,
            text: r.text.clone().unwrap_or_default(),
            speaker: opt("speaker"),
            sample_rate: parse_num("sample_rate")?,
            channels: parse_num("channels")?
                .map(|c| u16::try_from(c).map_err(|_| format!("bad channels {c}")))
                .transpose()?,
            source_id: opt("source_id"),
            augment: opt("augment"),
        })
    }

    fn csv_record(&self) -> [String; 12] {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            self.id.clone(),
            self.lang.clone(),
            self.audio_path.clone(),
            format!("{}", self.duration_s),
            self.text.clone(),
            self.dataset.clone(),
            self.split.clone(),
            o(&self.speaker),
            self.sample_rate.map(|v| v.to_string()).unwrap_or_default(),
            self.channels.map(|v| v.to_string()).unwrap_or_default(),
            o(&self.source_id),
            o(&self.augment),
        ]
    }
}

/// Where a row's audio lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudioRef {
    /// A file, as written in the manifest (relative to the data root, or absolute).
    File(String),
    /// Row `row` (0-based, over the whole file) of column `column` of a parquet file whose cells
    /// hold encoded audio bytes (Hugging Face `Audio` feature: a struct with `bytes` and `path`).
    Parquet {
        file: String,
        row: usize,
        column: String,
    },
}

/// The parquet column read when a reference names none.
pub const DEFAULT_PARQUET_COLUMN: &str = "audio";

impl AudioRef {
    /// Parses `path` or `file.parquet#row=N[&column=NAME]`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: String| DataError::AudioSource {
            path: s.into(),
            reason,
        };
        let Some((file, frag)) = s.split_once('#') else {
            return Ok(Self::File(s.to_string()));
        };
        let (mut row, mut column) = (None, DEFAULT_PARQUET_COLUMN.to_string());
        for kv in frag.split('&') {
            match kv.split_once('=') {
                Some(("row", v)) => {
                    row = Some(
                        v.parse::<usize>()
                            .map_err(|e| bad(format!("bad parquet row {v:?}: {e}")))?,
                    )
                }
                Some(("column", v)) if !v.is_empty() => column = v.to_string(),
                _ => {
                    return Err(bad(format!(
                        "unknown audio reference part {kv:?}; expected FILE.parquet#row=N[&column=NAME]"
                    )))
                }
            }
        }
        let row = row.ok_or_else(|| bad("a parquet reference needs #row=N".into()))?;
        Ok(Self::Parquet {
            file: file.to_string(),
            row,
            column,
        })
    }
}

impl fmt::Display for AudioRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => f.write_str(p),
            Self::Parquet { file, row, column } if column == DEFAULT_PARQUET_COLUMN => {
                write!(f, "{file}#row={row}")
            }
            Self::Parquet { file, row, column } => write!(f, "{file}#row={row}&column={column}"),
        }
    }
}

/// A corpus manifest read back: its rows and the lines that could not be used.
#[derive(Clone, Debug)]
pub struct CorpusManifest {
    pub rows: Vec<CorpusRow>,
    pub malformed: Vec<MalformedRow>,
}

/// Reads a corpus manifest (JSONL or CSV; told from the content).
pub fn read_corpus(path: &Path) -> Result<CorpusManifest> {
    let m = read_manifest(path, false)?;
    let mut rows = Vec::with_capacity(m.rows.len());
    let mut malformed = m.malformed;
    for r in &m.rows {
        match CorpusRow::from_manifest_row(r) {
            Ok(row) => rows.push(row),
            Err(reason) => malformed.push(MalformedRow {
                line: r.line,
                reason,
            }),
        }
    }
    Ok(CorpusManifest { rows, malformed })
}

/// Writes rows as JSONL, or CSV when `path` ends in `.csv`; atomically ([`write_atomic`]), so a
/// crash never leaves half a manifest under the final name.
pub fn write_corpus(path: &Path, rows: &[CorpusRow]) -> Result<()> {
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut buf = Vec::new();
    if csv {
        let mut w = csv::Writer::from_writer(&mut buf);
        let map = |e: csv::Error| DataError::Manifest {
            path: path.into(),
            reason: e.to_string(),
        };
        w.write_record(CSV_COLUMNS).map_err(map)?;
        for r in rows {
            w.write_record(r.csv_record()).map_err(map)?;
        }
        w.flush().map_err(|e| DataError::io(path, e))?;
    } else {
        for r in rows {
            serde_json::to_writer(&mut buf, r).expect("a CorpusRow always serializes");
            buf.push(b'\n');
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    write_atomic(path, &buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, audio: &str) -> CorpusRow {
        CorpusRow {
            id: id.into(),
            lang: "te".into(),
            dataset: "kathbath".into(),
            split: "valid".into(),
            audio_path: audio.into(),
            duration_s: 1.25,
            text: "నమస్కారం, \"quoted\"".into(),
            speaker: Some("spk7".into()),
            sample_rate: Some(16000),
            channels: Some(1),
            source_id: None,
            augment: Some("speed=0.9".into()),
        }
    }

    #[test]
    fn jsonl_and_csv_round_trip_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![row("a", "clips/a.wav"), row("b", "x/train-0.parquet#row=3")];
        for name in ["m.jsonl", "m.csv"] {
            let p = dir.path().join(name);
            write_corpus(&p, &rows).unwrap();
            let back = read_corpus(&p).unwrap();
            assert!(back.malformed.is_empty(), "{name}: {:?}", back.malformed);
            assert_eq!(back.rows, rows, "{name}");
        }
    }

    #[test]
    fn audio_refs_parse_and_print() {
        assert_eq!(
            AudioRef::parse("a/b.flac").unwrap(),
            AudioRef::File("a/b.flac".into())
        );
        let p = AudioRef::parse("d/train-00000.parquet#row=12&column=speech").unwrap();
        assert_eq!(
            p,
            AudioRef::Parquet {
                file: "d/train-00000.parquet".into(),
                row: 12,
                column: "speech".into()
            }
        );
        assert_eq!(p.to_string(), "d/train-00000.parquet#row=12&column=speech");
        assert_eq!(
            AudioRef::parse("x.parquet#row=0").unwrap().to_string(),
            "x.parquet#row=0"
        );
        assert!(AudioRef::parse("x.parquet#row=abc").is_err());
        assert!(AudioRef::parse("x.parquet#col=1").is_err());
        assert!(AudioRef::parse("x.parquet#column=audio").is_err());
    }
}
