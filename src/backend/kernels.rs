//! The PTX that build.rs compiled from kernels/*.cu, one const per file and `ALL` as (file
//! stem, PTX) pairs; empty when the build found no nvcc. Nothing loads it yet: the CUDA
//! runtime (context, module cache, launches, each kernel checked against its CPU twin on a
//! GPU) is the rest of the CUDA backend's work.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Whether this build compiled the kernels.
pub const COMPILED: bool = cfg!(tpo_cuda_kernels);

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The `.cu` files under kernels/.
    fn sources() -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "cu").then(|| p.file_stem().unwrap().to_string_lossy().into())
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_kernel_file_is_compiled_to_ptx_for_sm_80_or_newer() {
        if !COMPILED {
            // CI sets this after installing nvcc: there, a build without kernels is an error.
            assert!(
                std::env::var_os("TPO_REQUIRE_CUDA_KERNELS").is_none(),
                "TPO_REQUIRE_CUDA_KERNELS is set, but the build found no nvcc"
            );
            assert!(ALL.is_empty());
            eprintln!(
                "skipped: built without nvcc (scripts/install-cuda-toolchain.sh installs one)"
            );
            return;
        }
        let names: Vec<String> = ALL.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, sources());
        for (name, ptx) in ALL {
            let target = ptx
                .lines()
                .find_map(|l| l.strip_prefix(".target sm_"))
                .unwrap_or_else(|| panic!("{name}: no .target line"));
            let sm: u32 = target.trim().parse().unwrap();
            assert!(sm >= 80, "{name}: sm_{sm}");
        }
    }

    /// The entry points of one module's PTX.
    fn entries(module: &str) -> Vec<String> {
        let (_, ptx) = ALL
            .iter()
            .find(|(n, _)| *n == module)
            .unwrap_or_else(|| panic!("no {module} kernels"));
        ptx.lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('(').to_string())
            .collect()
    }

    /// Every kernel a launcher in src/backend/cuda/ asks for by a literal name
    /// (`function("module", "entry")`, or `format!("entry_{}", T::SUFFIX)` for both storage
    /// types) is in that module's PTX: a renamed kernel fails here, not on a GPU.
    #[test]
    fn every_launcher_names_a_kernel_that_exists() {
        if !COMPILED {
            eprintln!("skipped: built without nvcc");
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/cuda");
        let mut checked = 0;
        for file in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            for call in text.split(".function(").skip(1) {
                // The first two string literals: the module, then the entry (or its
                // format string).
                let lits: Vec<&str> = call.split('"').skip(1).step_by(2).take(2).collect();
                let [module, entry] = lits[..] else { continue };
                let names = match entry.strip_suffix("_{}") {
                    Some(stem) => vec![format!("{stem}_f32"), format!("{stem}_bf16")],
                    None => vec![entry.to_string()],
                };
                // Names built from other variables (e.g. "{op}_{}") are covered by their
                // own launchers' GPU tests.
                if names.iter().any(|n| n.contains('{')) {
                    continue;
                }
                let have = entries(module);
                for n in names {
                    assert!(have.contains(&n), "{module}: {n} not in {have:?}");
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 30,
            "only {checked} kernel names found in the launchers"
        );
    }
}
