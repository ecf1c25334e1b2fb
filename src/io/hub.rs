//! Hugging Face Hub model ids (`org/name`, `org/name@revision`) resolved through the local
//! Hugging Face cache, in the layout and with the environment variables huggingface_hub
//! uses: the cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`; a model lives in
//! `models--org--name/`, `refs/REVISION` holds the commit of a branch or tag, and
//! `snapshots/COMMIT/` its files. A local path always wins over an id.
//!
//! What is not cached is downloaded (`hub_download.rs`), unless `HF_HUB_OFFLINE` is set.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The cache directory huggingface_hub would use.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    let home = env("HF_HOME").or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("huggingface"))
    })?;
    Some(home.join("hub"))
}

/// `org/name` and the revision (default `main`) of a Hub id, or None when `arg` is not
/// one: exactly one `/` between two non-empty names of letters, digits, `-`, `_` and `.`.
pub fn parse_id(arg: &str) -> Option<(&str, &str, &str)> {
    let (repo, revision) = match arg.split_once('@') {
        Some((repo, rev)) if !rev.is_empty() => (repo, rev),
        Some(_) => return None,
        None => (arg, "main"),
    };
    let (org, name) = repo.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(org) && ok(name) && !revision.contains("..")).then_some((org, name, revision))
}

/// The directory a model argument names: the path itself when it exists, else the cached
/// snapshot of a Hub id.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some((org, name, revision)) = parse_id(arg) else {
        bail!("{arg}: no such directory (nor a Hub id org/name[@revision])");
    };
    let cache = cache_dir()
        .context("no Hugging Face cache: set HF_HUB_CACHE or HF_HOME (HOME is not set either)")?;
    let repo = cache.join(format!("models--{org}--{name}"));
    if let Some(snapshot) = cached(&repo, revision) {
        return Ok(snapshot);
    }
    let looked = repo.join("refs").join(revision);
    if offline() {
        bail!(
            "{arg}: not a local directory, and not in the Hugging Face cache (no {}; the cache is HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), and HF_HUB_OFFLINE is set",
            looked.display()
        );
    }
    super::hub_download::download(&repo, &format!("{org}/{name}"), revision).with_context(|| {
        format!(
            "{arg}: not in the Hugging Face cache ({}), and downloading it failed",
            looked.display()
        )
    })
}

/// The cached snapshot of `revision` (a branch, a tag or a commit), when it is there.
fn cached(repo: &Path, revision: &str) -> Option<PathBuf> {
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snapshot = repo.join("snapshots").join(commit);
    snapshot.join("config.json").exists().then_some(snapshot)
}

/// huggingface_hub's HF_HUB_OFFLINE: 1, true, yes or on.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `resolve_model` of a command's model flag, naming the flag in errors.
pub fn resolve_flag(flag: &str, path: &Path) -> Result<PathBuf> {
    resolve_model(&path.to_string_lossy()).with_context(|| flag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_paths() {
        assert_eq!(
            parse_id("HuggingFaceTB/SmolLM2-135M-Instruct"),
            Some(("HuggingFaceTB", "SmolLM2-135M-Instruct", "main"))
        );
        assert_eq!(parse_id("org/m.v1@v2.0"), Some(("org", "m.v1", "v2.0")));
        for not in [
            "model",
            "a/b/c",
            "/abs",
            "./x/y",
            "org/",
            "/name",
            "org/name@",
            "o g/n",
            "../x",
        ] {
            assert_eq!(parse_id(not), None, "{not}");
        }
    }
}
