//! Mozilla Common Voice, as unpacked from `cv-corpus-N.0-DATE-LANG.tar.gz`:
//!
//! ```text
//! cv-corpus-N.0-DATE/LANG/train.tsv, dev.tsv, test.tsv   header: client_id path sentence ... locale ...
//! cv-corpus-N.0-DATE/LANG/validated.tsv                   read only when train/dev/test are absent
//! cv-corpus-N.0-DATE/LANG/clips/common_voice_LANG_NNN.mp3
//! ```
//!
//! Columns are found by name (`path`, `sentence`; `client_id` and `locale` if present), tabs
//! separate fields and quotes are literal. Id = the clip's file stem, split = the TSV's stem,
//! speaker = `client_id`, lang = `--lang`, else `locale`, else the `LANG` directory name.

use std::path::{Path, PathBuf};

use super::{fname, Ctx};
use crate::error::{DataError, Result};

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let tsvs = |names: &[&str]| -> Vec<PathBuf> {
        cx.files
            .iter()
            .filter(|f| names.contains(&fname(f).as_str()))
            .cloned()
            .collect()
    };
    let mut files = tsvs(&["train.tsv", "dev.tsv", "test.tsv"]);
    if files.is_empty() {
        files = tsvs(&["validated.tsv"]);
    }
    if files.is_empty() {
        return Err(
            cx.wrong_corpus("no train.tsv, dev.tsv, test.tsv or validated.tsv under the directory")
        );
    }
    for t in files {
        read_tsv(cx, &t)?;
    }
    Ok(())
}

fn read_tsv(cx: &mut Ctx, t: &Path) -> Result<()> {
    cx.index_files += 1;
    let split = t
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clips = t.with_file_name("clips");
    let mut rdr = match csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .flexible(true)
        .from_path(t)
    {
        Ok(r) => r,
        Err(e) => {
            cx.skip(t, None, format!("cannot read: {e}"));
            return Ok(());
        }
    };
    let header = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            cx.skip(t, Some(1), format!("bad header: {e}"));
            return Ok(());
        }
    };
    let col = |n: &str| header.iter().position(|h| h.trim() == n);
    let (Some(pc), Some(sc)) = (col("path"), col("sentence")) else {
        cx.skip(
            t,
            Some(1),
            format!(
                "header lacks 'path' and/or 'sentence' (has {:?})",
                header.iter().collect::<Vec<_>>()
            ),
        );
        return Ok(());
    };
    let (cc, lc) = (col("client_id"), col("locale"));
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line());
                cx.entries += 1;
                cx.skip(t, line, format!("unreadable line: {e}"));
                continue;
            }
        };
        let ln = rec.position().map(|p| p.line());
        cx.entries += 1;
        let get = |i: Option<usize>| i.and_then(|i| rec.get(i)).map(str::trim).unwrap_or("");
        let (path, sentence) = (get(Some(pc)), get(Some(sc)));
        if rec.len() <= pc.max(sc) || path.is_empty() {
            cx.skip(
                t,
                ln,
                format!(
                    "expected {} tab-separated fields, found {}",
                    header.len(),
                    rec.len()
                ),
            );
            continue;
        }
        if sentence.is_empty() {
            cx.skip(t, ln, "empty sentence");
            continue;
        }
        let audio = clips.join(path);
        if !audio.is_file() {
            cx.skip(t, ln, format!("no clips/{path}"));
            continue;
        }
        let id = Path::new(path)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string());
        let said = Some(get(lc)).filter(|s| !s.is_empty());
        let Some(lang) = cx.lang_for(said, t) else {
            return Err(DataError::Recipe {
                recipe: cx.recipe.name().into(),
                dir: cx.root.clone(),
                reason: format!(
                    "{}: no locale column and no language directory; pass --lang",
                    cx.rel(t)
                ),
            });
        };
        let speaker = Some(get(cc).to_string()).filter(|s| !s.is_empty());
        cx.push_file(t, ln, &id, &lang, &split, &audio, sentence, speaker);
    }
    Ok(())
}
