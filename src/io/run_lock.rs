//! One owner per run directory: a run holds an exclusive `flock` on `DIR/.tpo-engine.lock`
//! for its lifetime (`--resume` takes the same lock), and no run starts inside a directory
//! that another live run holds. The kernel drops the lock when the process ends, however it
//! ends, so a killed run never leaves a stale lock behind.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".tpo-engine.lock";

/// The directories this process holds (canonical paths): its own locks are no conflict.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(vec![]);

/// An exclusive hold on a run directory, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    dir: PathBuf,
}

impl RunLock {
    /// Takes `dir`'s lock (the directory must exist), or fails naming the process that
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("cannot open the run directory {}", dir.display()))?;
        let path = canonical.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // A probe (`check_not_inside_a_running`) holds a free lock for an instant: wait
        // out such a hold before calling the directory taken.
        let free = (0..50).any(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            try_lock(&file)
        });
        if !free {
            bail!(
                "{}: another tpo-engine run ({}) is using this run directory; wait for it to end or choose another --out",
                dir.display(),
                holder(&path)
            );
        }
        use std::io::{Seek, Write};
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        written.with_context(|| format!("cannot write {}", path.display()))?;
        held().push(canonical.clone());
        Ok(RunLock {
            _file: file,
            dir: canonical,
        })
    }

    /// An error when `path`, or a directory above it, is a run directory that another live
    /// process holds: a run never writes into another's.
    pub fn check_not_inside_a_running(path: &Path) -> Result<()> {
        let target = super::paths::resolve(path);
        target
            .ancestors()
            .try_for_each(|dir| check_not_held_elsewhere(path, dir))
    }

    /// An error when the directory `dir` itself is a run directory another live process
    /// holds (the directories above it are not asked).
    pub fn check_not_held(dir: &Path) -> Result<()> {
        check_not_held_elsewhere(dir, &super::paths::resolve(dir))
    }
}

/// An error naming `path` when `dir` (resolved) holds a lock another live process holds.
fn check_not_held_elsewhere(path: &Path, dir: &Path) -> Result<()> {
    let lock = dir.join(LOCK_FILE);
    if held().iter().any(|h| h == dir) || !lock.is_file() {
        return Ok(());
    }
    let Ok(file) = File::open(&lock) else {
        return Ok(());
    };
    if try_lock(&file) {
        return Ok(()); // a finished run's lock file: nobody holds it
    }
    bail!(
        "{}: inside the run directory {} of a running tpo-engine ({}); wait for it to end or choose a path outside it",
        path.display(),
        dir.display(),
        holder(&lock)
    )
}

impl Drop for RunLock {
    fn drop(&mut self) {
        held().retain(|d| d != &self.dir);
    }
}

fn held() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes an exclusive lock on `file` without waiting; whether it was free. (A probe's lock
/// is released when its file is closed.)
pub(crate) fn try_lock(file: &File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this File owns.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// "pid N" from a lock file, as its holder wrote it.
fn holder(lock: &Path) -> String {
    match std::fs::read_to_string(lock) {
        Ok(text) if !text.trim().is_empty() => format!("pid {}", text.trim()),
        _ => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_refuses_a_second_lock_until_dropped() {
        let tmp = tempfile::TempDir::new().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let first = RunLock::acquire(&run).unwrap();
        // Our own hold is no conflict for paths inside it.
        RunLock::check_not_inside_a_running(&run.join("iter-1/train")).unwrap();
        // A second open file description conflicts, as another process's would.
        let other = File::open(run.join(LOCK_FILE)).unwrap();
        assert!(!try_lock(&other));
        drop(first);
        assert!(try_lock(&other));
    }
}
