//! A small NPY v1.0 writer (and reader, for checks) for little-endian, C-order arrays.
//!
//! Written here rather than pulling candle into the cascade for one file format. The header is
//! the Python-literal dict numpy writes, space-padded so the data starts on a 64-byte boundary.

use std::io::Write;
use std::path::Path;

/// Element types we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I64,
    U32,
}

impl Dtype {
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I64 => "<i8",
            Dtype::U32 => "<u4",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::I64 => 8,
        }
    }
}

fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
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
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_txt}, }}",
        dtype.descr()
    );
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

fn check_len(shape: &[usize], n: usize) -> std::io::Result<()> {
    let want: usize = shape.iter().product();
    if want != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("npy: shape {shape:?} needs {want} elements, got {n}"),
        ));
    }
    Ok(())
}

/// NPY bytes of an `f32` array.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> std::io::Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header(Dtype::F32, shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// NPY bytes of an `i64` array.
pub fn npy_i64(shape: &[usize], data: &[i64]) -> std::io::Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header(Dtype::I64, shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// NPY bytes of a `u32` array.
pub fn npy_u32(shape: &[usize], data: &[u32]) -> std::io::Result<Vec<u8>> {
    check_len(shape, data.len())?;
    let mut out = header(Dtype::U32, shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Writes bytes to a file and syncs it.
pub fn write_bytes_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A parsed NPY file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Raw little-endian element bytes.
    pub data: Vec<u8>,
}

impl NpyArray {
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == Dtype::F32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match self.dtype {
            Dtype::I64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::U32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| i64::from(u32::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
            ),
            Dtype::F32 => None,
        }
    }
}

/// Parses NPY v1.0 bytes of the dtypes above (C order only).
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an NPY file".into());
    }
    if bytes[6] != 1 {
        return Err(format!("NPY version {} not supported", bytes[6]));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let start = 10 + hlen;
    let head = std::str::from_utf8(bytes.get(10..start).ok_or("truncated header")?)
        .map_err(|_| "header is not UTF-8")?;
    if !start.is_multiple_of(16) {
        return Err("data not aligned".into());
    }
    let dtype = [Dtype::F32, Dtype::I64, Dtype::U32]
        .into_iter()
        .find(|d| head.contains(&format!("'descr': '{}'", d.descr())))
        .ok_or_else(|| format!("unsupported dtype in {head}"))?;
    if !head.contains("'fortran_order': False") {
        return Err("only C order is supported".into());
    }
    let s = head.find("'shape': (").ok_or("no shape")? + "'shape': (".len();
    let e = s + head[s..].find(')').ok_or("bad shape")?;
    let shape: Vec<usize> = head[s..e]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| format!("bad dim '{t}'")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = bytes[start..].to_vec();
    if data.len() != n * dtype.size() {
        return Err(format!(
            "shape {shape:?} needs {} bytes, file has {}",
            n * dtype.size(),
            data.len()
        ));
    }
    Ok(NpyArray { dtype, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a.dtype, Dtype::I64);
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
}
