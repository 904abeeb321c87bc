//! Hugging Face parquet shards with embedded audio: IndicVoices (`ai4bharat/IndicVoices`),
//! IndicTTS (`SPRINGLab/IndicTTS-*` and similar) and Kathbath (`ai4bharat/kathbath`), as
//! `huggingface-cli download --repo-type dataset` leaves them:
//!
//! ```text
//! [LANG/]SPLIT/*.parquet  or  [data/]SPLIT-00000-of-00012.parquet
//! ```
//!
//! Columns are found by name, the first present of each list:
//!
//! | recipe      | audio                    | text                           | id     | speaker                       | lang |
//! |-------------|--------------------------|--------------------------------|--------|-------------------------------|------|
//! | indicvoices | audio_filepath, audio    | text, normalized, verbatim     | id     | speaker_id                    | lang |
//! | indictts    | audio                    | text, sentence                 | id     | speaker_id, speaker, gender   | lang |
//! | kathbath    | audio_filepath, audio    | text                           | fname  | speaker_id                    | lang |
//!
//! The audio cell is the `datasets` `Audio` struct (`bytes`, `path`) or a binary column. Every
//! cell is decoded for its duration and rate (channels from a WAV/FLAC header). Id = the id
//! column (an audio extension removed), else `FILESTEM-ROW`; split = the file name's prefix before `-` when it is a split
//! name (`train-00000-of-00003`), else the parent directory; lang = `--lang`, else the lang
//! column, else a language directory. The audio path is `FILE.parquet#row=N[&column=C]`.

use std::path::Path;

use super::{lang_code, par_map, Ctx, Recipe};
use crate::corpus::{AudioRef, CorpusRow};
use crate::error::{DataError, Result};
use crate::parquet_audio::{
    find_parquet_files, for_each_row, header_of_bytes, resolve_columns, ColumnNames, ParquetRow,
};

const SPLITS: [&str; 9] = [
    "train",
    "test",
    "valid",
    "validation",
    "dev",
    "test_known",
    "test_unknown",
    "clean",
    "noisy",
];

/// The columns a recipe looks for.
pub fn columns(recipe: Recipe) -> ColumnNames {
    match recipe {
        Recipe::IndicTts => ColumnNames::new(
            &["audio"],
            &["text", "sentence"],
            &["id"],
            &["speaker_id", "speaker", "gender"],
            &["lang", "language"],
        ),
        Recipe::Kathbath => ColumnNames::new(
            &["audio_filepath", "audio"],
            &["text"],
            &["fname", "id"],
            &["speaker_id"],
            &["lang"],
        ),
        _ => ColumnNames::new(
            &["audio_filepath", "audio"],
            &["text", "normalized", "verbatim"],
            &["id"],
            &["speaker_id"],
            &["lang", "language"],
        ),
    }
}

fn split_of(p: &Path) -> String {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = stem.split('-').next().unwrap_or("");
    if SPLITS.contains(&prefix) {
        return prefix.to_string();
    }
    super::ancestor_name(p, 0).unwrap_or_else(|| "all".into())
}

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let files = find_parquet_files(&cx.root)?;
    if files.is_empty() {
        return Err(cx.wrong_corpus("no *.parquet under the directory"));
    }
    let names = columns(cx.recipe);
    // Rows in all (for the progress callback); an unreadable footer counts 0 here and is
    // reported when the file is read.
    cx.parquet_total = files
        .iter()
        .map(|f| crate::parquet_audio::num_rows(f).unwrap_or(0))
        .sum::<usize>() as u64;
    for f in files {
        cx.index_files += 1;
        let column = match resolve_columns(&f, &names) {
            Ok(c) => c.audio,
            Err(e) => {
                cx.skip(&f, None, e.to_string());
                continue;
            }
        };
        let mut batch: Vec<ParquetRow> = Vec::new();
        let mut failed: Option<DataError> = None;
        let res = for_each_row(&f, &names, |r| {
            batch.push(r);
            if batch.len() >= 256 {
                if let Err(e) = take_batch(cx, &f, &column, &mut batch) {
                    failed.get_or_insert(e);
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        take_batch(cx, &f, &column, &mut batch)?;
        if let Err(e) = res {
            cx.skip(
                &f,
                None,
                format!("rows after the last readable one left out: {e}"),
            );
        }
    }
    Ok(())
}

fn take_batch(cx: &mut Ctx, f: &Path, column: &str, batch: &mut Vec<ParquetRow>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let rows = std::mem::take(batch);
    cx.entries += rows.len();
    if let Some(p) = &cx.opts.progress {
        p(cx.entries as u64, cx.parquet_total.max(cx.entries as u64));
    }
    let decoded = par_map(&rows, cx.opts.jobs, |r| match &r.audio {
        Err(e) => Err(e.clone()),
        Ok(cell) => {
            let head = header_of_bytes(&cell.bytes);
            vaak_audio::io::decode_bytes(
                cell.bytes.clone(),
                cell.ext_hint(),
                Path::new("cell"),
                None,
            )
            .map(|a| (a.duration_s(), a.sample_rate, head.map(|h| h.1)))
            .map_err(|e| format!("audio does not decode: {e}"))
        }
    });
    let file_rel = cx.rel(f);
    let split = split_of(f);
    let stem = f
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (r, d) in rows.into_iter().zip(decoded) {
        let (dur, rate, channels) = match d {
            Ok(v) => v,
            Err(e) => {
                cx.skip_row(f, r.row, e);
                continue;
            }
        };
        let text = r.text.clone().unwrap_or_default();
        if text.trim().is_empty() {
            cx.skip_row(f, r.row, "empty text");
            continue;
        }
        let said = r
            .lang
            .as_deref()
            .map(|l| lang_code(l).unwrap_or(l).to_string());
        let Some(lang) = cx.lang_for(said.as_deref(), f) else {
            return Err(DataError::Recipe {
                recipe: cx.recipe.name().into(),
                dir: cx.root.clone(),
                reason: format!(
                    "{file_rel}: no lang column and no language directory; pass --lang"
                ),
            });
        };
        // An id column holding a file name (Kathbath's `fname`) loses its audio extension.
        let id =
            r.id.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.rsplit_once('.') {
                    Some((base, _)) if super::is_audio(Path::new(s)) => base.to_string(),
                    _ => s.to_string(),
                })
                .unwrap_or_else(|| format!("{stem}-{:06}", r.row));
        let audio = AudioRef::Parquet {
            file: file_rel.clone(),
            row: r.row,
            column: column.to_string(),
        };
        cx.push_done(CorpusRow {
            id,
            lang,
            dataset: cx.recipe.name().into(),
            split: split.clone(),
            audio_path: audio.to_string(),
            duration_s: dur,
            text: text.trim().into(),
            speaker: r.speaker.clone().filter(|s| !s.is_empty()),
            sample_rate: Some(rate),
            channels,
            source_id: None,
            augment: None,
        });
    }
    Ok(())
}
