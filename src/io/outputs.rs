//! Where a command may write. One rule for every command:
//! - an output is never one of the command's input files, by whatever path it is named
//!   (a symlink, `./`, a hard link);
//! - an output is never inside a model directory the command reads;
//! - missing parent directories of an output are created when it is written;
//! - an output never lies inside the run directory of a live run (`run_lock`).
//!
//! Checked before any work, so a refused output costs nothing and touches nothing.

use super::paths::resolve;
use anyhow::{bail, Result};
use std::path::Path;

/// What a command reads: input files and model directories, each with its flag.
#[derive(Default)]
pub struct Inputs<'a> {
    files: Vec<(&'a str, &'a Path)>,
    dirs: Vec<(&'a str, &'a Path)>,
}

impl<'a> Inputs<'a> {
    pub fn file(mut self, flag: &'a str, path: &'a Path) -> Self {
        self.files.push((flag, path));
        self
    }

    pub fn dir(mut self, flag: &'a str, path: &'a Path) -> Self {
        self.dirs.push((flag, path));
        self
    }

    /// An error naming both flags when `out` (given as `out_flag`) is one of the input files
    /// or lies inside (or is) one of the model directories; or when it lies inside the run
    /// directory of a live run (`RunLock`).
    pub fn check_output(&self, out_flag: &str, out: &Path) -> Result<()> {
        super::run_lock::RunLock::check_not_inside_a_running(out)
            .map_err(|e| anyhow::anyhow!("{out_flag} {e}"))?;
        let target = resolve(out);
        for &(flag, file) in &self.files {
            if same_file(out, &target, file) {
                bail!(
                    "{out_flag} {}: it is also {flag}; an output never replaces an input (choose another path)",
                    out.display()
                );
            }
        }
        for &(flag, dir) in &self.dirs {
            let dir_path = resolve(dir);
            if target.starts_with(&dir_path) {
                bail!(
                    "{out_flag} {}: it is inside {flag} {}; outputs never go into a model directory a command reads (choose a path outside it)",
                    out.display(),
                    dir.display()
                );
            }
        }
        Ok(())
    }
}

/// Whether `out` (resolved: `target`) names the same file as `input`: the same inode when
/// both exist, else the same resolved path.
fn same_file(out: &Path, target: &Path, input: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(out), std::fs::metadata(input)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    resolve(input) == target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_or_inside_a_model_is_refused() {
        let tmp = tempfile::TempDir::new().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let prompts = tmp.path().join("p.jsonl");
        std::fs::write(&prompts, "x").unwrap();
        let inputs = Inputs::default()
            .file("--prompts", &prompts)
            .dir("--model", &model);
        let err = |out: &Path| inputs.check_output("--out", out).unwrap_err().to_string();
        assert!(err(&prompts).contains("it is also --prompts"));
        let dotted = tmp.path().join(".").join("p.jsonl");
        assert!(err(&dotted).contains("it is also --prompts"));
        let link = tmp.path().join("link.jsonl");
        std::os::unix::fs::symlink(&prompts, &link).unwrap();
        assert!(err(&link).contains("it is also --prompts"));
        let hard = tmp.path().join("hard.jsonl");
        std::fs::hard_link(&prompts, &hard).unwrap();
        assert!(err(&hard).contains("it is also --prompts"));
        assert!(err(&model.join("config.json")).contains("inside --model"));
        assert!(err(&model.join("new/sub/out.jsonl")).contains("inside --model"));
        assert!(err(&model).contains("inside --model"));
        let around = tmp.path().join("model").join("..").join("model").join("x");
        assert!(err(&around).contains("inside --model"));
        // `..` after a directory that does not exist yet.
        let missing = tmp.path().join("nonexist").join("..");
        assert!(err(&missing.join("model").join("config.json")).contains("inside --model"));
        assert!(err(&missing.join("p.jsonl")).contains("it is also --prompts"));
        for fine in ["out.jsonl", "model2/out.jsonl", "missing/deeper/out.jsonl"] {
            inputs
                .check_output("--out", &tmp.path().join(fine))
                .unwrap();
        }
    }
}
