//! OpenSLR 66 (crowdsourced high-quality Telugu, `te_in_female.zip` / `te_in_male.zip`; the
//! same layout serves SLR 63-65 with `--lang`):
//!
//! ```text
//! te_in_female/line_index.tsv     "ID<TAB>TEXT" lines, e.g. "tef_01343_00025853<TAB>..."
//! te_in_female/ID.wav             (also accepted: wavs/ID.wav)
//! ```
//!
//! Speaker = the first two `_` fields of the id (`tef_01343`), split `all`, lang `--lang`, else
//! a language named by a directory, else `te`.

use super::{find_audio, fname, Ctx};
use crate::error::Result;

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let idx: Vec<_> = cx
        .files
        .iter()
        .filter(|f| fname(f) == "line_index.tsv")
        .cloned()
        .collect();
    if idx.is_empty() {
        return Err(cx.wrong_corpus("no line_index.tsv under the directory"));
    }
    for t in idx {
        let dir = t.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let Some(lines) = cx.read_lines(&t) else {
            continue;
        };
        for (ln, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            cx.entries += 1;
            let parts = line
                .split_once('\t')
                .map(|(a, b)| (a.trim(), b.trim()))
                .or_else(|| super::split_id_text(&line));
            let Some((id, text)) = parts.filter(|(a, b)| !a.is_empty() && !b.is_empty()) else {
                cx.skip(&t, Some(ln), "expected 'ID<TAB>TEXT'");
                continue;
            };
            let Some(audio) = find_audio(&dir, id, &["wav"])
                .or_else(|| find_audio(&dir.join("wavs"), id, &["wav"]))
            else {
                cx.skip(&t, Some(ln), format!("no {id}.wav beside line_index.tsv"));
                continue;
            };
            let speaker = {
                let p: Vec<&str> = id.splitn(3, '_').collect();
                (p.len() == 3).then(|| format!("{}_{}", p[0], p[1]))
            };
            let lang = cx.lang_for(None, &t).unwrap_or_else(|| "te".into());
            cx.push_file(&t, Some(ln), id, &lang, "all", &audio, text, speaker);
        }
    }
    Ok(())
}
