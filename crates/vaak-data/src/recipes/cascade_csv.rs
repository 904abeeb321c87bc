//! Golos (Russian) and People's Speech (English) manifests already in the cascade's CSV
//! layout, as the users keep them (`golos_filtered.csv`, `peoples_speech_filtered.csv`):
//!
//! ```text
//! DIR/*.csv     columns by name: id, lang, audio_path, duration_s, text [, split, speaker, ...]
//! DIR/<audio_path>
//! ```
//!
//! `DIR` may also be one CSV file (its directory is then the data root). The rows pass through
//! with checks: the audio path must stay inside the data root and the file must exist and have
//! a readable header (the duration is re-read from it, not taken from the CSV), the language
//! must be the corpus's (`ru` for golos, `en` for peoples_speech, or `--lang`), the text must
//! not be empty. Split = the `split` column, else the CSV's stem.

use std::path::PathBuf;

use super::{Ctx, Recipe};
use crate::error::Result;
use crate::manifest::read_manifest;
use crate::paths::resolve_audio_path;

pub(super) fn scan(cx: &mut Ctx, file_input: bool) -> Result<()> {
    let csvs: Vec<PathBuf> = cx
        .files
        .iter()
        .filter(|f| {
            f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                && (file_input || f.parent() == Some(cx.root.as_path()))
        })
        .cloned()
        .collect();
    if csvs.is_empty() {
        return Err(cx.wrong_corpus("no *.csv directly in the directory"));
    }
    let expected = cx.opts.lang.clone().unwrap_or_else(|| {
        match cx.recipe {
            Recipe::Golos => "ru",
            _ => "en",
        }
        .into()
    });
    for c in csvs {
        cx.index_files += 1;
        let m = match read_manifest(&c, false) {
            Ok(m) => m,
            Err(e) => {
                cx.skip(&c, None, e.to_string());
                continue;
            }
        };
        let stem = c
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for bad in &m.malformed {
            cx.entries += 1;
            cx.skip(&c, Some(bad.line), bad.reason.clone());
        }
        for r in &m.rows {
            cx.entries += 1;
            let ln = Some(r.line);
            if r.lang != expected {
                cx.skip(
                    &c,
                    ln,
                    format!("lang '{}' is not this corpus's '{expected}'", r.lang),
                );
                continue;
            }
            let text = r.text.clone().unwrap_or_default();
            if text.trim().is_empty() {
                cx.skip(&c, ln, "empty text");
                continue;
            }
            let audio = match resolve_audio_path(&cx.root, &r.audio_path) {
                Ok(p) => p,
                Err(e) => {
                    cx.skip(&c, ln, e);
                    continue;
                }
            };
            if !audio.is_file() {
                cx.skip(&c, ln, format!("audio {} does not exist", r.audio_path));
                continue;
            }
            let split = r
                .get("split")
                .filter(|s| !s.is_empty())
                .map_or_else(|| stem.clone(), str::to_string);
            let speaker = r
                .get("speaker")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let (id, lang) = (r.id.clone(), r.lang.clone());
            cx.push_file(&c, ln, &id, &lang, &split, &audio, &text, speaker);
        }
    }
    Ok(())
}
