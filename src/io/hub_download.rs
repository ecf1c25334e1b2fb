//! Downloading a Hub model into the Hugging Face cache, in huggingface_hub's layout, so that
//! both read it: `blobs/ETAG` holds each file, `snapshots/COMMIT/NAME` links to it, and
//! `refs/REVISION` names the commit (written last: a download cut short is not a snapshot
//! a revision names). `HF_ENDPOINT` (default https://huggingface.co) is the server and
//! `HF_TOKEN` its token. Only the files a model needs are fetched: configs, tokenizer
//! files, chat template and safetensors weights. A file arrives in `blobs/ETAG.incomplete`
//! and is renamed when whole; a download cut short is continued from there by the next run.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Whether a file of the repository is one a model needs.
fn wanted(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(
        base,
        "config.json"
            | "generation_config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "chat_template.jinja"
            | "model.safetensors.index.json"
            | "adapter_config.json"
    ) || base.ends_with(".safetensors")
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// The request with `HF_TOKEN` as its bearer token, where it is set.
fn authorized<B>(mut request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    let token = std::env::var("HF_TOKEN")
        .or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    request
}

fn get(url: &str) -> Result<ureq::http::Response<ureq::Body>> {
    authorized(ureq::get(url)).call().map_err(|e| match e {
        ureq::Error::StatusCode(401 | 403) => {
            anyhow::anyhow!(
                "{url}: HTTP {e}: not authorized (set HF_TOKEN for a gated or private model)"
            )
        }
        e => anyhow::anyhow!("{url}: {e}"),
    })
}

/// A file's blob name (its ETag, as huggingface_hub names blobs) and size. A HEAD request
/// that does not follow the Hub's redirect to its file store reads them from the redirect's
/// `X-Linked-Etag` and `X-Linked-Size`; a redirect without them (a renamed repository, a
/// mirror) is followed, and the final answer's `ETag` and `Content-Length` are used. A
/// redirect's own length (its short body) is never taken for the file's.
fn file_info(url: &str) -> Result<(Option<String>, Option<u64>)> {
    let head = |follow: bool| -> Result<ureq::http::Response<ureq::Body>> {
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        if !follow {
            config = config.max_redirects(0).max_redirects_will_error(false);
        }
        let agent: ureq::Agent = config.build().into();
        let response = authorized(agent.head(url))
            .header("Accept-Encoding", "identity")
            .call()
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = response.status().as_u16();
        if !(200..400).contains(&status) {
            bail!(
                "{url}: HTTP {status}{}",
                if matches!(status, 401 | 403) {
                    ": not authorized (set HF_TOKEN for a gated or private model)"
                } else {
                    ""
                }
            );
        }
        Ok(response)
    };
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)?
            .to_str()
            .ok()
            .map(|v| v.trim().to_string())
    };
    let etag_of = |e: String| {
        Some(e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let first = head(false)?;
    if (200..300).contains(&first.status().as_u16()) {
        let etag = header(&first, "x-linked-etag").or_else(|| header(&first, "etag"));
        let size = header(&first, "x-linked-size").or_else(|| header(&first, "content-length"));
        return Ok((etag.and_then(etag_of), size.and_then(|v| v.parse().ok())));
    }
    let linked_etag = header(&first, "x-linked-etag").and_then(etag_of);
    let linked_size = header(&first, "x-linked-size").and_then(|v| v.parse().ok());
    if linked_etag.is_some() && linked_size.is_some() {
        return Ok((linked_etag, linked_size));
    }
    let last = head(true)?;
    if !(200..300).contains(&last.status().as_u16()) {
        return Ok((linked_etag, linked_size));
    }
    let etag = linked_etag.or_else(|| header(&last, "etag").and_then(etag_of));
    let size = linked_size.or_else(|| header(&last, "content-length").and_then(|v| v.parse().ok()));
    Ok((etag, size))
}

/// The range a 206 answer holds, from its `Content-Range: bytes FIRST-LAST/TOTAL`: FIRST.
fn range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = response.headers().get("content-range")?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Downloads `url` into `blob`, through `BLOB.incomplete` (huggingface_hub's name for a blob
/// on its way), then a rename. A partial file left by a download that was cut short is
/// continued with a Range request, not restarted; a server that ignores the range (or
/// answers another one) sends the whole file, which replaces it; a partial file the server
/// says is already whole (416 naming its length) is taken as it is. The partial file is
/// locked while it is written, so two processes never write one blob.
fn fetch_blob(url: &str, blob: &Path, size: Option<u64>, file: &str) -> Result<()> {
    let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    if !crate::io::run_lock::try_lock(&out) {
        bail!(
            "{}: another process is downloading {file} into it; wait for it to finish",
            partial.display()
        );
    }
    if blob.exists() {
        // Another process finished it while this one waited to open the partial file.
        let _ = std::fs::remove_file(&partial);
        return Ok(());
    }
    let mut have = out.metadata()?.len();
    if size.is_some_and(|s| have > s) {
        out.set_len(0)?;
        have = 0;
    }
    let bar = ProgressBar::new(size.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{bytes}}/{{total_bytes}} {file} [{{eta}}]"
        ))
        .expect("the template is valid"),
    );
    if Some(have) != size {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        // The file from byte `from` on (0: all of it).
        let get = |from: u64| {
            let mut request = authorized(agent.get(url)).header("Accept-Encoding", "identity");
            if from > 0 {
                request = request.header("Range", &format!("bytes={from}-"));
            }
            request.call().map_err(|e| anyhow::anyhow!("{url}: {e}"))
        };
        let mut response = get(have)?;
        let status = response.status().as_u16();
        let whole_already = status == 416
            && have > 0
            && response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                == Some(have);
        if status == 416 && !whole_already {
            // The partial file is not a prefix the server recognises: start over.
            out.set_len(0)?;
            have = 0;
            response = get(0)?;
        }
        let status = response.status().as_u16();
        if !whole_already {
            if !(200..300).contains(&status) {
                bail!("{url}: HTTP {status}");
            }
            if have > 0 && (status != 206 || range_start(&response) != Some(have)) {
                // The whole file came back, or another range: start over.
                out.set_len(0)?;
                have = 0;
            }
            bar.set_position(have);
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).with_context(|| {
                    format!("{url}: reading (run again to continue from {have} bytes)")
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                have += n as u64;
                bar.inc(n as u64);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(s) = size.filter(|&s| s != have) {
        bail!("{url}: the download stopped at {have} of {s} bytes (run again to continue)");
    }
    out.sync_all()?;
    std::fs::rename(&partial, blob)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), blob.display()))
}

/// Downloads `org/name` at `revision` into the cache's `repo` directory (models--org--name)
/// and returns its snapshot.
pub fn download(repo: &Path, id: &str, revision: &str) -> Result<PathBuf> {
    let base = endpoint();
    let info_url = format!("{base}/api/models/{id}/revision/{revision}");
    let info: Value = serde_json::from_reader(get(&info_url)?.body_mut().as_reader())
        .with_context(|| format!("{info_url}: not the Hub's model info"))?;
    let commit = info["sha"]
        .as_str()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .with_context(|| format!("{info_url}: no commit (\"sha\") in the answer"))?
        .to_string();
    let files: Vec<String> = info["siblings"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|f| f["rfilename"].as_str())
                .filter(|f| wanted(f) && !f.split('/').any(|part| part == ".." || part.is_empty()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !files
        .iter()
        .any(|f| f == "config.json" || f == "adapter_config.json")
    {
        bail!("{id}@{revision}: the repository has no config.json (nor adapter_config.json): not a model checkpoint or adapter");
    }
    let snapshot = repo.join("snapshots").join(&commit);
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("cannot create {}", blobs.display()))?;
    eprintln!(
        "downloading {id}@{revision} ({commit}) from {base} into {}",
        repo.display()
    );
    for (i, file) in files.iter().enumerate() {
        let link = snapshot.join(file);
        if link.exists() {
            continue;
        }
        let url = format!("{base}/{id}/resolve/{commit}/{file}");
        let (etag, size) = file_info(&url)?;
        let etag = etag.unwrap_or_else(|| format!("{commit}-{i}"));
        let blob = blobs.join(&etag);
        if !blob.exists() {
            fetch_blob(&url, &blob, size, file)?;
        }
        // A relative link, as huggingface_hub makes: up from snapshots/COMMIT/DIRS.
        let depth = file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&etag);
        let parent = link.parent().expect("a file in the snapshot");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    if revision != commit {
        let refs = repo.join("refs").join(revision);
        crate::io::write_atomic(&refs, commit.as_bytes())?;
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_model_needs_is_fetched() {
        for yes in [
            "config.json",
            "model-00001-of-00002.safetensors",
            "sub/tokenizer.json",
            "chat_template.jinja",
        ] {
            assert!(wanted(yes), "{yes}");
        }
        for no in [
            "README.md",
            "pytorch_model.bin",
            "model.onnx",
            "config.yaml",
            ".gitattributes",
        ] {
            assert!(!wanted(no), "{no}");
        }
    }
}
