//! VCTK (CSTR VCTK Corpus 0.92 `VCTK-Corpus-0.92.zip`, and the older `VCTK-Corpus` with 48 kHz
//! WAVs):
//!
//! ```text
//! txt/p225/p225_001.txt                               one line of text
//! wav48_silence_trimmed/p225/p225_001_mic1.flac       0.92 (mic2 is ignored)
//! wav48/p225/p225_001.wav                             older releases
//! ```
//!
//! Speaker = `pNNN`, split `all`, lang `en`. A text without audio (p315 in 0.92) is skipped
//! and reported.

use std::path::PathBuf;

use super::{ancestor_name, find_audio, Ctx};
use crate::error::Result;

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let txts: Vec<PathBuf> = cx
        .files
        .iter()
        .filter(|f| {
            f.extension().is_some_and(|e| e == "txt")
                && ancestor_name(f, 1).as_deref() == Some("txt")
        })
        .cloned()
        .collect();
    if txts.is_empty() {
        return Err(cx.wrong_corpus("no txt/SPEAKER/*.txt under the directory"));
    }
    for t in txts {
        let Some(root) = t.ancestors().nth(3).map(|p| p.to_path_buf()) else {
            continue;
        };
        let mut wav_dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("wav48"))
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        wav_dirs.sort();
        let speaker = ancestor_name(&t, 0).unwrap_or_default();
        let id = t
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if wav_dirs.is_empty() {
            cx.skip(
                &t,
                None,
                format!("no wav48*/ directory beside txt/ in {}", cx.rel(&root)),
            );
            continue;
        }
        let Some(lines) = cx.read_lines(&t) else {
            continue;
        };
        cx.entries += 1;
        let text = lines
            .iter()
            .map(|(_, l)| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() {
            cx.skip(&t, Some(1), "empty transcript");
            continue;
        }
        let audio = wav_dirs.iter().find_map(|d| {
            let sd = d.join(&speaker);
            find_audio(&sd, &format!("{id}_mic1"), &["flac", "wav"])
                .or_else(|| find_audio(&sd, &id, &["wav", "flac"]))
        });
        let Some(audio) = audio else {
            cx.skip(
                &t,
                None,
                format!("no audio for {id} in wav48*/{speaker}/ ({id}_mic1.flac or {id}.wav)"),
            );
            continue;
        };
        cx.push_file(&t, Some(1), &id, "en", "all", &audio, &text, Some(speaker));
    }
    Ok(())
}
