//! Resolving manifest `audio_path`s inside `data_root`.

use std::path::{Component, Path, PathBuf};

/// Joins a manifest `audio_path` (either separator) onto `data_root`, refusing escapes.
///
/// `..` components are refused outright, even ones that would stay inside. An absolute path
/// (`/x`, `C:\x`, `\\server\x`) is accepted only when it already lies under `data_root`.
/// Symlinks are checked separately by [`check_no_symlink_escape`] once the file exists.
pub fn resolve_audio_path(data_root: &Path, audio_path: &str) -> Result<PathBuf, String> {
    let raw = audio_path.trim();
    if raw.is_empty() {
        return Err("audio_path is empty".into());
    }
    if raw.contains('\0') {
        return Err(format!("audio_path '{raw}' contains a NUL byte"));
    }
    let is_drive =
        raw.len() >= 2 && raw.as_bytes()[1] == b':' && raw.as_bytes()[0].is_ascii_alphabetic();
    let absolute = raw.starts_with('/') || raw.starts_with('\\') || is_drive;
    let parts: Vec<&str> = raw
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "audio_path '{raw}' contains '..'; refusing to leave data_root"
        ));
    }
    if parts.is_empty() {
        return Err(format!("audio_path '{raw}' names no file"));
    }
    if absolute {
        if is_drive {
            return Err(format!(
                "audio_path '{raw}' is an absolute Windows path outside data_root"
            ));
        }
        let p: PathBuf = std::iter::once("/").chain(parts.iter().copied()).collect();
        let root = lexical_normal(data_root);
        if !root.is_absolute() || !p.starts_with(&root) {
            return Err(format!(
                "audio_path '{raw}' is absolute and not under data_root {}",
                data_root.display()
            ));
        }
        return Ok(p);
    }
    let mut p = data_root.to_path_buf();
    p.extend(parts);
    Ok(p)
}

fn lexical_normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Refuses a resolved path whose real location (symlinks followed) is outside `data_root`.
/// Paths that do not exist are let through: opening them fails with a clearer error.
pub fn check_no_symlink_escape(data_root: &Path, path: &Path) -> Result<(), String> {
    let (Ok(root), Ok(real)) = (data_root.canonicalize(), path.canonicalize()) else {
        return Ok(());
    };
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(format!(
            "{} resolves to {} (via a symlink), outside data_root {}",
            path.display(),
            real.display(),
            root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_and_slash_paths_join_under_the_root() {
        let root = Path::new("/data");
        assert_eq!(
            resolve_audio_path(root, "keep\\ru\\golos\\a.wav").unwrap(),
            PathBuf::from("/data/keep/ru/golos/a.wav")
        );
        assert_eq!(
            resolve_audio_path(root, "keep/./en//b.wav").unwrap(),
            PathBuf::from("/data/keep/en/b.wav")
        );
        assert_eq!(
            resolve_audio_path(root, "/data/keep/c.wav").unwrap(),
            PathBuf::from("/data/keep/c.wav")
        );
    }

    #[test]
    fn escapes_are_refused() {
        let root = Path::new("/data");
        for bad in [
            "../etc/passwd",
            "keep\\..\\..\\x.wav",
            "a/../b.wav",
            "/etc/passwd",
            "\\etc\\passwd",
            "C:\\x.wav",
            "/datax/a.wav",
            "",
            ".",
            "./",
        ] {
            assert!(resolve_audio_path(root, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlink_out_of_the_root_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.wav"), b"x").unwrap();
        std::fs::write(root.path().join("in.wav"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.wav"),
            root.path().join("link.wav"),
        )
        .unwrap();
        let p = resolve_audio_path(root.path(), "link.wav").unwrap();
        assert!(check_no_symlink_escape(root.path(), &p).is_err());
        let p = resolve_audio_path(root.path(), "in.wav").unwrap();
        assert!(check_no_symlink_escape(root.path(), &p).is_ok());
    }
}
