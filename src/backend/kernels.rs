//! The kernels build.rs compiled from kernels/*.cu: per file a module with its PTX (empty
//! when the build found no nvcc) and a constant per entry point, which every launch names;
//! `ALL` lists (file stem, PTX) for loading.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Whether this build compiled the kernels.
pub const COMPILED: bool = cfg!(tpo_cuda_kernels);

/// One entry point of one kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel file's stem, as `ALL` names its PTX.
    pub module: &'static str,
    pub entry: &'static str,
}

/// A kernel compiled for each storage type (`Storage::kernel` picks one).
#[derive(Clone, Copy, Debug)]
pub struct Typed {
    pub f32: Kernel,
    pub bf16: Kernel,
}

/// The pair named `name` in a module's `TYPED`, or an error naming what is missing (for
/// launchers that build the name from their parameters).
pub fn find_typed(typed: &[(&str, Typed)], module: &str, name: &str) -> anyhow::Result<Typed> {
    typed
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| anyhow::anyhow!("no kernel {name} in kernels/{module}.cu"))
}

/// The entry point `entry` among a module's `ENTRIES`, or an error naming what is missing.
pub fn find(entries: &[Kernel], module: &str, entry: &str) -> anyhow::Result<Kernel> {
    entries
        .iter()
        .find(|k| k.entry == entry)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no kernel {entry} in kernels/{module}.cu"))
}

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
    fn the_generated_constants_name_the_kernels_of_their_file() {
        // Built from the PTX (with nvcc) or from kernels/entries.txt, which the build
        // checks against the PTX: the constants are what the launchers use.
        let pair = rmsnorm::RMSNORM_FORWARD;
        assert_eq!(pair.f32.entry, "rmsnorm_forward_f32");
        assert_eq!(pair.bf16.entry, "rmsnorm_forward_bf16");
        assert_eq!(pair.bf16.module, "rmsnorm");
        assert_eq!(logprobs::LOGPROB_ROW_COMBINE.entry, "logprob_row_combine");
        let found = find_typed(attention::TYPED, "attention", "attention_forward_d64").unwrap();
        assert_eq!(found.bf16.entry, "attention_forward_d64_bf16");
        let err = find_typed(attention::TYPED, "attention", "attention_forward_d65");
        assert_eq!(
            err.unwrap_err().to_string(),
            "no kernel attention_forward_d65 in kernels/attention.cu"
        );
        if COMPILED {
            for (name, ptx) in ALL {
                assert!(ptx.contains(".visible .entry"), "{name}: no entry points");
            }
        }
    }
}
