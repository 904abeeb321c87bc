//! Atomic file writes, used wherever vaak writes a file that a rerun or a reader must never
//! see half-written (manifests, prepared audio, shards, the synthetic corpus): the bytes go to a
//! temporary name beside the target ([`temp_name`]: `.<file name>.tmp`, hidden from directory
//! scans), are fsynced, and the file is renamed into place. A crash leaves the old file or the
//! new one, never a mix; a leftover temporary file is simply overwritten by the next write.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The temporary name [`write_atomic`] uses for `path`: `.<file name>.tmp` beside it.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` atomically; on failure the temporary file is removed.
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_name(path);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// [`write_atomic_io`] with the error naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_io(path, bytes).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        std::fs::write(temp_name(&p), b"half").unwrap();
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!temp_name(&p).exists());
        let missing = d.path().join("no/such/dir/x");
        let e = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(e.contains("no/such/dir/x"), "{e}");
    }
}
