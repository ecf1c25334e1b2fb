//! Compiles kernels/*.cu to PTX once the CUDA backend exists; until then there is nothing
//! to build, and the crate is CPU-only.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
}
