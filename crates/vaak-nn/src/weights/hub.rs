//! Resolving `hf://` files through the Hugging Face hub cache.
//!
//! The cache layout is the one `huggingface_hub` and `hf-hub` share:
//! `<cache>/models--<org>--<name>/refs/<revision>` holds a commit sha and
//! `<cache>/models--<org>--<name>/snapshots/<sha>/<path>` the file (usually a symlink into
//! `blobs/`). Offline, only that layout is consulted; online, `hf-hub`'s sync API downloads
//! into it.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// How to reach the hub.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Never touch the network. Offline mode is also on when `HF_HUB_OFFLINE` is set to
    /// `1`/`true`/`yes`/`on`.
    pub offline: bool,
    /// The hub cache directory. Default: `$HF_HUB_CACHE` (or the older
    /// `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Hub endpoint (default: `$HF_ENDPOINT` or `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Access token (default: `$HF_TOKEN` or the token file in `$HF_HOME`).
    pub token: Option<String>,
}

/// A handle on the hub cache (and the hub itself unless offline).
#[derive(Clone, Debug)]
pub struct Hub {
    offline: bool,
    cache_dir: PathBuf,
    endpoint: Option<String>,
    token: Option<String>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn default_cache_dir() -> PathBuf {
    // HUGGINGFACE_HUB_CACHE is the older name huggingface_hub still honours.
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn is_commit_sha(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

impl Hub {
    /// Builds a hub handle; the environment fills what `opts` leaves unset.
    pub fn new(opts: &HubOptions) -> Self {
        Self {
            offline: opts.offline || env_flag("HF_HUB_OFFLINE"),
            cache_dir: opts.cache_dir.clone().unwrap_or_else(default_cache_dir),
            endpoint: opts.endpoint.clone(),
            token: opts.token.clone(),
        }
    }

    /// Whether this handle refuses network access.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The cache directory searched and filled.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The cached snapshot directory of `repo` at `revision`, if the cache knows the revision.
    pub fn cached_snapshot(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        let repo_dir = self.repo_dir(repo);
        let sha = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            Ok(s) => s.trim().to_string(),
            Err(_) if is_commit_sha(revision) => revision.to_ascii_lowercase(),
            Err(_) => return None,
        };
        if sha.is_empty() || sha.contains('/') || sha.contains("..") {
            return None;
        }
        let snap = repo_dir.join("snapshots").join(sha);
        snap.is_dir().then_some(snap)
    }

    /// The cached copy of one file, if present.
    pub fn cached_file(&self, repo: &str, revision: &str, path: &str) -> Option<PathBuf> {
        let p = self.cached_snapshot(repo, revision)?.join(path);
        // `is_file` follows the symlink into blobs/, so a dangling link counts as missing.
        p.is_file().then_some(p)
    }

    fn not_cached(&self, repo: &str, revision: &str, path: &str) -> Error {
        Error::HubFileNotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            path: path.to_string(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    fn api_repo(
        &self,
        repo: &str,
        revision: &str,
    ) -> std::result::Result<hf_hub::api::sync::ApiRepo, String> {
        let mut builder =
            ApiBuilder::from_cache(Cache::new(self.cache_dir.clone())).with_progress(false);
        if let Some(ep) = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
        {
            builder = builder.with_endpoint(ep);
        }
        if let Some(tok) = &self.token {
            builder = builder.with_token(Some(tok.clone()));
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        Ok(api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        )))
    }

    /// Resolves one file: the cache first, then (online only) a download into the cache.
    pub fn file(&self, repo: &str, revision: &str, path: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached_file(repo, revision, path) {
            return Ok(p);
        }
        if self.offline {
            return Err(self.not_cached(repo, revision, path));
        }
        let download_err = |reason: String| Error::HubDownload {
            repo: repo.to_string(),
            revision: revision.to_string(),
            path: path.to_string(),
            reason,
        };
        let api = self.api_repo(repo, revision).map_err(download_err)?;
        api.get(path).map_err(|e| download_err(e.to_string()))
    }

    /// Lists the files of a repo (paths relative to its root): the cached snapshot offline,
    /// the hub's listing online.
    pub fn list(&self, repo: &str, revision: &str) -> Result<Vec<String>> {
        if self.offline {
            let Some(snap) = self.cached_snapshot(repo, revision) else {
                return Err(self.not_cached(repo, revision, ""));
            };
            let mut out = Vec::new();
            list_rec(&snap, "", &mut out)?;
            out.sort();
            return Ok(out);
        }
        let download_err = |reason: String| Error::HubDownload {
            repo: repo.to_string(),
            revision: revision.to_string(),
            path: String::new(),
            reason,
        };
        let api = self.api_repo(repo, revision).map_err(download_err)?;
        let info = api.info().map_err(|e| download_err(e.to_string()))?;
        let mut out: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        out.sort();
        Ok(out)
    }
}

fn list_rec(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let p = entry.path();
        if p.is_dir() {
            list_rec(&p, &child, out)?;
        } else if p.is_file() {
            out.push(child);
        }
    }
    Ok(())
}
