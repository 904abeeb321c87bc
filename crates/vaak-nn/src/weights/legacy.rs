//! The legacy (pre-zip) `torch.save` format, which candle's pickle reader does not open.
//!
//! Such a file is five pickles in a row, then raw storages:
//! 1. a magic number;
//! 2. the protocol version (1001);
//! 3. a `sys_info` dict;
//! 4. the saved object, whose tensors reference storages by persistent id
//!    `('storage', <StorageClass>, key, location, numel, view_metadata)`;
//! 5. the list of storage keys in file order;
//!
//! then, for each key, the element count as little-endian `i64` followed by the storage
//! bytes. The object pickle is parsed with candle's pickle machine; storages are
//! located once at open and read on use.

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Layout, Tensor};

use crate::error::{Error, Result};

/// The first pickle of every legacy file: protocol 2, LONG1 of 10 bytes holding
/// 0x1950a86a20f9469cfc6c, STOP.
pub(crate) const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

struct Entry {
    dtype: DType,
    layout: Layout,
    /// Byte offset of the storage's first element in the file.
    storage_offset: u64,
    storage_bytes: u64,
}

/// Tensors of a legacy `torch.save` file.
pub(crate) struct LegacyPth {
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

fn elem_size(class_name: &str) -> Option<usize> {
    Some(match class_name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

/// Every storage referenced anywhere in the object: key -> (storage class, numel).
fn collect_storages(obj: &Object, out: &mut HashMap<String, (String, u64)>) {
    match obj {
        Object::PersistentLoad(id) => {
            if let Object::Tuple(t) = id.as_ref() {
                if let (
                    Some(Object::Unicode(tag)),
                    Some(Object::Class { class_name, .. }),
                    Some(Object::Unicode(key)),
                    Some(n),
                ) = (t.first(), t.get(1), t.get(2), t.get(4))
                {
                    let numel = match n {
                        Object::Int(i) => *i as i64,
                        Object::Long(l) => *l,
                        _ => -1,
                    };
                    if tag == "storage" && numel >= 0 {
                        out.insert(key.clone(), (class_name.clone(), numel as u64));
                    }
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().for_each(|o| collect_storages(o, out)),
        Object::Dict(kv) => kv.iter().for_each(|(k, v)| {
            collect_storages(k, out);
            collect_storages(v, out);
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out);
        }
        _ => {}
    }
}

fn tensor_infos(dict: &Object) -> Vec<candle_core::pickle::TensorInfo> {
    let Object::Dict(kv) = dict else {
        return vec![];
    };
    kv.iter()
        .filter_map(|(k, v)| {
            v.clone()
                .into_tensor_info(k.clone(), Path::new(""))
                .ok()
                .flatten()
        })
        .collect()
}

fn lookup<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    let Object::Dict(kv) = obj else { return None };
    kv.iter()
        .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
        .map(|(_, v)| v)
}

impl LegacyPth {
    /// Parses the pickles and locates every storage.
    pub(crate) fn open(path: &Path, key: Option<&str>) -> Result<Self> {
        let corrupt = |reason: String| Error::CorruptFile {
            path: path.to_path_buf(),
            format: "legacy PyTorch",
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = BufReader::new(file);
        let mut magic = [0u8; MAGIC_PICKLE.len()];
        r.read_exact(&mut magic)
            .map_err(|e| corrupt(format!("reading magic number: {e}")))?;
        if magic != MAGIC_PICKLE {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                reason: "a pickle, but not a torch.save file (no torch magic number)".into(),
            });
        }
        let next = |what: &str, r: &mut BufReader<std::fs::File>| -> Result<Object> {
            // Checked first: candle's reader wraps over-wide ints silently in release builds.
            let bytes = super::pickle_scan::read_checked_pickle(r)
                .map_err(|e| corrupt(format!("{what} pickle: {e}")))?;
            super::store::guard_pickle(|| {
                let mut st = Stack::empty();
                st.read_loop(&mut std::io::Cursor::new(bytes))?;
                st.finalize()
            })
            .map_err(|e| corrupt(format!("{what} pickle: {e}")))
        };
        let _protocol = next("protocol", &mut r)?;
        let sys_info = next("sys_info", &mut r)?;
        if let Some(Object::Bool(false)) = lookup(&sys_info, "little_endian") {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                reason: "saved on a big-endian machine".into(),
            });
        }
        let obj = next("object", &mut r)?;
        let keys = match next("storage keys", &mut r)? {
            Object::List(v) | Object::Tuple(v) => v
                .into_iter()
                .map(|k| {
                    k.unicode()
                        .map_err(|_| corrupt("non-string storage key".into()))
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(corrupt("storage keys are not a list".into())),
        };

        let mut storages = HashMap::new();
        collect_storages(&obj, &mut storages);
        let mut offsets: HashMap<String, (u64, u64)> = HashMap::new();
        let mut pos = r.stream_position().map_err(|e| Error::io(path, e))?;
        for k in &keys {
            let (class, numel) = storages
                .get(k)
                .ok_or_else(|| corrupt(format!("storage {k} is not referenced by any tensor")))?;
            let es = elem_size(class)
                .ok_or_else(|| corrupt(format!("unknown storage type {class}")))?
                as u64;
            r.seek(SeekFrom::Start(pos))
                .map_err(|e| Error::io(path, e))?;
            let mut n = [0u8; 8];
            r.read_exact(&mut n)
                .map_err(|e| corrupt(format!("storage {k}: {e}")))?;
            let n = u64::from_le_bytes(n);
            if n != *numel {
                return Err(corrupt(format!(
                    "storage {k}: {n} elements on disk, {numel} in the pickle"
                )));
            }
            let bytes = n
                .checked_mul(es)
                .filter(|&b| b <= len)
                .ok_or_else(|| corrupt(format!("storage {k}: impossible size {n}")))?;
            let start = pos + 8;
            if start + bytes > len {
                return Err(corrupt(format!(
                    "storage {k} ends at byte {} but the file has {len}",
                    start + bytes
                )));
            }
            offsets.insert(k.clone(), (start, bytes));
            pos = start + bytes;
        }

        let candidates: Vec<&Object> = match key {
            Some(k) => vec![lookup(&obj, k).ok_or_else(|| Error::UnsupportedFormat {
                path: path.to_path_buf(),
                reason: format!("no state dict under key {k:?}"),
            })?],
            None => std::iter::once(&obj)
                .chain(
                    ["state_dict", "model"]
                        .iter()
                        .filter_map(|k| lookup(&obj, k)),
                )
                .collect(),
        };
        for cand in candidates {
            let infos = tensor_infos(cand);
            if infos.is_empty() {
                continue;
            }
            let mut entries = HashMap::new();
            for ti in infos {
                let skey = ti.path.trim_start_matches('/').to_string();
                let &(storage_offset, storage_bytes) = offsets.get(&skey).ok_or_else(|| {
                    corrupt(format!("tensor {}: storage {skey} missing", ti.name))
                })?;
                entries.insert(
                    ti.name,
                    Entry {
                        dtype: ti.dtype,
                        layout: ti.layout,
                        storage_offset,
                        storage_bytes,
                    },
                );
            }
            return Ok(Self {
                path: path.to_path_buf(),
                entries,
            });
        }
        Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: match key {
                Some(k) => format!("no tensors under key {k:?}"),
                None => "no tensors at the top level of the pickle nor under \"state_dict\" \
                         or \"model\"; pass the state dict's key"
                    .into(),
            },
        })
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Reads one tensor (contiguous or Fortran-contiguous, as candle's zip reader supports).
    pub(crate) fn get(&self, name: &str) -> std::result::Result<Option<Tensor>, String> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let dims = e.layout.dims().to_vec();
        let fortran = e.layout.is_fortran_contiguous() && dims.len() > 1;
        if !e.layout.is_contiguous() && !fortran {
            return Err(format!("non-contiguous layout {:?}", e.layout));
        }
        let nbytes = (e.layout.shape().elem_count() * e.dtype.size_in_bytes()) as u64;
        let start = e.layout.start_offset() as u64;
        if start + nbytes > e.storage_bytes {
            return Err(format!(
                "view of {nbytes} bytes at {start} exceeds its storage of {} bytes",
                e.storage_bytes
            ));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(e.storage_offset + start))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; nbytes as usize];
        let mut r = BufReader::new(f);
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let t = if fortran {
            let rev: Vec<usize> = dims.iter().rev().copied().collect();
            let perm: Vec<usize> = (0..dims.len()).rev().collect();
            Tensor::from_raw_buffer(&buf, e.dtype, &rev, &Device::Cpu).and_then(|t| t.permute(perm))
        } else {
            Tensor::from_raw_buffer(&buf, e.dtype, &dims, &Device::Cpu)
        };
        t.map(Some).map_err(|e| e.to_string())
    }
}
