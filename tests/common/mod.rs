//! What the binary's end-to-end tests share: the small init-model fixture, file writing, and
//! running `tpo-engine` with a check that it never panics.
#![allow(dead_code)] // each test binary uses its own part

pub mod devices;
pub mod gpu;
pub mod http;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn chat_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The JSON objects of a JSONL file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// How a run of the binary ended.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stderr: String,
}

/// Runs `tpo-engine --threads THREADS ARGS..`; a panic fails the calling test.
pub fn run_on_threads<S: AsRef<OsStr>>(threads: &str, args: impl IntoIterator<Item = S>) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .args(["--threads", threads])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "the binary panicked:\n{stderr}"
    );
    Run {
        ok: output.status.success(),
        code: output.status.code(),
        stderr,
    }
}

/// Starts `tpo-engine --threads 1 ARGS..` in the background and waits, up to 60 s, until it
/// holds the run directory `out` (its lock file appears): a live run for a second process to
/// meet. The caller kills it.
pub fn start_holding<S: AsRef<OsStr>>(
    args: impl IntoIterator<Item = S>,
    out: &Path,
) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .args(["--threads", "1"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".tpo-engine.lock");
    let started = std::time::Instant::now();
    while !lock.exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(lock.exists(), "the first run never took {}", out.display());
    child
}
