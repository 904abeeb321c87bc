//! OpenSLR 103, the MUCS 2021 Hindi (and other Indian languages) ASR data, as unpacked from
//! `Hindi_train.tar.gz` / `Hindi_test.tar.gz`, Kaldi-style:
//!
//! ```text
//! SPLIT/transcription.txt     "UTTID TEXT" lines (a Kaldi `text` file is read the same way)
//! SPLIT/audio/UTTID.wav       (or SPLIT/UTTID.wav)
//! SPLIT/wav.scp               optional "UTTID PATH" lines; PATH relative to SPLIT or DIR
//! SPLIT/utt2spk               optional "UTTID SPEAKER" lines
//! ```
//!
//! Split = the directory holding the transcript, lang = `--lang`, else a language named by a
//! directory (`Hindi/`), else `hi`. A `wav.scp` entry that is a command (`... |`) is skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ancestor_name, find_audio, fname, split_id_text, Ctx};
use crate::error::Result;

fn read_map(cx: &mut Ctx, p: &Path) -> HashMap<String, String> {
    if !p.is_file() {
        return HashMap::new();
    }
    let Some(lines) = cx.read_lines(p) else {
        return HashMap::new();
    };
    let mut m = HashMap::new();
    for (ln, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        match split_id_text(&l) {
            Some((k, v)) => {
                m.insert(k.to_string(), v.to_string());
            }
            None => cx.skip(p, Some(ln), "expected 'UTTID VALUE'"),
        }
    }
    m
}

pub(super) fn scan(cx: &mut Ctx) -> Result<()> {
    let mut texts: Vec<PathBuf> = cx
        .files
        .iter()
        .filter(|f| fname(f) == "transcription.txt")
        .cloned()
        .collect();
    if texts.is_empty() {
        texts = cx
            .files
            .iter()
            .filter(|f| fname(f) == "text" && f.with_file_name("wav.scp").is_file())
            .cloned()
            .collect();
    }
    if texts.is_empty() {
        return Err(cx.wrong_corpus(
            "no SPLIT/transcription.txt (or Kaldi text + wav.scp) under the directory",
        ));
    }
    for t in texts {
        let dir = t.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let split = ancestor_name(&t, 0).unwrap_or_else(|| "all".into());
        let scp = read_map(cx, &dir.join("wav.scp"));
        let spk = read_map(cx, &dir.join("utt2spk"));
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
            let audio = match scp.get(id) {
                Some(v) if v.ends_with('|') || v.contains(char::is_whitespace) => {
                    cx.skip(
                        &t,
                        Some(ln),
                        format!("wav.scp entry for {id} is a command, not a file: {v}"),
                    );
                    continue;
                }
                Some(v) => [dir.join(v), cx.root.join(v), PathBuf::from(v)]
                    .into_iter()
                    .find(|p| p.is_file()),
                None => find_audio(&dir.join("audio"), id, &["wav", "flac"])
                    .or_else(|| find_audio(&dir, id, &["wav", "flac"])),
            };
            let Some(audio) = audio else {
                cx.skip(
                    &t,
                    Some(ln),
                    format!("no audio for {id} (audio/{id}.wav or wav.scp)"),
                );
                continue;
            };
            let lang = cx.lang_for(None, &t).unwrap_or_else(|| "hi".into());
            cx.push_file(
                &t,
                Some(ln),
                id,
                &lang,
                &split,
                &audio,
                text,
                spk.get(id).cloned(),
            );
        }
    }
    Ok(())
}
