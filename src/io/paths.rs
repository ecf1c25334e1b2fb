//! A path as the file system will take it, for comparing where commands read and write.

use std::path::{Path, PathBuf};

/// `path` made absolute, component by component: each part that exists is canonicalized
/// (symlinks and `..` resolved by the file system); past the first part that does not, `.`
/// and `..` are resolved lexically, which is exact there, since the missing parts will be
/// created as plain directories.
pub fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    let mut resolved = PathBuf::new();
    let mut exists = true;
    for part in absolute.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => resolved.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if exists {
                    match resolved.canonicalize() {
                        Ok(real) => resolved = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    resolved
}
