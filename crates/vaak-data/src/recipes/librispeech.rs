//! LibriSpeech (OpenSLR 12), as unpacked from `train-clean-100.tar.gz` and friends:
//!
//! ```text
//! LibriSpeech/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt   "SPEAKER-CHAPTER-NNNN TEXT" lines
//! LibriSpeech/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac
//! ```
//!
//! `DIR` may be `LibriSpeech/` or one split directory's parent. Split = the directory above the
//! speaker (`train-clean-100`), speaker = the speaker directory, lang = `en`. A `.wav` next to
//! the transcript is accepted when the `.flac` is missing (re-encoded copies).

use super::{ancestor_name, find_audio, fname, split_id_text, Ctx};
use crate::error::Result;

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let trans: Vec<_> = cx
        .files
        .iter()
        .filter(|f| fname(f).ends_with(".trans.txt"))
        .cloned()
        .collect();
    if trans.is_empty() {
        return Err(cx.wrong_corpus("no *.trans.txt under the directory"));
    }
    for t in trans {
        let Some(chapter_dir) = t.parent().map(|p| p.to_path_buf()) else {
            continue;
        };
        let chapter = ancestor_name(&t, 0).unwrap_or_default();
        let speaker = ancestor_name(&t, 1).unwrap_or_default();
        let split = ancestor_name(&t, 2).unwrap_or_else(|| "unknown".into());
        let Some(lines) = cx.read_lines(&t) else {
            continue;
        };
        let prefix = format!("{speaker}-{chapter}-");
        for (ln, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            cx.entries += 1;
            let Some((id, text)) = split_id_text(&line) else {
                cx.skip(&t, Some(ln), "expected 'ID TEXT'");
                continue;
            };
            if !id.starts_with(&prefix) {
                cx.skip(
                    &t,
                    Some(ln),
                    format!("utterance id {id} is not of speaker {speaker}, chapter {chapter}"),
                );
                continue;
            }
            let Some(audio) = find_audio(&chapter_dir, id, &["flac", "wav"]) else {
                cx.skip(&t, Some(ln), format!("no {id}.flac next to the transcript"));
                continue;
            };
            let lang = cx.lang_for(None, &t).unwrap_or_else(|| "en".into());
            cx.push_file(
                &t,
                Some(ln),
                id,
                &lang,
                &split,
                &audio,
                text,
                Some(speaker.clone()),
            );
        }
    }
    Ok(())
}
