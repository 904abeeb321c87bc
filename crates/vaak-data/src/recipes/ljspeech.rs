//! LJSpeech 1.1, as unpacked from `LJSpeech-1.1.tar.bz2`:
//!
//! ```text
//! LJSpeech-1.1/metadata.csv     "ID|raw text|normalized text" lines, no header, no quoting
//! LJSpeech-1.1/wavs/ID.wav
//! ```
//!
//! Text = the normalized transcript (the raw one when that field is empty or missing), one
//! speaker (`LJ`), split `all`, lang `en`.

use super::{find_audio, fname, Ctx};
use crate::error::Result;

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let metas: Vec<_> = cx
        .files
        .iter()
        .filter(|f| fname(f) == "metadata.csv")
        .cloned()
        .collect();
    if metas.is_empty() {
        return Err(cx.wrong_corpus("no metadata.csv under the directory"));
    }
    for m in metas {
        let wavs = m.with_file_name("wavs");
        let Some(lines) = cx.read_lines(&m) else {
            continue;
        };
        for (ln, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            cx.entries += 1;
            let f: Vec<&str> = line.split('|').collect();
            if f.len() < 2 || f.len() > 3 || f[0].trim().is_empty() {
                cx.skip(
                    &m,
                    Some(ln),
                    format!(
                        "expected 'ID|raw text|normalized text', found {} field(s)",
                        f.len()
                    ),
                );
                continue;
            }
            let id = f[0].trim();
            let text = f
                .get(2)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .unwrap_or(f[1].trim());
            if text.is_empty() {
                cx.skip(&m, Some(ln), "empty transcript");
                continue;
            }
            let Some(audio) = find_audio(&wavs, id, &["wav"]) else {
                cx.skip(&m, Some(ln), format!("no wavs/{id}.wav"));
                continue;
            };
            cx.push_file(
                &m,
                Some(ln),
                id,
                "en",
                "all",
                &audio,
                text,
                Some("LJ".into()),
            );
        }
    }
    Ok(())
}
