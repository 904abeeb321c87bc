//! Training examples from codec codes: [`S2sExample`], the codec wrapper [`AudioTokenizer`],
//! the on-disk [`CodeCache`], the builders for unpaired clips ([`build_clip_examples`], the
//! `lm` stage) and source/target pairs ([`build_pair_examples`]), and [`prosody`].
//!
//! # Cache
//!
//! Every audio file is decoded and encoded once: `<cache>/codes/<n>.npy` holds its codes
//! (`[num_codebooks, frames]` int64, as `vaak codec encode` writes), and `<cache>/index.json`
//! maps the file's path to that `.npy`, the file's size and modification time (a changed file
//! is encoded again) and its prosody. The index names the codec; a cache made with another
//! codec is started afresh.
//!
//! # Prosody
//!
//! Computed from the target audio on 20 ms frames (hop 10 ms):
//! - energy: mean frame RMS in dB (full scale);
//! - speaking rate: the fraction of frames above an energy threshold (max RMS - 30 dB and at
//!   least -50 dBFS) — the share of the clip spent speaking;
//! - pitch: the median autocorrelation F0 (60-400 Hz, peak >= 0.5 of the zero lag) over the
//!   voiced, active frames; 0 when none is voiced.
//!
//! The model gets them normalised to about unit range (see [`Prosody::normalised`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use vaak_codec::{Codec, Preset};

use crate::cond::{Emotion, Language};
use crate::config::CodecSpec;
use crate::encoder::Frame;
use crate::error::{Result, S2sError};
use crate::text::{align_uniform, voiced_frames, CharTokenizer};

/// One training example: codes per frame (`[T][K]`) and its conditioning. An unpaired clip
/// has an empty `source` (only the `lm` stage uses it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct S2sExample {
    pub id: String,
    pub source: Vec<Frame>,
    pub target: Vec<Frame>,
    /// Text tokens aligned to `target`, one per frame (for a model with a text stream).
    pub text: Option<Vec<u32>>,
    pub speaker: Option<Vec<f32>>,
    pub emotion: Emotion,
    pub language: Language,
    /// Normalised prosody of the target ([`Prosody::normalised`]).
    pub prosody: [f32; 3],
}

impl S2sExample {
    pub fn is_paired(&self) -> bool {
        !self.source.is_empty()
    }
}

/// Pitch, energy and speaking rate of a clip (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prosody {
    /// Median F0 over voiced frames, Hz (0: unvoiced).
    pub pitch_hz: f32,
    /// Mean frame RMS, dBFS.
    pub energy_db: f32,
    /// Fraction of frames above the activity threshold.
    pub active_fraction: f32,
}

impl Prosody {
    /// `[pitch, energy, rate]` near unit range: octaves from 150 Hz (0 when unvoiced),
    /// `(dB + 30) / 20`, and `2 * fraction - 1`.
    pub fn normalised(&self) -> [f32; 3] {
        let pitch = if self.pitch_hz > 0.0 {
            (self.pitch_hz / 150.0).log2()
        } else {
            0.0
        };
        [
            pitch,
            (self.energy_db + 30.0) / 20.0,
            2.0 * self.active_fraction - 1.0,
        ]
    }
}

/// Prosody of mono `samples` at `sr` Hz (see the module docs).
pub fn prosody(samples: &[f32], sr: u32) -> Prosody {
    let win = (sr as usize / 50).max(1);
    let hop = (sr as usize / 100).max(1);
    let db = |x: f32| 20.0 * x.max(1e-10).log10();
    let mut rms = Vec::new();
    let mut start = 0;
    while start + win <= samples.len() {
        let f = &samples[start..start + win];
        rms.push((f.iter().map(|x| x * x).sum::<f32>() / win as f32).sqrt());
        start += hop;
    }
    if rms.is_empty() {
        let r = (samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32).sqrt();
        return Prosody {
            pitch_hz: 0.0,
            energy_db: db(r),
            active_fraction: 0.0,
        };
    }
    let energy_db = rms.iter().map(|&r| db(r)).sum::<f32>() / rms.len() as f32;
    let peak = rms.iter().cloned().fold(0.0f32, f32::max);
    let threshold = db(peak).max(-20.0) - 30.0;
    let active: Vec<usize> = (0..rms.len()).filter(|&i| db(rms[i]) > threshold).collect();
    let active_fraction = active.len() as f32 / rms.len() as f32;
    let (lo, hi) = ((sr / 400).max(1) as usize, (sr / 60) as usize);
    let mut f0s = Vec::new();
    for &i in &active {
        let f = &samples[i * hop..i * hop + win];
        let r0: f32 = f.iter().map(|x| x * x).sum();
        if r0 <= 0.0 || hi >= win {
            continue;
        }
        let mut best = (0usize, 0.0f32);
        for lag in lo..=hi {
            let r: f32 = f[..win - lag]
                .iter()
                .zip(&f[lag..])
                .map(|(a, b)| a * b)
                .sum();
            if r > best.1 {
                best = (lag, r);
            }
        }
        if best.0 > 0 && best.1 >= 0.5 * r0 {
            f0s.push(sr as f32 / best.0 as f32);
        }
    }
    let pitch_hz = if f0s.is_empty() {
        0.0
    } else {
        f0s.sort_by(|a, b| a.total_cmp(b));
        f0s[f0s.len() / 2]
    };
    Prosody {
        pitch_hz,
        energy_db,
        active_fraction,
    }
}

/// A codec used as the model's tokenizer: its first `num_codebooks` codebooks.
pub struct AudioTokenizer {
    codec: Codec,
    /// `vaak-16k` or the export directory (recorded in caches and model exports).
    name: String,
    num_codebooks: usize,
    /// A hash of the codec's codebooks: a retrained codec of the same name gets a new one.
    fingerprint: u64,
}

/// FNV-1a over the bits of every codebook entry: cheap, and any training step changes it
/// (the codebooks move with the encoder), so caches never outlive the weights they came from.
fn codec_fingerprint(codec: &Codec) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for cb in codec.residual_vq()?.codebooks() {
        for v in cb
            .embed()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
        {
            for b in v.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(h)
}

impl AudioTokenizer {
    /// `vaak-16k` (the codec bundled in the binary) or a vaak codec export directory; uses
    /// its first `codebooks` codebooks (all when `None`).
    pub fn load(name: &str, codebooks: Option<usize>, device: &Device) -> Result<Self> {
        let codec = if name == "vaak-16k" {
            Codec::bundled_vaak_16k(device)?
        } else {
            let opts = vaak_nn::weights::LoadOptions {
                device: device.clone(),
                dtype: Some(DType::F32),
                ..Default::default()
            };
            Codec::load(name, Preset::Vaak16k, &opts)?
        };
        Self::new(codec, name, codebooks)
    }

    pub fn new(mut codec: Codec, name: &str, codebooks: Option<usize>) -> Result<Self> {
        let n = codebooks.unwrap_or(codec.max_codebooks());
        if n == 0 || n > codec.max_codebooks() {
            return Err(S2sError::BadInput(format!(
                "codec {name}: {n} codebooks asked, it has {}",
                codec.max_codebooks()
            )));
        }
        codec.set_num_codebooks(n)?;
        let fingerprint = codec_fingerprint(&codec)?;
        Ok(Self {
            codec,
            name: name.to_string(),
            num_codebooks: n,
            fingerprint,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sample_rate(&self) -> u32 {
        self.codec.sample_rate() as u32
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    /// What the model needs to know about the tokens.
    pub fn spec(&self) -> CodecSpec {
        CodecSpec {
            num_codebooks: self.num_codebooks,
            cardinality: self.codec.codebook_size(),
            frame_rate: self.codec.frame_rate(),
        }
    }

    /// A key naming the codec, its weights (a fingerprint of the codebooks) and the codebook
    /// count (cache validity).
    pub fn cache_key(&self) -> String {
        format!(
            "{}#{}#{:016x}",
            self.name, self.num_codebooks, self.fingerprint
        )
    }

    /// Mono samples at [`Self::sample_rate`] to frames `[T][K]`.
    pub fn encode(&self, samples: &[f32]) -> Result<Vec<Frame>> {
        let dev = self.codec.device().clone();
        let x = Tensor::from_slice(samples, (1, 1, samples.len()), &dev)?;
        let codes = self.codec.encode(&x)?.squeeze(0)?; // [K, T]
        let codes = codes.to_dtype(DType::U32)?.t()?.contiguous()?;
        Ok(codes.to_vec2::<u32>()?)
    }

    /// Frames `[T][K]` back to mono samples.
    pub fn decode(&self, frames: &[Frame]) -> Result<Vec<f32>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.num_codebooks;
        let flat: Vec<u32> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let dev = self.codec.device().clone();
        let codes = Tensor::from_vec(flat, (frames.len(), k), &dev)?
            .t()?
            .contiguous()?
            .unsqueeze(0)?;
        let y = self.codec.decode(&codes)?;
        Ok(y.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Decodes an audio file to mono at the codec's rate.
    pub fn read_audio(&self, path: &Path) -> Result<Vec<f32>> {
        let a = vaak_audio::io::decode_file(path, Some(self.sample_rate()))?;
        if a.samples.is_empty() {
            return Err(S2sError::BadInput(format!(
                "{}: no audio samples",
                path.display()
            )));
        }
        Ok(a.samples)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    file: String,
    bytes: u64,
    mtime_ns: String,
    frames: usize,
    prosody: Prosody,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CacheIndex {
    codec: String,
    entries: BTreeMap<String, CacheEntry>,
}

/// Codes and prosody of audio files, encoded once and kept on disk (see the module docs).
pub struct CodeCache {
    dir: PathBuf,
    index: CacheIndex,
    /// Files encoded by this cache (misses), for reports and tests.
    pub encoded: usize,
    /// Files read back from the cache.
    pub hits: usize,
}

fn io_err(path: &Path, e: std::io::Error) -> S2sError {
    S2sError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Size and modification time of a file (`None`: it does not exist or is not a file).
fn stamp(path: &Path) -> Option<(u64, String)> {
    let m = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Some((m.len(), t.to_string()))
}

impl CodeCache {
    /// Opens (or starts) the cache in `dir` for `tok`'s codes.
    pub fn open(dir: &Path, tok: &AudioTokenizer) -> Result<Self> {
        std::fs::create_dir_all(dir.join("codes")).map_err(|e| io_err(dir, e))?;
        let ip = dir.join("index.json");
        let mut index = match std::fs::read_to_string(&ip) {
            Ok(t) => serde_json::from_str::<CacheIndex>(&t).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting a fresh cache", ip.display());
                CacheIndex::default()
            }),
            Err(_) => CacheIndex::default(),
        };
        if index.codec != tok.cache_key() {
            if !index.entries.is_empty() {
                tracing::info!(
                    "{}: made with codec {:?}, not {:?}; starting afresh",
                    ip.display(),
                    index.codec,
                    tok.cache_key()
                );
            }
            index = CacheIndex {
                codec: tok.cache_key(),
                entries: BTreeMap::new(),
            };
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            encoded: 0,
            hits: 0,
        })
    }

    fn key(path: &Path) -> String {
        std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    }

    /// Codes `[T][K]` and prosody of the audio file `path`, from the cache or encoded now.
    pub fn get(&mut self, path: &Path, tok: &AudioTokenizer) -> Result<(Vec<Frame>, Prosody)> {
        let (bytes, mtime) = stamp(path).ok_or_else(|| {
            io_err(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            )
        })?;
        let key = Self::key(path);
        if let Some(e) = self.index.entries.get(&key) {
            if e.bytes == bytes && e.mtime_ns == mtime {
                let p = self.dir.join("codes").join(&e.file);
                if let Ok(codes) = read_codes(&p, tok.num_codebooks()) {
                    if codes.len() == e.frames {
                        self.hits += 1;
                        return Ok((codes, e.prosody));
                    }
                }
            }
        }
        let samples = tok.read_audio(path)?;
        let codes = tok.encode(&samples)?;
        let pros = prosody(&samples, tok.sample_rate());
        let file = match self.index.entries.get(&key) {
            Some(e) => e.file.clone(),
            None => format!("{:08}.npy", self.index.entries.len()),
        };
        write_codes(&self.dir.join("codes").join(&file), &codes)?;
        self.index.entries.insert(
            key,
            CacheEntry {
                file,
                bytes,
                mtime_ns: mtime,
                frames: codes.len(),
                prosody: pros,
            },
        );
        self.encoded += 1;
        Ok((codes, pros))
    }

    /// Writes `index.json` (call after a batch of [`Self::get`]s).
    pub fn save(&self) -> Result<()> {
        let ip = self.dir.join("index.json");
        let tmp = self.dir.join(".index.json.tmp");
        let json = serde_json::to_string_pretty(&self.index).map_err(|e| S2sError::Json {
            path: ip.clone(),
            source: e,
        })?;
        std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &ip).map_err(|e| io_err(&ip, e))
    }
}

/// Writes frames `[T][K]` as an int64 `.npy` of shape `[K, T]`.
pub fn write_codes(path: &Path, frames: &[Frame]) -> Result<()> {
    let k = frames.first().map_or(0, |f| f.len());
    let flat: Vec<i64> = frames
        .iter()
        .flat_map(|f| f.iter().map(|&c| c as i64))
        .collect();
    let t = Tensor::from_vec(flat, (frames.len(), k), &Device::Cpu)?
        .t()?
        .contiguous()?;
    t.write_npy(path).map_err(S2sError::from)
}

/// Reads an integer `.npy` of shape `[K', T]` (`K' >= k`) as frames `[T][k]`.
pub fn read_codes(path: &Path, k: usize) -> Result<Vec<Frame>> {
    let t = Tensor::read_npy(path)?;
    if t.rank() != 2 || t.dim(0)? < k {
        return Err(S2sError::BadInput(format!(
            "{}: codes must be [num_codebooks >= {k}, frames], got {:?}",
            path.display(),
            t.dims()
        )));
    }
    if !matches!(t.dtype(), DType::I64 | DType::U32 | DType::U8) {
        return Err(S2sError::BadInput(format!(
            "{}: codes must be integers, got {:?}",
            path.display(),
            t.dtype()
        )));
    }
    let t = t.narrow(0, 0, k)?.to_dtype(DType::I64)?.t()?.contiguous()?;
    let rows = t.to_vec2::<i64>()?;
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| {
                    u32::try_from(c).map_err(|_| {
                        S2sError::BadInput(format!("{}: negative code {c}", path.display()))
                    })
                })
                .collect()
        })
        .collect()
}

/// A skipped sample: `(id or path, reason)`.
pub type Skipped = (String, String);

/// What a builder used and what it skipped (and why).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildReport {
    pub used: usize,
    /// `(id or path, reason)` of every skipped sample.
    pub skipped: Vec<Skipped>,
    /// Samples marked bad by the cascade and left out (not in `skipped`).
    pub bad: usize,
    pub cache_hits: usize,
    pub encoded: usize,
}

/// Unpaired clips (the `lm` stage): every audio file's codes become the `target` of an
/// example with an empty source. An unreadable or too-short file is skipped and counted.
pub fn build_clip_examples(
    paths: &[PathBuf],
    tok: &AudioTokenizer,
    cache: &mut CodeCache,
    on_item: &mut dyn FnMut(),
) -> Result<(Vec<S2sExample>, BuildReport)> {
    let mut out = Vec::new();
    let mut rep = BuildReport::default();
    for p in paths {
        let id = p.display().to_string();
        match cache.get(p, tok) {
            Ok((codes, pros)) if codes.len() >= 2 => {
                out.push(S2sExample {
                    id,
                    target: codes,
                    prosody: pros.normalised(),
                    ..Default::default()
                });
            }
            Ok((codes, _)) => rep
                .skipped
                .push((id, format!("{} frame(s); at least 2 needed", codes.len()))),
            Err(e) => rep.skipped.push((id, e.to_string())),
        }
        on_item();
    }
    cache.save()?;
    rep.used = out.len();
    rep.cache_hits = cache.hits;
    rep.encoded = cache.encoded;
    Ok((out, rep))
}

/// One source/target pair on disk (the cascade's `parallel/<direction>/<id>/` sample).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairFiles {
    pub id: String,
    pub src_wav: PathBuf,
    pub tgt_wav: PathBuf,
    /// The target speaker's embedding (`[speaker_dim]` f32 .npy).
    pub spk_npy: Option<PathBuf>,
    /// The cascade's codec tokens of the target (`[K, T]`), used when they match (see
    /// [`build_pair_examples`]).
    pub tokens_npy: Option<PathBuf>,
    /// Target language code (e.g. `en`); `None`: the default language.
    pub tgt_lang: Option<String>,
    /// Emotion name; `None`: neutral.
    pub emotion: Option<String>,
    /// The target's text (`tgt.txt`), read when the model has a text stream.
    pub tgt_txt: Option<PathBuf>,
    /// The cascade marked the sample bad.
    pub bad: bool,
}

/// The `parallel/<direction>` directories `data` holds: itself when it holds finished samples,
/// else those under `data/parallel/` (or `data/`), sorted.
fn direction_dirs(data: &Path) -> Result<Vec<PathBuf>> {
    let holds_samples = |d: &Path| -> bool {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| vaak_data::parallel::is_done(&e.path()))
        })
    };
    if holds_samples(data) {
        return Ok(vec![data.to_path_buf()]);
    }
    let root = if data.join("parallel").is_dir() {
        data.join("parallel")
    } else {
        data.to_path_buf()
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| io_err(&root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && holds_samples(p))
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The finished samples of the teacher cascade's output at `data` (a root with
/// `parallel/<direction>/<id>/`, or one direction directory) read through
/// `vaak_data::parallel`, as [`PairFiles`] in direction then directory order, with the
/// samples whose `meta.json` could not be read (skipped: `(what, reason)`). Language from
/// `tgt_lang`, emotion from an `emotion` key (top level or a manifest column), `bad` from a
/// status other than `ok`.
pub fn parallel_pairs(data: &Path) -> Result<(Vec<PairFiles>, Vec<Skipped>)> {
    if !data.is_dir() {
        return Err(S2sError::BadInput(format!(
            "{}: not a directory; stages s2s and cond read the teacher cascade's output \
             (<root>/parallel/<direction>/<id>/ with src.wav, tgt.wav, spk.npy, meta.json, DONE)",
            data.display()
        )));
    }
    let dirs = direction_dirs(data)?;
    if dirs.is_empty() {
        return Err(S2sError::BadInput(format!(
            "{}: no parallel/<direction>/ directory with finished samples (run `vaak cascade` \
             first)",
            data.display()
        )));
    }
    let (mut pairs, mut skipped) = (Vec::new(), Vec::new());
    for d in dirs {
        for item in vaak_data::parallel::finished_samples(&d)? {
            match item {
                Ok(s) => {
                    let emotion = s
                        .meta
                        .extra
                        .get("emotion")
                        .and_then(|v| v.as_str())
                        .or_else(|| s.meta.manifest.get("emotion").map(String::as_str))
                        .filter(|e| !e.is_empty())
                        .map(str::to_string);
                    pairs.push(PairFiles {
                        id: s.id.clone(),
                        src_wav: s.paths.src_wav.clone(),
                        tgt_wav: s.paths.tgt_wav.clone(),
                        // Part of every sample: a missing one skips the pair (counted).
                        spk_npy: Some(s.paths.spk_npy.clone()),
                        tokens_npy: Some(s.paths.tokens_npy.clone()),
                        tgt_lang: Some(s.meta.tgt_lang.clone()).filter(|l| !l.is_empty()),
                        emotion,
                        tgt_txt: Some(s.paths.tgt_txt.clone()),
                        bad: s.meta.status.as_deref().is_some_and(|st| st != "ok"),
                    });
                }
                Err(e) => skipped.push((d.display().to_string(), e.to_string())),
            }
        }
    }
    Ok((pairs, skipped))
}

/// Reads a `[n]` (or `[1, n]`) f32 `.npy` speaker embedding.
pub fn read_speaker(path: &Path) -> Result<Vec<f32>> {
    let t = Tensor::read_npy(path)?;
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if t.rank() > 2 || v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return Err(S2sError::BadInput(format!(
            "{}: a speaker embedding must be a finite [n] array, got {:?}",
            path.display(),
            t.dims()
        )));
    }
    Ok(v)
}

/// Source/target pairs: both WAVs encoded through the cache (the target's codes come from
/// `tokens.npy` instead when it has at least the model's codebooks and within 2 frames the
/// length of the encoded target audio would have), the speaker from `spk.npy`, language and
/// emotion from the pair's metadata. Pairs marked bad are left out unless `include_bad`; a
/// pair with a missing or unreadable file, an unknown language or emotion is skipped and
/// counted, never an error.
///
/// With `text`, each example also gets its target text (`tgt_txt`) as [`CharTokenizer`] ids
/// spread over the target's voiced frames ([`crate::text::align_uniform`]); a pair without a
/// readable, non-empty text is then skipped and counted.
pub fn build_pair_examples(
    pairs: &[PairFiles],
    tok: &AudioTokenizer,
    cache: &mut CodeCache,
    include_bad: bool,
    text: bool,
    on_item: &mut dyn FnMut(),
) -> Result<(Vec<S2sExample>, BuildReport)> {
    let mut out = Vec::new();
    let mut rep = BuildReport::default();
    for p in pairs {
        on_item();
        if p.bad && !include_bad {
            rep.bad += 1;
            continue;
        }
        match pair_example(p, tok, cache, text) {
            Ok(ex) => out.push(ex),
            Err(e) => rep.skipped.push((p.id.clone(), e.to_string())),
        }
    }
    cache.save()?;
    rep.used = out.len();
    rep.cache_hits = cache.hits;
    rep.encoded = cache.encoded;
    Ok((out, rep))
}

/// The target text of `p` as [`CharTokenizer`] ids aligned to `frames` target frames.
fn aligned_text(p: &PairFiles, tok: &AudioTokenizer, frames: usize) -> Result<Vec<u32>> {
    let path = p.tgt_txt.as_ref().ok_or_else(|| {
        S2sError::BadInput("the model has a text stream but the pair has no tgt.txt".into())
    })?;
    let raw = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let ids = CharTokenizer.encode(&raw);
    if ids.is_empty() {
        return Err(S2sError::BadInput(format!(
            "{}: empty target text",
            path.display()
        )));
    }
    let samples = tok.read_audio(&p.tgt_wav)?;
    let voiced = voiced_frames(&samples, tok.sample_rate(), tok.spec().frame_rate, frames);
    Ok(align_uniform(&ids, &voiced))
}

fn pair_example(
    p: &PairFiles,
    tok: &AudioTokenizer,
    cache: &mut CodeCache,
    text: bool,
) -> Result<S2sExample> {
    let (source, _) = cache.get(&p.src_wav, tok)?;
    let (mut target, pros) = cache.get(&p.tgt_wav, tok)?;
    if let Some(tp) = p.tokens_npy.as_ref().filter(|t| t.is_file()) {
        match read_codes(tp, tok.num_codebooks()) {
            Ok(t) if t.len().abs_diff(target.len()) <= 2 => target = t,
            Ok(t) => tracing::debug!(
                "{}: {} frames where the target audio gives {}; using the audio",
                tp.display(),
                t.len(),
                target.len()
            ),
            Err(e) => tracing::debug!("{}: {e}; using the target audio", tp.display()),
        }
    }
    if source.is_empty() || target.is_empty() {
        return Err(S2sError::BadInput("empty source or target".into()));
    }
    let speaker = match &p.spk_npy {
        Some(s) => Some(read_speaker(s)?),
        None => None,
    };
    let language = match &p.tgt_lang {
        Some(l) => l.parse::<Language>()?,
        None => Language::default(),
    };
    let emotion = match &p.emotion {
        Some(e) => e.parse::<Emotion>()?,
        None => Emotion::default(),
    };
    let text = if text {
        Some(aligned_text(p, tok, target.len())?)
    } else {
        None
    };
    Ok(S2sExample {
        id: p.id.clone(),
        source,
        target,
        text,
        speaker,
        emotion,
        language,
        prosody: pros.normalised(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f0: f32, sr: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (secs * sr as f32) as usize;
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * f0 * i as f32 / sr as f32).sin())
            .collect()
    }

    #[test]
    fn prosody_finds_pitch_energy_and_activity() {
        let sr = 16_000;
        let p = prosody(&tone(200.0, sr, 1.0, 0.5), sr);
        assert!((p.pitch_hz - 200.0).abs() < 5.0, "{p:?}");
        // RMS of a 0.5 sine: 0.354 -> -9 dB.
        assert!((p.energy_db + 9.0).abs() < 0.5, "{p:?}");
        assert!(p.active_fraction > 0.95, "{p:?}");
        // Half silence: half the frames active, a lower pitch found.
        let mut x = tone(120.0, sr, 0.5, 0.5);
        x.extend(vec![0.0; sr as usize / 2]);
        let q = prosody(&x, sr);
        assert!((q.active_fraction - 0.5).abs() < 0.05, "{q:?}");
        assert!((q.pitch_hz - 120.0).abs() < 5.0, "{q:?}");
        let n = p.normalised();
        assert!((n[0] - (200f32 / 150.0).log2()).abs() < 0.05);
        // Silence and a too-short clip do not panic.
        assert_eq!(prosody(&vec![0.0; 1600], sr).pitch_hz, 0.0);
        let _ = prosody(&[0.1; 10], sr);
    }
}
