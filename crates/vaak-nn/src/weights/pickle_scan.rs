//! A walk over a pickle's opcodes that refuses integers wider than 64 bits before candle's
//! pickle reader sees them.
//!
//! candle builds a `LONG1`/`LONG4` integer by shifting bytes into an `i64`: in a debug build a
//! wider one panics (which `guard_pickle` catches), but in release it wraps silently and the
//! file would load as if it were sound. The walk only reads opcode arguments' lengths, so it
//! costs one pass over the (small) pickle stream, never over the tensor storages.

use std::io::Read;

/// Why a pickle was refused.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(std::io::Error),
    /// An integer of `bytes` bytes (over 8) at byte `offset` of the pickle.
    WideInt {
        offset: usize,
        bytes: usize,
    },
    UnknownOpcode {
        offset: usize,
        opcode: u8,
    },
    /// A length that cannot be a real argument (a truncated or hostile file).
    BadLength {
        offset: usize,
        len: u64,
    },
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "reading the pickle: {e}"),
            ScanError::WideInt { offset, bytes } => write!(
                f,
                "an integer of {bytes} bytes at pickle offset {offset} is wider than 64 bits"
            ),
            ScanError::UnknownOpcode { offset, opcode } => {
                write!(f, "unknown pickle opcode 0x{opcode:02x} at offset {offset}")
            }
            ScanError::BadLength { offset, len } => {
                write!(
                    f,
                    "implausible argument length {len} at pickle offset {offset}"
                )
            }
        }
    }
}

/// Arguments longer than this are refused: no state dict pickle holds a 1 GiB string inline.
const MAX_ARG: u64 = 1 << 30;

/// How an opcode's argument is laid out.
enum Arg {
    None,
    Fixed(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// Text up to and including a newline, `n` times.
    Lines(usize),
}

fn arg_of(op: u8) -> Option<Arg> {
    use Arg::*;
    Some(match op {
        // Protocol 0 text arguments: INT, LONG, FLOAT, STRING, UNICODE, PERSID, GET, PUT.
        b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => Lines(1),
        // GLOBAL and INST: module and name.
        b'c' | b'i' => Lines(2),
        b'K' | b'h' | b'q' | 0x80 | 0x82 => Fixed(1),
        b'M' | 0x83 => Fixed(2),
        b'J' | b'j' | b'r' | 0x84 => Fixed(4),
        b'G' | 0x95 => Fixed(8),
        b'U' | b'C' | 0x8c | 0x8a => Counted(1),
        b'T' | b'X' | b'B' | 0x8b => Counted(4),
        0x8d | 0x8e | 0x96 => Counted(8),
        b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'R' | b'b' | b'd' | b'}' | b'e' | b'l'
        | b']' | b'o' | b's' | b'u' | b't' | b')' | b'a' | b'Q' | 0x81 | 0x85 | 0x86 | 0x87
        | 0x88 | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => None,
        _ => return Option::None,
    })
}

struct Tape<R> {
    r: R,
    pos: usize,
    out: Vec<u8>,
}

impl<R: Read> Tape<R> {
    fn take(&mut self, n: usize) -> Result<&[u8], ScanError> {
        let start = self.out.len();
        self.out.resize(start + n, 0);
        self.r
            .read_exact(&mut self.out[start..])
            .map_err(ScanError::Io)?;
        self.pos += n;
        Ok(&self.out[start..])
    }

    fn line(&mut self) -> Result<(), ScanError> {
        loop {
            if self.take(1)?[0] == b'\n' {
                return Ok(());
            }
        }
    }
}

/// Reads exactly one pickle (through its STOP) from `r`, checking every integer's width, and
/// returns its bytes for the real reader.
pub(crate) fn read_checked_pickle(r: impl Read) -> Result<Vec<u8>, ScanError> {
    let mut t = Tape {
        r,
        pos: 0,
        out: Vec::new(),
    };
    loop {
        let offset = t.pos;
        let op = t.take(1)?[0];
        let arg = arg_of(op).ok_or(ScanError::UnknownOpcode { offset, opcode: op })?;
        match arg {
            Arg::None => {}
            Arg::Fixed(n) => {
                t.take(n)?;
            }
            Arg::Lines(n) => {
                for _ in 0..n {
                    t.line()?;
                }
            }
            Arg::Counted(width) => {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(t.take(width)?);
                let len = u64::from_le_bytes(le);
                if len > MAX_ARG {
                    return Err(ScanError::BadLength { offset, len });
                }
                if (op == 0x8a || op == 0x8b) && len > 8 {
                    return Err(ScanError::WideInt {
                        offset,
                        bytes: len as usize,
                    });
                }
                t.take(len as usize)?;
            }
        }
        if op == b'.' {
            return Ok(t.out);
        }
    }
}

/// Checks the object pickle (`*/data.pkl`) of a `torch.save` zip archive.
pub(crate) fn check_zip_pickle(path: &std::path::Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.to_string();
        if name.ends_with("data.pkl") {
            return read_checked_pickle(entry)
                .map(|_| ())
                .map_err(|e| format!("{name}: {e}"));
        }
    }
    Err("no data.pkl in the archive".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_small_pickle_and_returns_its_bytes() {
        // PROTO 2, EMPTY_DICT, SHORT_BINUNICODE "a", LONG1 (8 bytes), SETITEM, STOP, trailing.
        let mut p = vec![0x80, 2, b'}', 0x8c, 1, b'a', 0x8a, 8];
        p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0x7f]);
        p.extend_from_slice(b"s.");
        let mut with_tail = p.clone();
        with_tail.extend_from_slice(b"storage bytes after the pickle");
        assert_eq!(read_checked_pickle(&with_tail[..]).unwrap(), p);
    }

    #[test]
    fn refuses_wide_ints_and_unknown_opcodes() {
        let wide = [0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'.'];
        assert!(matches!(
            read_checked_pickle(&wide[..]),
            Err(ScanError::WideInt {
                offset: 2,
                bytes: 9
            })
        ));
        let long4 = [0x80, 2, 0x8b, 12, 0, 0, 0];
        assert!(matches!(
            read_checked_pickle(&long4[..]),
            Err(ScanError::WideInt { bytes: 12, .. })
        ));
        assert!(matches!(
            read_checked_pickle(&[0x80, 2, 0xff][..]),
            Err(ScanError::UnknownOpcode {
                offset: 2,
                opcode: 0xff
            })
        ));
        assert!(matches!(
            read_checked_pickle(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff][..]),
            Err(ScanError::BadLength { .. })
        ));
        assert!(matches!(
            read_checked_pickle(&[0x80, 2, b'('][..]),
            Err(ScanError::Io(_))
        ));
    }

    #[test]
    fn protocol_zero_text_arguments_are_skipped() {
        let p = b"(lp0\nI42\naL123456789012345678901234567890L\na.";
        assert_eq!(read_checked_pickle(&p[..]).unwrap(), p.to_vec());
    }
}
