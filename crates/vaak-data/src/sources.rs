//! Audio files named by a directory or a manifest: the input of codec training and evaluation.
//!
//! One function for both so a directory is searched, and a manifest's `audio_path`s resolved,
//! the same way everywhere. Rows that cannot be used are returned, not dropped silently, so a
//! caller can report them as it sees fit.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::manifest::read_manifest;
use crate::paths::resolve_audio_path;

/// One audio file and a name for reports: the path relative to the directory, or the
/// manifest id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioClip {
    pub name: String,
    pub path: PathBuf,
}

/// A manifest row left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRow {
    pub line: u64,
    /// `None` when the row was too malformed to have an id.
    pub id: Option<String>,
    pub reason: String,
}

/// What [`collect_audio`] found.
#[derive(Clone, Debug, Default)]
pub struct AudioSources {
    /// Sorted by path for a directory; in manifest order for a manifest.
    pub clips: Vec<AudioClip>,
    pub skipped: Vec<SkippedRow>,
    /// True when the input was a manifest.
    pub from_manifest: bool,
}

/// The audio files under `input`: a directory, searched recursively for files whose extension
/// (case-insensitive) is in `exts`, or a manifest (CSV or JSONL) whose `audio_path`s are
/// resolved inside `data_root` (default: the manifest's directory). Finding nothing is not an
/// error here; the caller says what it needed.
pub fn collect_audio(
    input: &Path,
    data_root: Option<&Path>,
    exts: &[&str],
) -> Result<AudioSources> {
    if input.is_dir() {
        let mut files = Vec::new();
        walk(input, exts, &mut files)?;
        files.sort();
        let clips = files
            .into_iter()
            .map(|path| AudioClip {
                name: path
                    .strip_prefix(input)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
                path,
            })
            .collect();
        return Ok(AudioSources {
            clips,
            ..AudioSources::default()
        });
    }
    let m = read_manifest(input, false)?;
    let root = match data_root {
        Some(r) => r.to_path_buf(),
        None => input.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut out = AudioSources {
        from_manifest: true,
        ..AudioSources::default()
    };
    out.skipped
        .extend(m.malformed.into_iter().map(|b| SkippedRow {
            line: b.line,
            id: None,
            reason: b.reason,
        }));
    for row in m.rows {
        match resolve_audio_path(&root, &row.audio_path) {
            Ok(path) => out.clips.push(AudioClip { name: row.id, path }),
            Err(reason) => out.skipped.push(SkippedRow {
                line: row.line,
                id: Some(row.id),
                reason,
            }),
        }
    }
    Ok(out)
}

fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    let listing = |e: std::io::Error| DataError::AudioSource {
        path: dir.to_path_buf(),
        reason: format!("listing: {e}"),
    };
    for e in std::fs::read_dir(dir).map_err(listing)? {
        let path = e.map_err(listing)?.path();
        if path.is_dir() {
            walk(&path, exts, out)?;
        } else if path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.iter().any(|e| e.eq_ignore_ascii_case(x)))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_searched_recursively_and_sorted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        for f in ["z.WAV", "b/c/a.flac", "b/skip.txt", "a.ogg"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let s = collect_audio(d.path(), None, &["wav", "flac", "ogg"]).unwrap();
        let names: Vec<&str> = s.clips.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a.ogg", "b/c/a.flac", "z.WAV"]);
        assert!(!s.from_manifest && s.skipped.is_empty());
        assert!(collect_audio(d.path(), None, &["mp3"])
            .unwrap()
            .clips
            .is_empty());
    }

    #[test]
    fn a_manifest_resolves_paths_and_reports_what_it_skipped() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m.csv");
        std::fs::write(
            &m,
            "id,lang,audio_path,duration_s\na,en,x\\a.wav,1\nb,en,../b.wav,1\nc,en,c.wav\n",
        )
        .unwrap();
        let s = collect_audio(&m, None, &["wav"]).unwrap();
        assert!(s.from_manifest);
        assert_eq!(
            s.clips,
            [AudioClip {
                name: "a".into(),
                path: d.path().join("x").join("a.wav")
            }]
        );
        let lines: Vec<u64> = s.skipped.iter().map(|r| r.line).collect();
        assert_eq!(lines, [4, 3]);
        assert_eq!(s.skipped[1].id.as_deref(), Some("b"));
        let root = Path::new("/data");
        let s = collect_audio(&m, Some(root), &["wav"]).unwrap();
        assert_eq!(s.clips[0].path, root.join("x/a.wav"));
        let e = collect_audio(&d.path().join("none.csv"), None, &["wav"]).unwrap_err();
        assert!(e.to_string().contains("none.csv"), "{e}");
    }
}
