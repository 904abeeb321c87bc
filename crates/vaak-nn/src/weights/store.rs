//! [`Weights`]: every supported file format behind one lazy name → tensor map.
//!
//! Formats are recognised by their first bytes, not their file extension, so a mis-named file
//! still loads and a damaged one gives [`Error::CorruptFile`]:
//! - safetensors: memory-mapped; tensors are read on first use. Sharded checkpoints are opened
//!   through their `*.safetensors.index.json`.
//! - PyTorch zip pickles (`torch.save` since 1.6: `.pth`, `.ckpt`, `pytorch_model.bin`): the
//!   pickle is parsed once for tensor locations, and tensor bytes are read on use. A state dict
//!   nested under a key (`state_dict`, `model`, or [`LoadOptions::state_dict_key`]) is found.
//!   The legacy non-zip format (before 1.6, or `_use_new_zipfile_serialization=False`), which
//!   candle does not read, is handled by our own reader (same key rules).
//! - gguf: the header is parsed once; [`Weights::get`] dequantizes a tensor to f32 on use and
//!   [`Weights::qtensor`] returns it still quantized (for `candle_transformers` quantized
//!   layers).
//!
//! A requested dtype ([`LoadOptions::dtype`]) converts floating-point tensors only: integer
//! tensors (token ids, step counters) keep their dtype in [`Weights::get`]. As a `VarBuilder`
//! backend everything converts to the builder's dtype, as in candle's own backends.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::hub::{Hub, HubOptions};
use super::location::WeightLocation;
use super::pickle_scan;
use crate::error::{Error, Result};

/// The on-disk format of one weight file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// safetensors (one file or one shard).
    Safetensors,
    /// A JSON index (`weight_map`) pointing at shards.
    ShardIndex,
    /// `torch.save` zip archive (PyTorch 1.6 and later).
    PyTorchZip,
    /// `torch.save` before the zip format.
    PyTorchLegacy,
    /// GGUF (llama.cpp), possibly quantized.
    Gguf,
}

impl WeightFormat {
    fn name(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::ShardIndex => "shard index",
            Self::PyTorchZip => "PyTorch",
            Self::PyTorchLegacy => "legacy PyTorch",
            Self::Gguf => "gguf",
        }
    }
}

/// Options for [`Weights::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Convert floating-point tensors to this dtype on load (`None`: keep the stored dtype;
    /// gguf tensors come out as f32).
    pub dtype: Option<DType>,
    /// Where tensors are placed.
    pub device: Device,
    /// Hub access for `hf://` locations.
    pub hub: HubOptions,
    /// For PyTorch files: the key of the state dict inside the saved object. `None` tries the
    /// top level, then `state_dict`, then `model`.
    pub state_dict_key: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            device: Device::Cpu,
            hub: HubOptions::default(),
            state_dict_key: None,
        }
    }
}

enum Source {
    Safetensors(MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
    LegacyPth(super::legacy::LegacyPth),
    Gguf(gguf_file::Content),
    Memory(HashMap<String, Tensor>),
}

struct File {
    label: String,
    path: PathBuf,
    format: &'static str,
    source: Source,
}

/// A set of named tensors from one or more files, loaded lazily.
pub struct Weights {
    files: Vec<File>,
    index: HashMap<String, usize>,
    dtype: Option<DType>,
    device: Device,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const GGUF_MAGIC: &[u8] = b"GGUF";

fn has_ext(name: &str, ext: &str) -> bool {
    name.to_ascii_lowercase().ends_with(ext)
}

fn is_weight_file_name(name: &str) -> bool {
    [
        ".safetensors",
        ".json",
        ".pth",
        ".pt",
        ".ckpt",
        ".bin",
        ".gguf",
    ]
    .iter()
    .any(|e| has_ext(name, e))
}

/// Identifies a file's format from its first bytes.
pub(crate) fn sniff(path: &Path) -> Result<WeightFormat> {
    let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.to_path_buf(),
        },
        _ => Error::io(path, e),
    })?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..n];
    if head.starts_with(GGUF_MAGIC) {
        return Ok(WeightFormat::Gguf);
    }
    if head.starts_with(ZIP_MAGIC) {
        return Ok(WeightFormat::PyTorchZip);
    }
    if n >= 9 {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && header_len.saturating_add(8) <= len {
            return Ok(WeightFormat::Safetensors);
        }
    }
    let first = head.iter().copied().find(|b| !b.is_ascii_whitespace());
    if first == Some(b'{') && has_ext(&path.to_string_lossy(), ".json") {
        return Ok(WeightFormat::ShardIndex);
    }
    if head.starts_with(&super::legacy::MAGIC_PICKLE) {
        return Ok(WeightFormat::PyTorchLegacy);
    }
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: "a Python pickle, but not one written by torch.save".into(),
        });
    }
    let name = path.to_string_lossy();
    let claimed = if has_ext(&name, ".safetensors") {
        Some("safetensors")
    } else if has_ext(&name, ".gguf") {
        Some("gguf")
    } else if [".pth", ".pt", ".ckpt", ".bin"]
        .iter()
        .any(|e| has_ext(&name, e))
    {
        Some("PyTorch")
    } else {
        None
    };
    match claimed {
        Some(format) => Err(Error::CorruptFile {
            path: path.to_path_buf(),
            format,
            reason: if len < 16 {
                format!("only {len} bytes")
            } else {
                "header does not match the format (truncated or not this format)".into()
            },
        }),
        None => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: "not safetensors, a PyTorch zip, gguf, or a shard index".into(),
        }),
    }
}

/// Shard file names listed in an index json, in first-seen order.
fn read_index(path: &Path) -> Result<Vec<String>> {
    let corrupt = |reason: String| Error::CorruptFile {
        path: path.to_path_buf(),
        format: "shard index",
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| corrupt("no \"weight_map\" object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| corrupt(format!("weight_map[{name:?}] is not a string")))?;
        if file.contains("..") || file.starts_with('/') {
            return Err(corrupt(format!(
                "shard name {file:?} escapes the directory"
            )));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(corrupt("empty weight_map".into()));
    }
    Ok(shards)
}

/// Picks the weight file(s) to load among the file names of one directory.
fn choose(location: &str, names: &[String]) -> Result<Vec<String>> {
    for preferred in [
        "model.safetensors.index.json",
        "model.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model.bin",
    ] {
        if names.iter().any(|n| n == preferred) {
            return Ok(vec![preferred.to_string()]);
        }
    }
    let groups: [&[&str]; 4] = [
        &[".safetensors.index.json"],
        &[".safetensors"],
        &[".pth", ".pt", ".ckpt", ".bin"],
        &[".gguf"],
    ];
    for exts in groups {
        let found: Vec<&String> = names
            .iter()
            .filter(|n| exts.iter().any(|e| has_ext(n, e)))
            .collect();
        match found.len() {
            0 => continue,
            1 => return Ok(vec![found[0].clone()]),
            _ => {
                return Err(Error::AmbiguousWeights {
                    location: location.to_string(),
                    candidates: found
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Err(Error::NoWeightFile {
        location: location.to_string(),
        looked_for: "model.safetensors[.index.json], pytorch_model.bin[.index.json], \
                     *.safetensors, *.pth, *.pt, *.ckpt, *.bin, *.gguf"
            .into(),
    })
}

fn local_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let file = if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(path, e))?;
            if entry.path().is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let chosen = choose(&path.display().to_string(), &names)?;
        path.join(&chosen[0])
    } else {
        path.to_path_buf()
    };
    if sniff(&file)? == WeightFormat::ShardIndex {
        let dir = file.parent().unwrap_or(Path::new("."));
        let shards = read_index(&file)?;
        let mut out = Vec::with_capacity(shards.len());
        for s in shards {
            let p = dir.join(&s);
            if !p.is_file() {
                return Err(Error::MissingFile { path: p });
            }
            out.push(p);
        }
        return Ok(out);
    }
    Ok(vec![file])
}

fn hub_files(hub: &Hub, repo: &str, revision: &str, path: &str) -> Result<Vec<PathBuf>> {
    let file_in_repo = if !path.is_empty() && is_weight_file_name(path) {
        path.to_string()
    } else {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let names: Vec<String> = hub
            .list(repo, revision)?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .filter(|n| !n.contains('/'))
            .collect();
        let loc = format!("hf://{repo}@{revision}/{path}");
        format!("{prefix}{}", choose(&loc, &names)?[0])
    };
    let local = hub.file(repo, revision, &file_in_repo)?;
    if sniff(&local)? != WeightFormat::ShardIndex {
        return Ok(vec![local]);
    }
    let dir = match file_in_repo.rsplit_once('/') {
        Some((d, _)) => format!("{d}/"),
        None => String::new(),
    };
    read_index(&local)?
        .into_iter()
        .map(|s| hub.file(repo, revision, &format!("{dir}{s}")))
        .collect()
}

/// The local files a location stands for (downloading hub files when online).
pub fn resolve_files(loc: &WeightLocation, hub: &HubOptions) -> Result<Vec<PathBuf>> {
    match loc {
        WeightLocation::Local(p) => local_files(p),
        WeightLocation::Hub {
            repo,
            revision,
            path,
        } => hub_files(&Hub::new(hub), repo, revision, path),
    }
}

fn corrupt(path: &Path, format: WeightFormat, e: impl std::fmt::Display) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        format: format.name(),
        reason: e.to_string(),
    }
}

/// Runs candle's pickle reader, turning its panics (it overflows on ints wider than 64 bits
/// in debug builds) into errors.
pub(crate) fn guard_pickle<T>(
    f: impl FnOnce() -> candle_core::Result<T>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(format!("the pickle reader failed: {msg}"))
        }
    }
}

fn open_pth(path: &Path, key: Option<&str>) -> Result<candle_core::pickle::PthTensors> {
    use candle_core::pickle::PthTensors;
    let fmt = WeightFormat::PyTorchZip;
    // candle's reader wraps over-wide ints silently in release builds: refuse them first.
    pickle_scan::check_zip_pickle(path).map_err(|e| corrupt(path, fmt, e))?;
    let open = |key: Option<&str>| guard_pickle(|| PthTensors::new(path, key));
    if let Some(key) = key {
        let pth = open(Some(key)).map_err(|e| corrupt(path, fmt, e))?;
        if pth.tensor_infos().is_empty() {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                reason: format!("no tensors under key {key:?}"),
            });
        }
        return Ok(pth);
    }
    let top = open(None).map_err(|e| corrupt(path, fmt, e))?;
    if !top.tensor_infos().is_empty() {
        return Ok(top);
    }
    for key in ["state_dict", "model"] {
        // A missing key is an error from candle; it only means "not this layout".
        if let Ok(pth) = open(Some(key)) {
            if !pth.tensor_infos().is_empty() {
                return Ok(pth);
            }
        }
    }
    Err(Error::UnsupportedFormat {
        path: path.to_path_buf(),
        reason: "no tensors at the top level of the pickle nor under \"state_dict\" or \
                 \"model\"; pass the state dict's key"
            .into(),
    })
}

fn open_gguf(path: &Path) -> Result<gguf_file::Content> {
    let fmt = WeightFormat::Gguf;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let content = gguf_file::Content::read(&mut f).map_err(|e| corrupt(path, fmt, e))?;
    // Check every tensor's extent now, so a truncated file fails at open, not mid-model.
    for (name, info) in &content.tensor_infos {
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= len as usize * 256)
            .ok_or_else(|| {
                corrupt(
                    path,
                    fmt,
                    format!(
                        "tensor {name:?}: shape {:?} is impossibly large",
                        info.shape.dims()
                    ),
                )
            })?;
        if elems == 0 {
            // candle cannot build an empty quantized tensor (it would read from a dangling
            // pointer), so refuse it here.
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                reason: format!("tensor {name:?} has no elements"),
            });
        }
        let bs = info.ggml_dtype.block_size();
        if elems % bs != 0 {
            return Err(corrupt(
                path,
                fmt,
                format!("tensor {name:?}: {elems} elements is not a multiple of block size {bs}"),
            ));
        }
        let size = (elems / bs * info.ggml_dtype.type_size()) as u64;
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(size);
        if end > len {
            return Err(corrupt(
                path,
                fmt,
                format!("tensor {name:?} ends at byte {end} but the file has {len} bytes"),
            ));
        }
    }
    Ok(content)
}

impl Weights {
    /// Loads from a location string: a local path or `hf://org/repo[@rev]/path`.
    pub fn load(location: &str, opts: &LoadOptions) -> Result<Self> {
        Self::load_location(&WeightLocation::parse(location)?, opts)
    }

    /// Loads from a parsed location.
    pub fn load_location(loc: &WeightLocation, opts: &LoadOptions) -> Result<Self> {
        let files = resolve_files(loc, &opts.hub)?;
        Self::from_files(&files, opts)
    }

    /// Opens local weight files (any supported format; shard indexes are expanded). When a
    /// name occurs in several files the last one wins.
    pub fn from_files<P: AsRef<Path>>(paths: &[P], opts: &LoadOptions) -> Result<Self> {
        let mut w = Self {
            files: Vec::new(),
            index: HashMap::new(),
            dtype: opts.dtype,
            device: opts.device.clone(),
        };
        for p in paths {
            let p = p.as_ref();
            match sniff(p)? {
                WeightFormat::ShardIndex => {
                    for shard in local_files(p)? {
                        w.open_one(&shard, opts)?;
                    }
                }
                _ => w.open_one(p, opts)?,
            }
        }
        Ok(w)
    }

    /// Wraps tensors already in memory (e.g. from a converter), labelled for error messages.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, label: &str, opts: &LoadOptions) -> Self {
        let mut w = Self {
            files: Vec::new(),
            index: HashMap::new(),
            dtype: opts.dtype,
            device: opts.device.clone(),
        };
        let names = tensors.keys().cloned().collect();
        w.push(
            File {
                label: label.to_string(),
                path: PathBuf::from(label),
                format: "in-memory",
                source: Source::Memory(tensors),
            },
            names,
        );
        w
    }

    fn push(&mut self, file: File, names: Vec<String>) {
        let idx = self.files.len();
        for n in names {
            self.index.insert(n, idx);
        }
        self.files.push(file);
    }

    fn open_one(&mut self, path: &Path, opts: &LoadOptions) -> Result<()> {
        let format = sniff(path)?;
        let (source, names): (Source, Vec<String>) = match format {
            WeightFormat::Safetensors => {
                // SAFETY: the map is read-only; as with every mmap, the file must not be
                // truncated by another process while loaded.
                let st = unsafe { MmapedSafetensors::new(path) }
                    .map_err(|e| corrupt(path, format, e))?;
                let names = st.tensors().into_iter().map(|(n, _)| n).collect();
                (Source::Safetensors(st), names)
            }
            WeightFormat::PyTorchZip => {
                let pth = open_pth(path, opts.state_dict_key.as_deref())?;
                let names = pth.tensor_infos().keys().cloned().collect();
                (Source::Pth(pth), names)
            }
            WeightFormat::PyTorchLegacy => {
                let pth = super::legacy::LegacyPth::open(path, opts.state_dict_key.as_deref())?;
                let names = pth.names().cloned().collect();
                (Source::LegacyPth(pth), names)
            }
            WeightFormat::Gguf => {
                let c = open_gguf(path)?;
                let names = c.tensor_infos.keys().cloned().collect();
                (Source::Gguf(c), names)
            }
            WeightFormat::ShardIndex => {
                return Err(Error::UnsupportedFormat {
                    path: path.to_path_buf(),
                    reason: "a shard index may not list another index".into(),
                })
            }
        };
        self.push(
            File {
                label: path.display().to_string(),
                path: path.to_path_buf(),
                format: format.name(),
                source,
            },
            names,
        );
        Ok(())
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no tensor was found.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The files backing these weights.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The file a tensor comes from.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path.as_path())
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The requested float dtype, if any.
    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    fn missing(&self, name: &str) -> Error {
        let files = if self.files.is_empty() {
            "(no files)".to_string()
        } else {
            self.files
                .iter()
                .map(|f| f.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Error::MissingTensor {
            name: name.to_string(),
            files,
        }
    }

    /// A tensor in its stored dtype (gguf: dequantized to f32), on `self.device`.
    fn raw(&self, name: &str) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| self.missing(name))?;
        let f = &self.files[i];
        let bad = |e: candle_core::Error| Error::CorruptFile {
            path: f.path.clone(),
            format: f.format,
            reason: format!("tensor {name:?}: {e}"),
        };
        let t = match &f.source {
            Source::Safetensors(st) => st.load(name, &self.device).map_err(bad)?,
            Source::Pth(pth) => pth
                .get(name)
                .map_err(bad)?
                .ok_or_else(|| self.missing(name))?
                .to_device(&self.device)?,
            Source::LegacyPth(pth) => pth
                .get(name)
                .map_err(|reason| Error::CorruptFile {
                    path: f.path.clone(),
                    format: f.format,
                    reason: format!("tensor {name:?}: {reason}"),
                })?
                .ok_or_else(|| self.missing(name))?
                .to_device(&self.device)?,
            Source::Gguf(_) => self.qtensor(name)?.dequantize(&self.device)?,
            Source::Memory(m) => m
                .get(name)
                .ok_or_else(|| self.missing(name))?
                .to_device(&self.device)?,
        };
        Ok(t)
    }

    /// Loads one tensor; floating-point tensors are converted to the requested dtype.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.raw(name)?;
        match self.dtype {
            Some(dt) if t.dtype().is_float() && t.dtype() != dt => Ok(t.to_dtype(dt)?),
            _ => Ok(t),
        }
    }

    /// Loads one tensor and checks its shape.
    pub fn get_with_shape(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                file: self
                    .file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// A gguf tensor as stored (still quantized). Errors for tensors from other formats.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let &i = self.index.get(name).ok_or_else(|| self.missing(name))?;
        let f = &self.files[i];
        let Source::Gguf(content) = &f.source else {
            return Err(Error::UnsupportedFormat {
                path: f.path.clone(),
                reason: format!("tensor {name:?} is not quantized (only gguf tensors are)"),
            });
        };
        let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
        let mut reader = std::io::BufReader::new(file);
        content
            .tensor(&mut reader, name, &self.device)
            .map_err(|e| Error::CorruptFile {
                path: f.path.clone(),
                format: f.format,
                reason: format!("tensor {name:?}: {e}"),
            })
    }

    /// The gguf metadata of the file holding `name`, if it is a gguf tensor.
    pub fn gguf_metadata(&self, name: &str) -> Option<&HashMap<String, gguf_file::Value>> {
        let &i = self.index.get(name)?;
        match &self.files[i].source {
            Source::Gguf(c) => Some(&c.metadata),
            _ => None,
        }
    }

    /// Loads every tensor (as [`Weights::get`] does).
    pub fn load_all(&self) -> Result<HashMap<String, Tensor>> {
        self.index
            .keys()
            .map(|n| Ok((n.clone(), self.get(n)?)))
            .collect()
    }

    /// A `VarBuilder` over these weights, producing `dtype` (default f32) tensors.
    pub fn into_var_builder(self, dtype: Option<DType>) -> VarBuilder<'static> {
        let dt = dtype.or(self.dtype).unwrap_or(DType::F32);
        let dev = self.device.clone();
        VarBuilder::from_backend(Box::new(self), dt, dev)
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.raw(name).map_err(candle_core::Error::wrap)?;
        if t.shape() != &s {
            return Err(candle_core::Error::wrap(Error::ShapeMismatch {
                name: name.to_string(),
                file: self
                    .file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            }));
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.raw(name).map_err(candle_core::Error::wrap)?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choose_prefers_hf_layout_and_flags_ambiguity() {
        let n = names(&["config.json", "model.safetensors", "pytorch_model.bin"]);
        assert_eq!(choose("d", &n).unwrap(), ["model.safetensors"]);
        let n = names(&["a.safetensors", "b.safetensors"]);
        assert!(matches!(
            choose("d", &n),
            Err(Error::AmbiguousWeights { .. })
        ));
        let n = names(&["x.ckpt", "README.md"]);
        assert_eq!(choose("d", &n).unwrap(), ["x.ckpt"]);
        let n = names(&["README.md"]);
        assert!(matches!(choose("d", &n), Err(Error::NoWeightFile { .. })));
    }
}
