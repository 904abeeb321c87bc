//! `.npy` arrays: numpy-layout writing, and reading through candle with typed errors.
//!
//! Reading is candle's (`Tensor::read_npy`); this module only adds errors that name the file,
//! the dtype and the shape. Writing stays here (header + little-endian bytes) because candle's
//! writer pads the header to 16 bytes rather than numpy's 64, writes only to a path, and does
//! not sync; the parallel layout needs numpy's exact layout and synced bytes it can place in a
//! temp directory itself.

use std::path::Path;

pub use candle_core::DType;
use candle_core::Tensor;

use crate::error::{DataError, Result};

/// Element types this module writes, with numpy's `descr`.
trait Elem: Copy {
    const DESCR: &'static str;
    fn put(self, out: &mut Vec<u8>);
}

impl Elem for f32 {
    const DESCR: &'static str = "<f4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Elem for i64 {
    const DESCR: &'static str = "<i8";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Elem for u32 {
    const DESCR: &'static str = "<u4";
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// NPY v1.0 header as numpy writes it: the dict, space-padded so the data starts on a 64-byte
/// boundary.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let unpadded = 10 + dict.len() + 1; // magic+version+len, dict, '\n'
    let pad = (64 - unpadded % 64) % 64;
    let mut h = Vec::with_capacity(unpadded + pad);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    let hlen = (dict.len() + pad + 1) as u16;
    h.extend_from_slice(&hlen.to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

fn encode<T: Elem>(shape: &[usize], data: &[T]) -> Result<Vec<u8>> {
    let want: usize = shape.iter().product();
    if want != data.len() {
        return Err(DataError::NpyShape {
            shape: shape.to_vec(),
            want,
            got: data.len(),
        });
    }
    let mut out = header(T::DESCR, shape);
    out.reserve(std::mem::size_of_val(data));
    for &v in data {
        v.put(&mut out);
    }
    Ok(out)
}

/// NPY bytes of a C-order `f32` array.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    encode(shape, data)
}

/// NPY bytes of a C-order `i64` array.
pub fn npy_i64(shape: &[usize], data: &[i64]) -> Result<Vec<u8>> {
    encode(shape, data)
}

/// NPY bytes of a C-order `u32` array.
pub fn npy_u32(shape: &[usize], data: &[u32]) -> Result<Vec<u8>> {
    encode(shape, data)
}

/// An array read from a `.npy` file.
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// On the CPU, as candle read it.
    pub tensor: Tensor,
}

impl NpyArray {
    /// The elements in C order, when the array is `f32`.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32)
            .then(|| self.tensor.flatten_all().and_then(|t| t.to_vec1()).ok())
            .flatten()
    }

    /// The elements in C order, when the array holds integers (`i64`, `u32`, `u8`).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        if !matches!(self.dtype, DType::I64 | DType::U32 | DType::U8) {
            return None;
        }
        self.tensor
            .to_dtype(DType::I64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .ok()
    }
}

/// Reads the `.npy` file at `path` (any dtype candle reads; C order only).
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let tensor = Tensor::read_npy(path).map_err(|source| DataError::NpyRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(NpyArray {
        dtype: tensor.dtype(),
        shape: tensor.dims().to_vec(),
        tensor,
    })
}

/// Reads `path` and checks its dtype is one of `dtypes` and its rank is `rank`, so a caller
/// gets an error naming the file, what it holds and what was expected.
pub fn read_checked(path: &Path, dtypes: &[DType], rank: usize) -> Result<Tensor> {
    let a = read_npy(path)?;
    if !dtypes.contains(&a.dtype) {
        return Err(DataError::NpyDtype {
            path: path.to_path_buf(),
            got: a.dtype,
            expected: dtypes.to_vec(),
        });
    }
    if a.shape.len() != rank {
        return Err(DataError::NpyRank {
            path: path.to_path_buf(),
            shape: a.shape,
            rank,
        });
    }
    Ok(a.tensor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads NPY bytes back through a file, as every reader does.
    fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        std::fs::write(&p, bytes).unwrap();
        read_npy(&p)
    }

    #[test]
    fn f32_round_trip_and_header_layout() {
        let v = [1.5f32, -2.0, f32::MIN_POSITIVE, 3.25];
        let b = npy_f32(&[4], &v).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(b[10 + hlen - 1], b'\n');
        let head = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(head.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }"));
        let a = parse_npy(&b).unwrap();
        assert_eq!(a.shape, vec![4]);
        assert_eq!(a.to_f32().unwrap(), v);
    }

    #[test]
    fn i64_and_u32_2d_round_trip_in_c_order() {
        let v: Vec<i64> = (0..6).map(|x| x * 1000 - 2).collect();
        let a = parse_npy(&npy_i64(&[2, 3], &v).unwrap()).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.dtype, DType::I64);
        assert_eq!(a.to_i64().unwrap(), v);
        let u = [0u32, 1, u32::MAX, 7];
        let a = parse_npy(&npy_u32(&[2, 2], &u).unwrap()).unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![0, 1, u32::MAX as i64, 7]);
        let empty = parse_npy(&npy_i64(&[8, 0], &[]).unwrap()).unwrap();
        assert_eq!(empty.shape, vec![8, 0]);
    }

    #[test]
    fn shape_mismatch_and_garbage_are_errors() {
        assert!(npy_f32(&[3], &[1.0]).is_err());
        assert!(parse_npy(b"hello").is_err());
        let mut b = npy_f32(&[2], &[1.0, 2.0]).unwrap();
        b.pop();
        assert!(parse_npy(&b).is_err());
    }

    #[test]
    fn checked_reads_name_the_file_dtype_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npy");
        std::fs::write(&p, npy_f32(&[2], &[1.0, 2.0]).unwrap()).unwrap();
        let e = read_checked(&p, &[DType::I64], 1).unwrap_err();
        assert!(matches!(e, DataError::NpyDtype { .. }));
        assert!(
            e.to_string().contains("t.npy") && e.to_string().contains("F32"),
            "{e}"
        );
        let e = read_checked(&p, &[DType::F32], 2).unwrap_err().to_string();
        assert!(
            e.contains("t.npy") && e.contains("[2]") && e.contains("rank 2"),
            "{e}"
        );
        assert_eq!(read_checked(&p, &[DType::F32], 1).unwrap().dims(), [2]);
        let e = read_npy(&dir.path().join("gone.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.npy"), "{e}");
    }
}
