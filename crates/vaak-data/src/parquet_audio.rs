//! Hugging Face parquet shards with embedded audio (IndicVoices, IndicTTS, Kathbath on the Hub).
//!
//! A shard is a parquet file whose audio column is either the `datasets` `Audio` feature (a
//! struct with `bytes: binary` and `path: string`) or a plain binary column of encoded audio
//! (WAV, FLAC, MP3, ...). Text, id, speaker and language are ordinary columns, found by name
//! from lists of candidates ([`ColumnNames`]). Only the parquet record API is used (no arrow),
//! and only the columns asked for are read.
//!
//! Rows are numbered from 0 over the whole file (all row groups), which is what an
//! [`crate::corpus::AudioRef::Parquet`] reference stores.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use crate::error::{DataError, Result};

/// Column names to look for, each a list of candidates tried in order (case-sensitive, as
/// parquet column names are). An empty list means "not wanted".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnNames {
    pub audio: Vec<String>,
    pub text: Vec<String>,
    pub id: Vec<String>,
    pub speaker: Vec<String>,
    pub lang: Vec<String>,
}

impl ColumnNames {
    /// Candidates from string slices.
    pub fn new(
        audio: &[&str],
        text: &[&str],
        id: &[&str],
        speaker: &[&str],
        lang: &[&str],
    ) -> Self {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Self {
            audio: v(audio),
            text: v(text),
            id: v(id),
            speaker: v(speaker),
            lang: v(lang),
        }
    }
}

/// The columns a file actually has, picked from [`ColumnNames`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedColumns {
    pub audio: String,
    pub text: Option<String>,
    pub id: Option<String>,
    pub speaker: Option<String>,
    pub lang: Option<String>,
}

/// An encoded audio cell: the bytes and, for the HF `Audio` struct, the original file name
/// (useful as a format hint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioCell {
    pub bytes: Vec<u8>,
    pub path: Option<String>,
}

impl AudioCell {
    /// The extension of the cell's original file name, as a decoder hint.
    pub fn ext_hint(&self) -> Option<&str> {
        self.path
            .as_deref()
            .and_then(|p| Path::new(p).extension())
            .and_then(|e| e.to_str())
    }
}

/// One row of a shard: the metadata columns and the audio cell (or why it cannot be used).
#[derive(Clone, Debug, PartialEq)]
pub struct ParquetRow {
    /// 0-based over the whole file.
    pub row: usize,
    pub id: Option<String>,
    pub text: Option<String>,
    pub speaker: Option<String>,
    pub lang: Option<String>,
    pub audio: std::result::Result<AudioCell, String>,
}

fn perr(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Parquet {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// Every `*.parquet` file under `dir` (recursively, symlinks followed as the HF cache uses
/// them), sorted by path.
pub fn find_parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = crate::recipes::walk_files(dir)?
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn open(path: &Path) -> Result<SerializedFileReader<File>> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    SerializedFileReader::new(f)
        .map_err(|e| perr(path, format!("not a readable parquet file: {e}")))
}

/// The top-level column names of a parquet file.
pub fn column_names(path: &Path) -> Result<Vec<String>> {
    let r = open(path)?;
    Ok(top_names(&r))
}

fn top_names(r: &SerializedFileReader<File>) -> Vec<String> {
    r.metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect()
}

/// The number of rows of a parquet file, from its footer.
pub fn num_rows(path: &Path) -> Result<usize> {
    let r = open(path)?;
    Ok(usize::try_from(r.metadata().file_metadata().num_rows()).unwrap_or(0))
}

/// Picks the columns of `names` present in the file; the audio column is required.
pub fn resolve_columns(path: &Path, names: &ColumnNames) -> Result<ResolvedColumns> {
    let have = column_names(path)?;
    resolve_in(path, &have, names)
}

fn resolve_in(path: &Path, have: &[String], names: &ColumnNames) -> Result<ResolvedColumns> {
    let pick = |c: &[String]| c.iter().find(|n| have.contains(n)).cloned();
    let audio = pick(&names.audio).ok_or_else(|| {
        perr(
            path,
            format!(
                "no audio column: looked for {:?}, the file has {:?}",
                names.audio, have
            ),
        )
    })?;
    Ok(ResolvedColumns {
        audio,
        text: pick(&names.text),
        id: pick(&names.id),
        speaker: pick(&names.speaker),
        lang: pick(&names.lang),
    })
}

fn projection(r: &SerializedFileReader<File>, path: &Path, cols: &[&str]) -> Result<Type> {
    let root = r.metadata().file_metadata().schema_descr().root_schema();
    let fields: Vec<_> = root
        .get_fields()
        .iter()
        .filter(|f| cols.contains(&f.name()))
        .cloned()
        .collect();
    Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()
        .map_err(|e| perr(path, e))
}

fn scalar_string(f: &Field) -> Option<String> {
    match f {
        Field::Null => None,
        Field::Str(s) => Some(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data()).ok().map(str::to_string),
        other => Some(other.to_string()),
    }
}

/// The encoded audio of a cell: the `bytes` of an HF `Audio` struct or a binary value.
pub fn audio_from_field(f: &Field) -> std::result::Result<AudioCell, String> {
    match f {
        Field::Bytes(b) => Ok(AudioCell {
            bytes: b.data().to_vec(),
            path: None,
        }),
        Field::Group(g) => {
            let mut bytes = None;
            let mut path = None;
            for (k, v) in g.get_column_iter() {
                match (k.as_str(), v) {
                    ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
                    ("path", v) => path = scalar_string(v),
                    _ => {}
                }
            }
            match bytes {
                Some(b) if !b.is_empty() => Ok(AudioCell { bytes: b, path }),
                _ => Err(format!(
                    "the audio struct has no embedded bytes (path {:?}); only shards with embedded audio are read",
                    path.unwrap_or_default()
                )),
            }
        }
        Field::Null => Err("the audio cell is null".into()),
        other => Err(format!(
            "the audio cell is not binary or an Audio struct (found {other})"
        )),
    }
}

fn row_to_parquet_row(idx: usize, row: &Row, cols: &ResolvedColumns) -> ParquetRow {
    let get = |name: &Option<String>| -> Option<String> {
        let name = name.as_deref()?;
        row.get_column_iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| scalar_string(v))
    };
    let audio = row
        .get_column_iter()
        .find(|(k, _)| **k == cols.audio)
        .map(|(_, v)| audio_from_field(v))
        .unwrap_or_else(|| Err(format!("row has no column {:?}", cols.audio)));
    ParquetRow {
        row: idx,
        id: get(&cols.id),
        text: get(&cols.text),
        speaker: get(&cols.speaker),
        lang: get(&cols.lang),
        audio,
    }
}

/// Calls `f` on every row of `path`, in file order, reading only the resolved columns.
/// Returns the columns used. A row that the reader cannot decode ends the file with an error
/// naming the row.
pub fn for_each_row(
    path: &Path,
    names: &ColumnNames,
    mut f: impl FnMut(ParquetRow),
) -> Result<ResolvedColumns> {
    let r = open(path)?;
    let cols = resolve_in(path, &top_names(&r), names)?;
    let wanted: Vec<&str> = std::iter::once(cols.audio.as_str())
        .chain(
            [&cols.text, &cols.id, &cols.speaker, &cols.lang]
                .into_iter()
                .filter_map(|c| c.as_deref()),
        )
        .collect();
    let proj = projection(&r, path, &wanted)?;
    let mut idx = 0usize;
    for g in 0..r.num_row_groups() {
        let rg = r
            .get_row_group(g)
            .map_err(|e| perr(path, format!("row group {g}: {e}")))?;
        let iter = rg
            .get_row_iter(Some(proj.clone()))
            .map_err(|e| perr(path, format!("row group {g}: {e}")))?;
        for row in iter {
            let row = row.map_err(|e| perr(path, format!("row {idx}: {e}")))?;
            f(row_to_parquet_row(idx, &row, &cols));
            idx += 1;
        }
    }
    Ok(cols)
}

/// The encoded audio of row `row` (0-based over the file) of column `column`.
pub fn read_audio_cell_full(path: &Path, row: usize, column: &str) -> Result<AudioCell> {
    let r = open(path)?;
    if !top_names(&r).iter().any(|n| n == column) {
        return Err(perr(
            path,
            format!("no column {column:?} (columns: {:?})", top_names(&r)),
        ));
    }
    let proj = projection(&r, path, &[column])?;
    let mut start = 0usize;
    for g in 0..r.num_row_groups() {
        let n = usize::try_from(r.metadata().row_group(g).num_rows()).unwrap_or(0);
        if row >= start + n {
            start += n;
            continue;
        }
        let rg = r
            .get_row_group(g)
            .map_err(|e| perr(path, format!("row group {g}: {e}")))?;
        let mut iter = rg
            .get_row_iter(Some(proj))
            .map_err(|e| perr(path, format!("row group {g}: {e}")))?;
        let found = iter
            .nth(row - start)
            .ok_or_else(|| perr(path, format!("row {row}: past the end of row group {g}")))?
            .map_err(|e| perr(path, format!("row {row}: {e}")))?;
        let field = found
            .get_column_iter()
            .next()
            .map(|(_, v)| v.clone())
            .unwrap_or(Field::Null);
        return audio_from_field(&field).map_err(|e| perr(path, format!("row {row}: {e}")));
    }
    Err(perr(
        path,
        format!("row {row} does not exist (the file has {start} rows)"),
    ))
}

/// The encoded audio bytes of row `row` of column `column` (HF `Audio` struct or binary).
pub fn read_audio_cell(path: &Path, row: usize, column: &str) -> Result<Vec<u8>> {
    Ok(read_audio_cell_full(path, row, column)?.bytes)
}

/// What the header of encoded WAV or FLAC bytes says (rate, channels, frames), without
/// decoding; `None` for other formats.
pub fn header_of_bytes(bytes: &[u8]) -> Option<(u32, u16, u64)> {
    if bytes.starts_with(b"RIFF") {
        let r = hound::WavReader::new(std::io::Cursor::new(bytes)).ok()?;
        let s = r.spec();
        return Some((s.sample_rate, s.channels, u64::from(r.duration())));
    }
    if bytes.starts_with(b"fLaC") && bytes.len() >= 26 {
        // STREAMINFO is the first metadata block: 4-byte block header, then 10 bytes of block
        // and frame sizes, then rate (20 bits), channels - 1 (3), bits - 1 (5), frames (36).
        let b = &bytes[8..];
        let rate = (u32::from(b[10]) << 12) | (u32::from(b[11]) << 4) | (u32::from(b[12]) >> 4);
        let channels = u16::from((b[12] >> 1) & 0x7) + 1;
        let frames = (u64::from(b[13] & 0x0F) << 32)
            | (u64::from(b[14]) << 24)
            | (u64::from(b[15]) << 16)
            | (u64::from(b[16]) << 8)
            | u64::from(b[17]);
        return Some((rate, channels, frames));
    }
    None
}
