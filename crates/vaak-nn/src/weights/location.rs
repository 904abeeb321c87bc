//! Parsing weight locations: local paths and `hf://org/repo[@revision]/path/in/repo`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where weights live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightLocation {
    /// A local file or directory.
    Local(PathBuf),
    /// A file or directory inside a Hugging Face model repository. `path` is relative to the repo
    /// root and may be empty (the whole repo).
    Hub {
        repo: String,
        revision: String,
        path: String,
    },
}

/// The revision used when an `hf://` location names none.
pub const DEFAULT_REVISION: &str = "main";

impl WeightLocation {
    /// Parses a location. Anything without a `scheme://` prefix is a local path; `hf://` is the
    /// only scheme understood. The repo must be `org/name` (two segments) so that the rest of the
    /// string is unambiguously the path inside it; a revision follows the repo name after `@` and
    /// cannot contain `/` (use the commit sha for pull-request refs).
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec.trim().is_empty() {
            return Err(bad("empty location"));
        }
        let Some((scheme, rest)) = spec.split_once("://") else {
            return Ok(Self::Local(PathBuf::from(spec)));
        };
        if scheme != "hf" {
            return Err(bad(&format!(
                "unknown scheme {scheme:?}:// (only hf:// or a local path)"
            )));
        }
        let mut parts = rest.splitn(3, '/');
        let org = parts.next().unwrap_or("");
        let name_rev = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        if org.is_empty() || name_rev.is_empty() {
            return Err(bad("expected hf://org/repo[@revision][/path]"));
        }
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => {
                if r.is_empty() {
                    return Err(bad("empty revision after '@'"));
                }
                (n, r)
            }
            None => (name_rev, DEFAULT_REVISION),
        };
        for (what, s) in [("organisation", org), ("repository", name)] {
            if s.is_empty() {
                return Err(bad(&format!("empty {what} name")));
            }
            if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(bad(&format!(
                    "{what} name {s:?} may only hold letters, digits, '-', '_' and '.'"
                )));
            }
            if s == "." || s == ".." {
                return Err(bad(&format!("{what} name {s:?} is not allowed")));
            }
        }
        if revision.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(bad(&format!(
                "revision {revision:?} has invalid characters"
            )));
        }
        let path = path.trim_end_matches('/');
        if path.starts_with('/') || path.contains("//") {
            return Err(bad("path inside the repo has an empty segment"));
        }
        if path.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(bad(
                "path inside the repo may not contain '.' or '..' segments",
            ));
        }
        Ok(Self::Hub {
            repo: format!("{org}/{name}"),
            revision: revision.to_string(),
            path: path.to_string(),
        })
    }
}

impl WeightLocation {
    /// The location of `name` inside this one (a directory or repo path), e.g. the
    /// `config.json` next to the weights.
    pub fn join(&self, name: &str) -> Self {
        match self {
            Self::Local(p) => Self::Local(p.join(name)),
            Self::Hub {
                repo,
                revision,
                path,
            } => Self::Hub {
                repo: repo.clone(),
                revision: revision.clone(),
                path: if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}/{name}")
                },
            },
        }
    }

    /// The local path of one file at this location: the path itself, or the hub file from the
    /// cache (downloaded first when online).
    pub fn resolve_file(&self, hub: &super::HubOptions) -> Result<PathBuf> {
        match self {
            Self::Local(p) => {
                if p.is_file() {
                    Ok(p.clone())
                } else {
                    Err(Error::MissingFile { path: p.clone() })
                }
            }
            Self::Hub {
                repo,
                revision,
                path,
            } => super::Hub::new(hub).file(repo, revision, path),
        }
    }
}

impl FromStr for WeightLocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for WeightLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Hub {
                repo,
                revision,
                path,
            } => {
                write!(f, "hf://{repo}@{revision}")?;
                if !path.is_empty() {
                    write!(f, "/{path}")?;
                }
                Ok(())
            }
        }
    }
}
