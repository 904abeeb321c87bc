//! The parallel speech-to-speech layout the cascade writes and trainers read.
//!
//! `<output_root>/data/parallel/<direction>/<safe_id>/` ([`direction_dir`]; `<safe_id>` is
//! [`crate::safe_id::safe_id`] of the manifest id) holds `src.wav`, `src.txt`, `tgt.txt`,
//! `tgt.wav` (24 kHz mono PCM16), `spk.npy` (`<f4`, `[dim]`), `tokens.npy` (`<i8`,
//! `[num_codebooks, frames]`), `meta.json` ([`SampleMeta`]), then `DONE`. [`write_sample`]
//! assembles everything in `.tmp.<safe_id>` next to it (same filesystem), syncs it, renames it
//! into place, and only then writes `DONE`: a directory without `DONE` is never finished, so a
//! crash leaves nothing a reader would take (the writer removes and redoes it).
//! [`finished_samples`] walks the finished ones. Shards own disjoint ids, so a temp name is only
//! ever used by one process.
//!
//! Kept apart from the cascade so a trainer can read the dataset without depending on the
//! teachers.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vaak_audio::io::{write_wav, WavFormat};

use crate::error::{DataError, Result};
use crate::npy;

/// Sample rate of every `tgt.wav`.
pub const TGT_SAMPLE_RATE: u32 = 24_000;
/// Rate the source is decoded at for the ASR and speaker stages.
pub const SRC_SAMPLE_RATE: u32 = 16_000;
/// Marker written last.
pub const DONE_FILE: &str = "DONE";
/// Prefix of in-progress directories.
pub const TMP_PREFIX: &str = ".tmp.";

pub const SRC_WAV: &str = "src.wav";
pub const SRC_TXT: &str = "src.txt";
pub const TGT_TXT: &str = "tgt.txt";
pub const TGT_WAV: &str = "tgt.wav";
pub const SPK_NPY: &str = "spk.npy";
pub const TOKENS_NPY: &str = "tokens.npy";
pub const META_JSON: &str = "meta.json";

/// Files of a complete sample directory, `DONE` aside.
pub const SAMPLE_FILES: [&str; 7] = [
    SRC_WAV, SRC_TXT, TGT_TXT, TGT_WAV, SPK_NPY, TOKENS_NPY, META_JSON,
];

/// `<output_root>/data/parallel/<direction>`: the directory of one direction's samples.
pub fn direction_dir(output_root: &Path, direction: &str) -> PathBuf {
    output_root.join("data").join("parallel").join(direction)
}

/// `src.wav` as a copy of the source file or a symlink to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrcAudioMode {
    Copy,
    Symlink,
}

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

fn ctx<T>(r: std::io::Result<T>, what: &'static str, p: &Path) -> Result<T> {
    r.map_err(|source| DataError::Write {
        what,
        path: p.to_path_buf(),
        source,
    })
}

/// Writes bytes to a file and syncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(p: &Path) {
    // Best effort: not every filesystem can sync a directory.
    if let Ok(d) = fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// Writes `s` under `parent/<safe_id>/` as described in the module doc.
pub fn write_sample(parent: &Path, s: &SampleOutput, mode: SrcAudioMode) -> Result<PathBuf> {
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
    ctx(write_synced(&done, b"ok\n"), "writing", &done)?;
    sync_dir(&final_dir);
    Ok(final_dir)
}

fn fill(dir: &Path, s: &SampleOutput, mode: SrcAudioMode) -> Result<()> {
    let src_wav = dir.join(SRC_WAV);
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
        write_wav(&src_wav, &s.src.decoded, SRC_SAMPLE_RATE, WavFormat::Pcm16)?;
    }
    let text = |name: &str, t: &str| {
        let p = dir.join(name);
        ctx(write_synced(&p, t.as_bytes()), "writing", &p)
    };
    text(SRC_TXT, &s.src_text)?;
    text(TGT_TXT, &s.tgt_text)?;
    write_wav(
        dir.join(TGT_WAV),
        &s.tgt_audio,
        TGT_SAMPLE_RATE,
        WavFormat::Pcm16,
    )?;
    let spk = npy::npy_f32(&[s.speaker.len()], &s.speaker)?;
    let p = dir.join(SPK_NPY);
    ctx(write_synced(&p, &spk), "writing", &p)?;
    let frames = s.tokens.first().map_or(0, Vec::len);
    let flat: Vec<i64> = s.tokens.iter().flatten().map(|&t| i64::from(t)).collect();
    let rows = if s.tokens.is_empty() {
        s.num_codebooks
    } else {
        s.tokens.len()
    };
    let tok = npy::npy_i64(&[rows, frames], &flat)?;
    let p = dir.join(TOKENS_NPY);
    ctx(write_synced(&p, &tok), "writing", &p)?;
    let meta =
        serde_json::to_vec_pretty(&Value::Object(s.meta.clone())).expect("a JSON map serialises");
    let p = dir.join(META_JSON);
    ctx(write_synced(&p, &meta), "writing", &p)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    ctx(std::os::unix::fs::symlink(target, link), "symlinking", link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    ctx(
        fs::copy(target, link).map(|_| ()),
        "copying (no symlinks here) to",
        link,
    )
}

/// The `meta.json` object: the layout's keys (see [`SampleMeta`]), the manifest row, then the
/// writer's `extra` keys. `created_by` names the cascade, the only writer; the version is the
/// workspace's, shared by every crate.
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

/// The typed view of a `meta.json`. The keys every sample has are fields; the cascade's
/// per-stage details (`asr`, `models`, `timings_s`, `quality_reasons`, durations, ...) stay in
/// [`SampleMeta::extra`] so a new key never breaks a reader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// The manifest id, as written in the manifest.
    pub id: String,
    /// The directory name ([`crate::safe_id::safe_id`] of `id`).
    pub safe_id: String,
    pub manifest_line: u64,
    /// E.g. `ruen`.
    pub direction: String,
    pub src_lang: String,
    pub tgt_lang: String,
    /// Every column of the manifest row, as strings.
    #[serde(default)]
    pub manifest: std::collections::BTreeMap<String, String>,
    /// `ok` or `bad` (any quality flag).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub quality_flags: Vec<String>,
    #[serde(default)]
    pub tokens_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SampleMeta {
    /// True when the cascade marked the sample `ok`.
    pub fn is_ok(&self) -> bool {
        self.status.as_deref() == Some("ok")
    }
}

/// The files of one sample directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplePaths {
    pub dir: PathBuf,
    pub src_wav: PathBuf,
    pub src_txt: PathBuf,
    pub tgt_txt: PathBuf,
    pub tgt_wav: PathBuf,
    pub spk_npy: PathBuf,
    pub tokens_npy: PathBuf,
    pub meta_json: PathBuf,
}

impl SamplePaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            src_wav: dir.join(SRC_WAV),
            src_txt: dir.join(SRC_TXT),
            tgt_txt: dir.join(TGT_TXT),
            tgt_wav: dir.join(TGT_WAV),
            spk_npy: dir.join(SPK_NPY),
            tokens_npy: dir.join(TOKENS_NPY),
            meta_json: dir.join(META_JSON),
        }
    }
}

/// One finished sample (its directory has `DONE`).
#[derive(Clone, Debug)]
pub struct FinishedSample {
    /// The manifest id (from `meta.json`).
    pub id: String,
    /// The directory name.
    pub safe_id: String,
    pub paths: SamplePaths,
    pub meta: SampleMeta,
}

/// Reads one sample directory's `meta.json`.
pub fn read_meta(path: &Path) -> Result<SampleMeta> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Meta {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The finished samples of a `parallel/<direction>/` directory, in directory-name order.
///
/// Temp (`.tmp.*`) and unfinished (no `DONE`) directories are passed over: they are a writer's
/// work in progress. The directory is listed at once; each `meta.json` is parsed as the
/// iterator reaches it, and a bad one is an `Err` item, not the end of the walk.
pub fn finished_samples(
    direction_dir: &Path,
) -> Result<impl Iterator<Item = Result<FinishedSample>>> {
    let entries = fs::read_dir(direction_dir).map_err(|e| DataError::io(direction_dir, e))?;
    let mut dirs = Vec::new();
    for e in entries {
        let e = e.map_err(|e| DataError::io(direction_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !path.is_dir() || !is_done(&path) {
            continue;
        }
        dirs.push((name, path));
    }
    dirs.sort();
    Ok(dirs.into_iter().map(|(safe_id, dir)| {
        let paths = SamplePaths::new(&dir);
        let meta = read_meta(&paths.meta_json)?;
        Ok(FinishedSample {
            id: meta.id.clone(),
            safe_id,
            paths,
            meta,
        })
    }))
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
        let tok = npy::read_npy(&d.join("tokens.npy")).unwrap();
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

    #[test]
    fn finished_samples_yields_done_dirs_with_their_meta_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = direction_dir(tmp.path(), "ruen");
        for id in ["b", "a"] {
            write_sample(&parent, &sample(tmp.path(), id), SrcAudioMode::Copy).unwrap();
        }
        // Work in progress is not finished: a temp dir, a dir without DONE, a stray file.
        fs::create_dir_all(parent.join(".tmp.c")).unwrap();
        fs::write(parent.join(".tmp.c/DONE"), b"ok\n").unwrap();
        fs::create_dir_all(parent.join("d")).unwrap();
        fs::write(parent.join("d/meta.json"), b"{}").unwrap();
        fs::write(parent.join("stray"), b"x").unwrap();
        let got: Vec<FinishedSample> = finished_samples(&parent)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        let ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = &got[0];
        assert_eq!(a.safe_id, "a");
        assert_eq!(a.paths, SamplePaths::new(&parent.join("a")));
        assert!(a.paths.tgt_wav.is_file() && a.paths.tokens_npy.is_file());
        assert_eq!(a.meta.direction, "ruen");
        assert_eq!(
            (a.meta.src_lang.as_str(), a.meta.tgt_lang.as_str()),
            ("ru", "en")
        );
        assert_eq!(a.meta.manifest_line, 7);
        assert_eq!(a.meta.manifest["extra col"], "v");
        assert!(a.meta.is_ok());
        assert!(a
            .meta
            .created_by
            .as_deref()
            .unwrap()
            .starts_with("vaak-cascade "));

        // A broken meta.json is an error item naming the file; the walk goes on.
        fs::write(parent.join("a/meta.json"), b"{not json").unwrap();
        let items: Vec<Result<FinishedSample>> = finished_samples(&parent).unwrap().collect();
        assert_eq!(items.len(), 2);
        let e = items[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("meta.json"), "{e}");
        assert_eq!(items[1].as_ref().unwrap().id, "b");
        assert!(finished_samples(&tmp.path().join("missing")).is_err());
    }
}
