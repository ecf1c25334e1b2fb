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

    #[test]
    fn rmsnorm_ptx_has_its_entry_points() {
        if !COMPILED {
            eprintln!("skipped: built without nvcc");
            return;
        }
        let (_, ptx) = ALL.iter().find(|(n, _)| *n == "rmsnorm").unwrap();
        let entries: Vec<&str> = ptx
            .lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('('))
            .collect();
        for expected in [
            "rmsnorm_forward_f32",
            "rmsnorm_forward_bf16",
            "rmsnorm_backward_f32",
            "rmsnorm_backward_bf16",
            "rmsnorm_dweight_reduce",
        ] {
            assert!(entries.contains(&expected), "{expected} not in {entries:?}");
        }
    }
}
