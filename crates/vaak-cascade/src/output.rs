//! Writing one finished sample: temp dir, files, rename into place, `DONE` last.
//!
//! Layout of `<output_root>/data/parallel/<direction>/<safe_id>/`: `src.wav`, `src.txt`,
//! `tgt.txt`, `tgt.wav` (24 kHz mono PCM16), `spk.npy` (`<f4`, `[dim]`), `tokens.npy` (`<i8`,
//! `[num_codebooks, frames]`), `meta.json`, then `DONE`. Everything is assembled in
//! `.tmp.<safe_id>` next to it (same filesystem), synced, renamed into place, and only then is
//! `DONE` written. A directory without `DONE` is never taken as finished: it is removed and
//! redone. Shards own disjoint ids, so a temp name is only ever used by one process.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use vaak_audio::io::{write_wav, WavFormat};

use crate::config::SrcAudioMode;
use crate::npy;

/// Sample rate of every `tgt.wav`.
pub const TGT_SAMPLE_RATE: u32 = 24_000;
/// Rate the source is decoded at for the ASR and speaker stages.
pub const SRC_SAMPLE_RATE: u32 = 16_000;
/// Marker written last.
pub const DONE_FILE: &str = "DONE";
/// Prefix of in-progress directories.
pub const TMP_PREFIX: &str = ".tmp.";

/// Files of a complete sample directory, `DONE` aside.
pub const SAMPLE_FILES: [&str; 7] = [
    "src.wav",
    "src.txt",
    "tgt.txt",
    "tgt.wav",
    "spk.npy",
    "tokens.npy",
    "meta.json",
];

/// Where a sample's source audio comes from.
#[derive(Clone, Debug)]
pub struct SourceAudio {
    pub path: PathBuf,
    /// Copy/symlink only WAV sources; others are re-encoded from `decoded`.
    pub is_wav: bool,
    /// Decoded mono audio at [`SRC_SAMPLE_RATE`].
    pub decoded: Vec<f32>,
}

/// Everything that goes into one sample directory.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    pub safe_id: String,
    pub src: SourceAudio,
    pub src_text: String,
    pub tgt_text: String,
    /// Mono at [`TGT_SAMPLE_RATE`].
    pub tgt_audio: Vec<f32>,
    pub speaker: Vec<f32>,
    /// `[num_codebooks][frames]`, rows of equal length.
    pub tokens: Vec<Vec<u32>>,
    pub num_codebooks: usize,
    pub meta: Map<String, Value>,
}

/// True when `dir` holds a finished sample.
pub fn is_done(dir: &Path) -> bool {
    dir.join(DONE_FILE).is_file()
}

fn ctx<T>(r: std::io::Result<T>, what: &str, p: &Path) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

fn sync_dir(p: &Path) {
    // Best effort: not every filesystem can sync a directory.
    if let Ok(d) = fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// Writes `s` under `parent/<safe_id>/` as described in the module doc.
pub fn write_sample(
    parent: &Path,
    s: &SampleOutput,
    mode: SrcAudioMode,
) -> Result<PathBuf, String> {
    let final_dir = parent.join(&s.safe_id);
    let tmp = parent.join(format!("{TMP_PREFIX}{}", s.safe_id));
    if tmp.exists() {
        ctx(fs::remove_dir_all(&tmp), "removing stale", &tmp)?;
    }
    ctx(fs::create_dir_all(&tmp), "creating", &tmp)?;
    let result = fill(&tmp, s, mode);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    if final_dir.exists() || final_dir.symlink_metadata().is_ok() {
        // A directory without DONE (crash after the rename) or a stray file: redo it.
        let r = if final_dir.is_dir() {
            fs::remove_dir_all(&final_dir)
        } else {
            fs::remove_file(&final_dir)
        };
        ctx(r, "removing unfinished", &final_dir)?;
    }
    ctx(
        fs::rename(&tmp, &final_dir),
        "renaming into place",
        &final_dir,
    )?;
    sync_dir(parent);
    let done = final_dir.join(DONE_FILE);
    ctx(npy::write_bytes_synced(&done, b"ok\n"), "writing", &done)?;
    sync_dir(&final_dir);
    Ok(final_dir)
}

fn fill(dir: &Path, s: &SampleOutput, mode: SrcAudioMode) -> Result<(), String> {
    let src_wav = dir.join("src.wav");
    if s.src.is_wav {
        match mode {
            SrcAudioMode::Copy => {
                ctx(fs::copy(&s.src.path, &src_wav), "copying to", &src_wav)?;
                let f = ctx(fs::File::open(&src_wav), "opening", &src_wav)?;
                ctx(f.sync_all(), "syncing", &src_wav)?;
            }
            SrcAudioMode::Symlink => {
                let target = ctx(s.src.path.canonicalize(), "resolving", &s.src.path)?;
                symlink(&target, &src_wav)?;
            }
        }
    } else {
        write_wav(&src_wav, &s.src.decoded, SRC_SAMPLE_RATE, WavFormat::Pcm16)
            .map_err(|e| e.to_string())?;
    }
    let text = |name: &str, t: &str| {
        let p = dir.join(name);
        ctx(npy::write_bytes_synced(&p, t.as_bytes()), "writing", &p)
    };
    text("src.txt", &s.src_text)?;
    text("tgt.txt", &s.tgt_text)?;
    write_wav(
        dir.join("tgt.wav"),
        &s.tgt_audio,
        TGT_SAMPLE_RATE,
        WavFormat::Pcm16,
    )
    .map_err(|e| e.to_string())?;
    let spk = npy::npy_f32(&[s.speaker.len()], &s.speaker).map_err(|e| e.to_string())?;
    let p = dir.join("spk.npy");
    ctx(npy::write_bytes_synced(&p, &spk), "writing", &p)?;
    let frames = s.tokens.first().map_or(0, Vec::len);
    let flat: Vec<i64> = s.tokens.iter().flatten().map(|&t| i64::from(t)).collect();
    let rows = if s.tokens.is_empty() {
        s.num_codebooks
    } else {
        s.tokens.len()
    };
    let tok = npy::npy_i64(&[rows, frames], &flat).map_err(|e| e.to_string())?;
    let p = dir.join("tokens.npy");
    ctx(npy::write_bytes_synced(&p, &tok), "writing", &p)?;
    let meta =
        serde_json::to_vec_pretty(&Value::Object(s.meta.clone())).map_err(|e| e.to_string())?;
    let p = dir.join("meta.json");
    ctx(npy::write_bytes_synced(&p, &meta), "writing", &p)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), String> {
    ctx(std::os::unix::fs::symlink(target, link), "symlinking", link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> Result<(), String> {
    ctx(
        fs::copy(target, link).map(|_| ()),
        "copying (no symlinks here) to",
        link,
    )
}

/// The `meta.json` object.
#[allow(clippy::too_many_arguments)]
pub fn meta_json(
    fields: &[(String, String)],
    id: &str,
    safe_id: &str,
    line: u64,
    direction: &str,
    src_lang: &str,
    tgt_lang: &str,
    extra: Map<String, Value>,
) -> Map<String, Value> {
    let manifest: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("safe_id".into(), json!(safe_id));
    m.insert("manifest_line".into(), json!(line));
    m.insert("direction".into(), json!(direction));
    m.insert("src_lang".into(), json!(src_lang));
    m.insert("tgt_lang".into(), json!(tgt_lang));
    m.insert("manifest".into(), Value::Object(manifest));
    m.extend(extra);
    m.insert(
        "created_by".into(),
        json!(format!("vaak-cascade {}", env!("CARGO_PKG_VERSION"))),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path, id: &str) -> SampleOutput {
        let src = dir.join("in.wav");
        write_wav(&src, &[0.1; 1600], SRC_SAMPLE_RATE, WavFormat::Pcm16).unwrap();
        SampleOutput {
            safe_id: id.into(),
            src: SourceAudio {
                path: src,
                is_wav: true,
                decoded: vec![0.1; 1600],
            },
            src_text: "привет".into(),
            tgt_text: "hi".into(),
            tgt_audio: vec![0.2; 2400],
            speaker: vec![1.0, 2.0],
            tokens: vec![vec![1, 2, 3], vec![4, 5, 6]],
            num_codebooks: 2,
            meta: meta_json(
                &[("id".into(), id.into()), ("extra col".into(), "v".into())],
                id,
                id,
                7,
                "ruen",
                "ru",
                "en",
                Map::from_iter([("status".to_string(), json!("ok"))]),
            ),
        }
    }

    #[test]
    fn meta_keeps_every_manifest_field_and_the_pipeline_keys() {
        let m = meta_json(
            &[
                ("dataset".into(), "golos".into()),
                ("snr".into(), "3.5".into()),
            ],
            "a b",
            "a%20b",
            3,
            "ruen",
            "ru",
            "en",
            Map::from_iter([("status".to_string(), json!("bad"))]),
        );
        assert_eq!(m["id"], "a b");
        assert_eq!(m["safe_id"], "a%20b");
        assert_eq!(m["manifest_line"], 3);
        assert_eq!(m["manifest"]["dataset"], "golos");
        assert_eq!(m["manifest"]["snr"], "3.5");
        assert_eq!(
            (m["src_lang"].as_str(), m["tgt_lang"].as_str()),
            (Some("ru"), Some("en"))
        );
        assert_eq!(m["status"], "bad");
        assert!(m["created_by"]
            .as_str()
            .unwrap()
            .starts_with("vaak-cascade "));
    }

    #[test]
    fn write_replaces_an_unfinished_dir_and_a_stale_temp_and_writes_done_last() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("ruen");
        fs::create_dir_all(parent.join("x/old-junk")).unwrap();
        fs::create_dir_all(parent.join(".tmp.x")).unwrap();
        fs::write(parent.join(".tmp.x/DONE"), b"stale").unwrap();
        let s = sample(tmp.path(), "x");
        assert!(!is_done(&parent.join("x")));
        let d = write_sample(&parent, &s, SrcAudioMode::Copy).unwrap();
        assert!(is_done(&d));
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = SAMPLE_FILES.iter().map(|s| s.to_string()).collect();
        want.push(DONE_FILE.into());
        want.sort();
        assert_eq!(names, want);
        assert!(!parent.join(".tmp.x").exists());
        let done_t = fs::metadata(d.join(DONE_FILE)).unwrap().modified().unwrap();
        for f in SAMPLE_FILES {
            assert!(fs::metadata(d.join(f)).unwrap().modified().unwrap() <= done_t);
        }
        assert_eq!(fs::read_to_string(d.join("src.txt")).unwrap(), "привет");
        let tok = npy::parse_npy(&fs::read(d.join("tokens.npy")).unwrap()).unwrap();
        assert_eq!(tok.shape, vec![2, 3]);
        assert_eq!(tok.to_i64().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let meta: Value = serde_json::from_slice(&fs::read(d.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["manifest"]["extra col"], "v");
    }

    #[test]
    fn a_failed_write_leaves_no_temp_and_no_final_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("ruen");
        let mut s = sample(tmp.path(), "y");
        s.src.path = tmp.path().join("gone.wav");
        assert!(write_sample(&parent, &s, SrcAudioMode::Copy).is_err());
        assert!(!parent.join(".tmp.y").exists() && !parent.join("y").exists());
    }
}
