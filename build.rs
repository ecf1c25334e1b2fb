//! Compiles every kernels/*.cu to PTX with nvcc and embeds it, and writes the kernels'
//! entry points as constants that every launch uses (OUT_DIR/kernels.rs: per file a module
//! with its `PTX` and a const per entry point, plus `ALL`). nvcc is found through NVCC,
//! CUDA_HOME or CUDA_PATH, PATH, or the toolchain scripts/install-cuda-toolchain.sh unpacks
//! into .cuda-toolchain/. CUDA_COMPUTE_CAP (e.g. 90) picks the target; the default is PTX
//! for compute_80, which the driver compiles for sm_80 and every newer GPU (bf16 needs
//! sm_80). With nvcc, a kernel that does not compile fails the build, and the entry points
//! come from the PTX, which must list exactly those of kernels/entries.txt (the build says
//! what to change otherwise). With no nvcc the build goes on CPU-only with a warning, the
//! PTX empty and the entry points read from kernels/entries.txt, so the launchers compile
//! against the same names either way: a renamed kernel fails the build, not a GPU run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = root.join(".cuda-toolchain/nvidia/cu13/bin/nvcc");
    local.is_file().then_some(local)
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let kernels = root.join("kernels");
    println!("cargo:rustc-check-cfg=cfg(tpo_cuda_kernels)");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_COMPUTE_CAP", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".cuda-toolchain/.installed").display()
    );
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let cu: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();

    let manifest_path = kernels.join("entries.txt");
    let manifest = read_manifest(&manifest_path);
    let nvcc = find_nvcc(&root);
    let Some(nvcc) = nvcc else {
        println!(
            "cargo:warning=no nvcc found (NVCC, CUDA_HOME, CUDA_PATH, PATH or .cuda-toolchain/): building without CUDA kernels; scripts/install-cuda-toolchain.sh installs one"
        );
        let modules: Vec<(String, Option<PathBuf>, Vec<String>)> = manifest
            .into_iter()
            .map(|(stem, entries)| (stem, None, entries))
            .collect();
        std::fs::write(out.join("kernels.rs"), generate(&modules)).unwrap();
        return;
    };
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP={cap}: expected digits such as 80 or 90");
    }
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let at = text.find("release ")?;
            Some(text[at + 8..].split(',').next()?.to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TPO_CUDA_NVCC_VERSION={version}");
    let mut modules: Vec<(String, Option<PathBuf>, Vec<String>)> = vec![];
    for src in cu {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let ptx = out.join(format!("{stem}.ptx"));
        let result = Command::new(&nvcc)
            .arg("-ptx")
            .arg(format!("-arch=compute_{cap}"))
            .args(["-O3", "-std=c++17", "-I"])
            .arg(&kernels)
            .arg("-o")
            .arg(&ptx)
            .arg(src)
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "nvcc ({}) failed on {}:\n{}{}",
                nvcc.display(),
                src.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run nvcc at {}: {e}", nvcc.display()),
        }
        let text = std::fs::read_to_string(&ptx).unwrap();
        let mut entries: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('(').trim().to_string())
            .collect();
        entries.sort();
        modules.push((stem, Some(ptx), entries));
    }
    let built: Vec<(String, Vec<String>)> = modules
        .iter()
        .map(|(stem, _, e)| (stem.clone(), e.clone()))
        .collect();
    if built != manifest {
        panic!(
            "{} does not list the kernels' entry points as compiled: replace it with\n{}",
            manifest_path.display(),
            manifest_text(&built)
        );
    }
    std::fs::write(out.join("kernels.rs"), generate(&modules)).unwrap();
    println!("cargo:rustc-cfg=tpo_cuda_kernels");
    println!("cargo:rustc-env=TPO_CUDA_COMPUTE_CAP={cap}");
}

/// kernels/entries.txt: per kernel file a line "[stem]" and then one entry point a line,
/// sorted; blank lines and lines starting with # are ignored.
fn read_manifest(path: &Path) -> Vec<(String, Vec<String>)> {
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out: Vec<(String, Vec<String>)> = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(stem) => out.push((stem.to_string(), vec![])),
            None => match out.last_mut() {
                Some((_, entries)) => entries.push(line.to_string()),
                None => panic!("{}: an entry point before any [file]", path.display()),
            },
        }
    }
    out
}

/// The manifest's text for `modules`.
fn manifest_text(modules: &[(String, Vec<String>)]) -> String {
    let mut text = String::from(
        "# The entry points of every kernels/*.cu, checked by build.rs against the PTX.\n",
    );
    for (stem, entries) in modules {
        text.push_str(&format!("\n[{stem}]\n"));
        for e in entries {
            text.push_str(e);
            text.push('\n');
        }
    }
    text
}

/// OUT_DIR/kernels.rs: per kernel file a module with its PTX (empty without nvcc) and a
/// const per entry point: a `Typed` pair for an entry with `_f32` and `_bf16` versions,
/// else a `Kernel`; `TYPED` lists the module's pairs by name and `ENTRIES` every entry
/// point, for launchers that pick a kernel by its parameters (a head dim, a group size).
fn generate(modules: &[(String, Option<PathBuf>, Vec<String>)]) -> String {
    let mut text = String::from(
        "// Generated by build.rs: the PTX of every kernels/*.cu and its entry points.\n",
    );
    let mut all = vec![];
    for (stem, ptx, entries) in modules {
        text.push_str(&format!(
            "pub mod {stem} {{\n    use super::{{Kernel, Typed}};\n"
        ));
        text.push_str(&format!("    pub const MODULE: &str = {stem:?};\n"));
        match ptx {
            Some(p) => text.push_str(&format!(
                "    pub const PTX: &str = include_str!({:?});\n",
                p.display().to_string()
            )),
            None => text.push_str("    pub const PTX: &str = \"\";\n"),
        }
        let mut typed = vec![];
        for e in entries {
            let konst = |name: &str| name.to_uppercase();
            if let Some(base) = e.strip_suffix("_f32") {
                if entries.contains(&format!("{base}_bf16")) {
                    text.push_str(&format!(
                        "    pub const {}: Typed = Typed {{ f32: Kernel {{ module: MODULE, entry: {e:?} }}, bf16: Kernel {{ module: MODULE, entry: \"{base}_bf16\" }} }};\n",
                        konst(base)
                    ));
                    typed.push(format!("({base:?}, {})", konst(base)));
                    continue;
                }
            }
            if let Some(base) = e.strip_suffix("_bf16") {
                if entries.contains(&format!("{base}_f32")) {
                    continue;
                }
            }
            text.push_str(&format!(
                "    pub const {}: Kernel = Kernel {{ module: MODULE, entry: {e:?} }};\n",
                konst(e)
            ));
        }
        text.push_str(&format!(
            "    pub const TYPED: &[(&str, Typed)] = &[{}];\n",
            typed.join(", ")
        ));
        let every: Vec<String> = entries
            .iter()
            .map(|e| format!("Kernel {{ module: MODULE, entry: {e:?} }}"))
            .collect();
        text.push_str(&format!(
            "    pub const ENTRIES: &[Kernel] = &[{}];\n}}\n",
            every.join(", ")
        ));
        if ptx.is_some() {
            all.push(format!("({stem:?}, {stem}::PTX)"));
        }
    }
    text.push_str(&format!(
        "pub const ALL: &[(&str, &str)] = &[{}];\n",
        all.join(", ")
    ));
    text
}
