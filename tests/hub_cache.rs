//! Hub model ids (`org/name[@revision]`) read from a Hugging Face cache laid out in a
//! temporary directory as huggingface_hub lays it out: blobs, snapshots of symlinks to them,
//! and refs naming commits; found through HF_HUB_CACHE or HF_HOME; a local path wins.

mod common;

use common::http::{read_request, reply};
use common::{chat_fixture, s, write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TAGGED: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// `cache/models--org--tiny` holding the chat fixture at two commits: main and tag v1.
fn cache(root: &Path) -> PathBuf {
    let repo = root.join("models--org--tiny");
    for (reference, commit) in [("main", COMMIT), ("v1", TAGGED)] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        for f in std::fs::read_dir(chat_fixture()).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap();
            let blob = repo
                .join("blobs")
                .join(format!("{commit}-{}", name.to_string_lossy()));
            std::fs::copy(&f, &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snapshot.join(name)).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        write(&repo.join("refs").join(reference), &format!("{commit}\n"));
    }
    root.to_path_buf()
}

/// `generate` of one greedy completion from `model`, with `env`, in `cwd`: the output, or
/// the error.
fn generate(model: &str, env: &[(&str, &Path)], cwd: &Path) -> Result<String, String> {
    let prompts = write(&cwd.join("p.jsonl"), "{\"prompt\": \"Name a river.\"}\n");
    let out = cwd.join("out.jsonl");
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tpo-engine"));
    cmd.args([
        "--threads",
        "1",
        "generate",
        "--model",
        model,
        "--prompts",
        s(&prompts),
    ])
    .args(["--out", s(&out), "--greedy", "--max-new-tokens", "5"])
    .current_dir(cwd)
    .env_remove("HF_HUB_CACHE")
    .env_remove("HUGGINGFACE_HUB_CACHE")
    .env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if output.status.success() {
        Ok(std::fs::read_to_string(&out).unwrap())
    } else {
        Err(stderr)
    }
}

#[test]
fn hub_ids_resolve_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let want = generate(s(&chat_fixture()), &[], &work).unwrap();
    let hub = cache(&tmp.path().join("hub"));
    for model in [
        "org/tiny",
        "org/tiny@main",
        "org/tiny@v1",
        &format!("org/tiny@{TAGGED}"),
    ] {
        let got = generate(model, &[("HF_HUB_CACHE", &hub)], &work);
        assert_eq!(got.as_deref(), Ok(want.as_str()), "{model}");
    }
    // HF_HOME/hub is the cache when HF_HUB_CACHE is not set.
    let got = generate("org/tiny", &[("HF_HOME", tmp.path())], &work);
    assert_eq!(got.as_deref(), Ok(want.as_str()));
}

#[test]
fn a_local_path_wins_and_offline_a_missing_id_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-cache");
    std::fs::create_dir(&empty).unwrap();
    let offline: &Path = Path::new("1");
    // A directory ./org/tiny is the model, whatever the cache holds.
    let local = tmp.path().join("org/tiny");
    std::fs::create_dir_all(&local).unwrap();
    for f in std::fs::read_dir(chat_fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, local.join(f.file_name().unwrap())).unwrap();
    }
    let env = [
        ("HF_HUB_CACHE", empty.as_path()),
        ("HF_HUB_OFFLINE", offline),
    ];
    assert!(generate("org/tiny", &env, tmp.path()).is_ok());
    let err = generate("org/absent@v2", &env, tmp.path()).unwrap_err();
    for part in [
        "org/absent@v2",
        "models--org--absent/refs/v2",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE is set",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    // A ref naming a commit whose snapshot is gone is not cached.
    let hub = cache(&tmp.path().join("hub"));
    std::fs::remove_dir_all(hub.join("models--org--tiny/snapshots").join(COMMIT)).unwrap();
    let env = [("HF_HUB_CACHE", hub.as_path()), ("HF_HUB_OFFLINE", offline)];
    let err = generate("org/tiny", &env, &empty).unwrap_err();
    assert!(err.contains("models--org--tiny/refs/main"), "{err}");
    let err = generate("not-an-id", &env, &empty).unwrap_err();
    assert!(err.contains("no such directory"), "{err}");
}

/// A server on 127.0.0.1 that plays the Hub's model-info and file endpoints for
/// `org/remote` (the chat fixture at COMMIT, plus a README), answering 404 to anything
/// else; it records each request line and Authorization header.
fn hub_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Some(request) = read_request(&stream) else {
                continue;
            };
            let (method, path) = (request.method.as_str(), request.path.as_str());
            let auth = request.header("authorization").unwrap_or("");
            let from: usize = request
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let range = if from > 0 {
                format!(" from {from}")
            } else {
                String::new()
            };
            log.lock()
                .unwrap()
                .push(format!("{method} {path}{range} {auth}"));
            let mut files: Vec<String> = std::fs::read_dir(chat_fixture())
                .unwrap()
                .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.push("README.md".into());
            let (status, headers, body) = if path == "/api/models/org/remote/revision/main" {
                let siblings: Vec<String> = files
                    .iter()
                    .map(|f| format!("{{\"rfilename\": \"{f}\"}}"))
                    .collect();
                let body = format!(
                    "{{\"sha\": \"{COMMIT}\", \"siblings\": [{}]}}",
                    siblings.join(", ")
                );
                ("200 OK", String::new(), body.into_bytes())
            } else if path == format!("/org/remote/resolve/{COMMIT}/model.safetensors") {
                // The weights live elsewhere, as the Hub's large files do: a redirect with a
                // body of its own and no X-Linked headers (as a mirror might answer).
                (
                    "302 Found",
                    "Location: /store/model.safetensors\r\n".to_string(),
                    b"see /store".to_vec(),
                )
            } else if let Some(file) = path
                .strip_prefix(&format!("/org/remote/resolve/{COMMIT}/"))
                .or_else(|| path.strip_prefix("/store/"))
            {
                match std::fs::read(chat_fixture().join(file)) {
                    // A Range request gets the rest of the file (206), as the Hub's file
                    // store answers it.
                    Ok(bytes) if from > 0 && from < bytes.len() => (
                        "206 Partial Content",
                        format!(
                            "ETag: \"etag{}\"\r\nContent-Range: bytes {from}-{}/{}\r\n",
                            bytes.len(),
                            bytes.len() - 1,
                            bytes.len()
                        ),
                        bytes[from..].to_vec(),
                    ),
                    Ok(bytes) => (
                        "200 OK",
                        format!("ETag: \"etag{}\"\r\n", bytes.len()),
                        bytes,
                    ),
                    Err(_) => ("404 Not Found", String::new(), b"no".to_vec()),
                }
            } else {
                ("404 Not Found", String::new(), b"no such repo".to_vec())
            };
            reply(&stream, method, status, &headers, &body);
        }
    });
    (addr, seen)
}

#[test]
fn an_uncached_id_is_downloaded_into_the_cache_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let want = generate(s(&chat_fixture()), &[], &work).unwrap();
    let (endpoint, seen) = hub_server();
    let cache = tmp.path().join("cache");
    let token: &Path = Path::new("secret-token");
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", Path::new(&endpoint)),
        ("HF_TOKEN", token),
    ];
    assert_eq!(
        generate("org/remote", &env, &work).as_deref(),
        Ok(want.as_str())
    );
    // huggingface_hub's layout: refs, a snapshot of relative links, blobs.
    let repo = cache.join("models--org--remote");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let link = repo.join("snapshots").join(COMMIT).join("config.json");
    let target = std::fs::read_link(&link).unwrap();
    assert!(target.starts_with("../../blobs"), "{}", target.display());
    assert_eq!(
        std::fs::read(&link).unwrap(),
        std::fs::read(chat_fixture().join("config.json")).unwrap()
    );
    assert!(!repo
        .join("snapshots")
        .join(COMMIT)
        .join("README.md")
        .exists());
    // The token goes to the Hub; a redirect elsewhere (the weights' store, which a signed
    // URL opens) does not carry it.
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|r| r.ends_with("Bearer secret-token") != r.contains(" /store/")),
        "{requests:?}"
    );
    assert!(requests
        .iter()
        .any(|r| r.starts_with("GET /store/model.safetensors")));
    // Then it is read from the cache, offline.
    let offline = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    assert_eq!(
        generate("org/remote", &offline, &work).as_deref(),
        Ok(want.as_str())
    );
    // An id the server does not have: its URL and status.
    let err = generate("org/none", &env, &work).unwrap_err();
    assert!(
        err.contains("/api/models/org/none/revision/main") && err.contains("404"),
        "{err}"
    );
}

/// A download cut short leaves `blobs/ETAG.incomplete`; the next one continues it with a
/// Range request instead of starting over, and the blob comes out whole.
#[test]
fn a_partial_download_is_continued_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let want = generate(s(&chat_fixture()), &[], &work).unwrap();
    let (endpoint, seen) = hub_server();
    let cache = tmp.path().join("cache");
    let weights = std::fs::read(chat_fixture().join("model.safetensors")).unwrap();
    let blobs = cache.join("models--org--remote").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let cut = weights.len() / 3;
    let partial = blobs.join(format!("etag{}.incomplete", weights.len()));
    std::fs::write(&partial, &weights[..cut]).unwrap();
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", Path::new(&endpoint)),
    ];
    assert_eq!(
        generate("org/remote", &env, &work).as_deref(),
        Ok(want.as_str())
    );
    let requests = seen.lock().unwrap().clone();
    // The weights' GET went through the redirect, which kept the range.
    let gets: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET /store/model.safetensors"))
        .collect();
    assert_eq!(gets.len(), 1, "{requests:?}");
    assert!(gets[0].contains(&format!(" from {cut} ")), "{requests:?}");
    assert_eq!(
        std::fs::read(blobs.join(format!("etag{}", weights.len()))).unwrap(),
        weights
    );
    assert!(!partial.exists());
}
