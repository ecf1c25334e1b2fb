//! What the binary's end-to-end tests share: the small init-model fixture, file writing, and
//! running `tpo-engine` with a check that it never panics.
#![allow(dead_code)] // each test binary uses its own part

pub mod devices;
pub mod gpu;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn chat_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
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
