//! Kathbath (AI4Bharat, IndicSUPERB), as distributed: per language, audio files and
//! transcripts per split.
//!
//! ```text
//! LANG/.../SPLIT/transcription_n2w.txt   "UTTID TEXT" lines (transcription.txt when no _n2w)
//! LANG/.../UTTID.m4a                     anywhere under LANG/ (audio/SPLIT/, SPLIT/, ...)
//! ```
//!
//! `LANG` is a language name (`telugu`, `hindi`, ...) or code. When the directory holds parquet
//! shards instead (the Hugging Face `ai4bharat/kathbath` download), they are read as
//! [`super::hf_parquet`] does, with columns `fname`, `text`, `audio_filepath`, `speaker_id`,
//! `lang`. Split = the transcript's directory; lang = `--lang`, else the `LANG` directory.
//! The released directory layout has no per-utterance speaker column, so `speaker` is left
//! empty there (the parquet shards have `speaker_id`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ancestor_name, fname, is_audio, lang_code, split_id_text, Ctx};
use crate::error::{DataError, Result};

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    if cx
        .files
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "parquet"))
    {
        return super::hf_parquet::scan(cx);
    }
    let mut texts: Vec<PathBuf> = cx
        .files
        .iter()
        .filter(|f| {
            let n = fname(f);
            n.starts_with("transcription") && n.ends_with(".txt")
        })
        .cloned()
        .collect();
    // One transcript per directory: the number-normalised one when both are there.
    let has_n2w: Vec<PathBuf> = texts
        .iter()
        .filter(|f| fname(f) == "transcription_n2w.txt")
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    texts.retain(|f| {
        fname(f) == "transcription_n2w.txt"
            || !f.parent().is_some_and(|p| has_n2w.iter().any(|d| d == p))
    });
    if texts.is_empty() {
        return Err(
            cx.wrong_corpus("no transcription*.txt and no parquet shards under the directory")
        );
    }
    let mut audio: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for f in cx.files.iter().filter(|f| is_audio(f)) {
        if let Some(s) = f.file_stem() {
            audio
                .entry(s.to_string_lossy().into_owned())
                .or_default()
                .push(f.clone());
        }
    }
    for t in texts {
        let split = ancestor_name(&t, 0).unwrap_or_else(|| "all".into());
        // The language directory: the nearest ancestor named as a language, else the root.
        let lang_dir = t
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&cx.root))
            .find(|a| {
                a.file_name()
                    .is_some_and(|n| lang_code(&n.to_string_lossy()).is_some())
            })
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cx.root.clone());
        let Some(lang) = cx.lang_for(None, &t) else {
            return Err(DataError::Recipe {
                recipe: cx.recipe.name().into(),
                dir: cx.root.clone(),
                reason: format!(
                    "{}: no language directory above it; pass --lang",
                    cx.rel(&t)
                ),
            });
        };
        let Some(lines) = cx.read_lines(&t) else {
            continue;
        };
        for (ln, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            cx.entries += 1;
            let Some((id, text)) = split_id_text(&line) else {
                cx.skip(&t, Some(ln), "expected 'UTTID TEXT'");
                continue;
            };
            let found: Vec<&PathBuf> = audio
                .get(id)
                .map(|v| v.iter().filter(|p| p.starts_with(&lang_dir)).collect())
                .unwrap_or_default();
            // Several files of that name: the one under a directory named like the split.
            let pick = found
                .iter()
                .find(|p| p.components().any(|c| c.as_os_str() == split.as_str()))
                .or(found.first());
            let Some(a) = pick.map(|p| p.to_path_buf()) else {
                cx.skip(
                    &t,
                    Some(ln),
                    format!("no audio file {id}.* under {}", cx.rel(&lang_dir)),
                );
                continue;
            };
            cx.push_file(&t, Some(ln), id, &lang, &split, &a, text, None);
        }
    }
    Ok(())
}
