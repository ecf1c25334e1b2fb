//! Hub model ids (`org/name[@revision]`) read from a Hugging Face cache laid out in a
//! temporary directory as huggingface_hub lays it out: blobs, snapshots of symlinks to them,
//! and refs naming commits; found through HF_HUB_CACHE or HF_HOME; a local path wins.

mod common;

use common::{chat_fixture, s, write};
use std::path::{Path, PathBuf};
use std::process::Command;

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
fn a_local_path_wins_and_a_missing_id_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-cache");
    std::fs::create_dir(&empty).unwrap();
    // A directory ./org/tiny is the model, whatever the cache holds.
    let local = tmp.path().join("org/tiny");
    std::fs::create_dir_all(&local).unwrap();
    for f in std::fs::read_dir(chat_fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, local.join(f.file_name().unwrap())).unwrap();
    }
    assert!(generate("org/tiny", &[("HF_HUB_CACHE", &empty)], tmp.path()).is_ok());
    let err = generate("org/absent@v2", &[("HF_HUB_CACHE", &empty)], tmp.path()).unwrap_err();
    for part in [
        "org/absent@v2",
        "models--org--absent/refs/v2",
        "HF_HUB_CACHE",
        "huggingface-cli download",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    // A ref naming a commit whose snapshot is gone.
    let hub = cache(&tmp.path().join("hub"));
    std::fs::remove_dir_all(hub.join("models--org--tiny/snapshots").join(COMMIT)).unwrap();
    let err = generate("org/tiny", &[("HF_HUB_CACHE", &hub)], &empty).unwrap_err();
    assert!(err.contains(COMMIT) && err.contains("missing"), "{err}");
    let err = generate("not-an-id", &[("HF_HUB_CACHE", &empty)], &empty).unwrap_err();
    assert!(err.contains("no such directory"), "{err}");
}
