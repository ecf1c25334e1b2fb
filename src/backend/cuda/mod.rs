//! The CUDA backend's runtime: a context and stream on one device, the PTX modules build.rs
//! embedded (loaded once), and one launch idiom. Everything is loaded at run time (cudarc's
//! dynamic loading), so a machine without CUDA builds and runs the CPU backend unchanged.
//!
//! One file per kernel family, mirroring kernels/*.cu and the CPU twins in `cpu/`: matmul
//! (cuBLAS), embedding, rmsnorm, rope, swiglu, fused attention (forward and backward) and
//! decode attention, the chunked LM-head log-probs, the DPO loss, sampling, AdamW, and the
//! glue (residual adds, column slices, row gathers). Launchers take buffers or views
//! (`DevicePtr`), check sizes and return errors, never panic; `tests/gpu_*.rs` compare each
//! kernel with its CPU twin and are skipped, saying why, where there is no GPU.

mod adamw;
pub mod attention;
pub mod buffer;
mod decode_attention;
mod dpo;
mod embedding;
mod glue;
pub mod kv_cache;
pub mod logprobs;
pub(crate) mod matmul;
mod ops;
mod rmsnorm;
pub mod rope;
mod sampling;
mod swiglu;

pub use attention::PackedSeqs;
pub use buffer::DevBuf;
pub use decode_attention::DecodeDims;
pub use embedding::DeviceTokens;
pub use glue::Columns;
pub use kv_cache::{SlotCaches, SlotPass};
pub use logprobs::LogitsScratch;
pub use matmul::Bias;
pub use ops::CudaOps;
pub use rope::DeviceRope;

use super::kernels::{self, Kernel};
pub use crate::backend::storage::Storage;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// Streaming multiprocessors on the device: the grids of the log-prob row passes.
    sm_count: usize,
    /// (max, sum) per (row, split) of the split forward row pass (`logprobs::row_splits`
    /// bounds its size); locked while the pass enqueues both its kernels, so that two host
    /// threads on the one stream cannot interleave them.
    row_partials: Mutex<CudaSlice<f32>>,
    /// The workspace of the backward kernels beyond their outputs, grown on demand and kept
    /// (so launchers take the same arguments as their CPU twins): the RMSNorm backward's
    /// per-row terms, (N, C) f32, and the attention backward's delta and dq accumulator.
    pub(crate) rms_scratch: Mutex<Option<CudaSlice<f32>>>,
    pub(crate) attention_scratch: Mutex<Option<attention::AttentionScratch>>,
}

/// Threads per block of the row kernels (one block per row), and of the log-prob row passes
/// (whose kernels' launch bounds say 256).
const ROW_THREADS: u32 = 256;

impl Gpu {
    /// Device `ordinal`, or why CUDA cannot be used here (no kernels in this build, no
    /// driver, no such device).
    pub fn open(ordinal: usize) -> std::result::Result<Gpu, String> {
        if !kernels::COMPILED {
            return Err("this build has no CUDA kernels (nvcc was not found when it was built; scripts/install-cuda-toolchain.sh installs one)".into());
        }
        // SAFETY: only tries to open the driver library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so cannot be loaded)".into());
        }
        let count =
            CudaContext::device_count().map_err(|e| format!("the CUDA driver fails: {e}"))?;
        if ordinal >= count.max(0) as usize {
            return Err(format!("cuda:{ordinal}: the driver sees {count} devices"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cuda:{ordinal}: {e}"))?;
        // Everything runs on one stream, in order: cross-stream events would only cost.
        // SAFETY: called before any buffer of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let mut modules = HashMap::new();
        for (name, ptx) in kernels::ALL {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(*ptx))
                .map_err(|e| {
                    let mut v = 0i32;
                    // SAFETY: writes one int; the driver is loaded (checked above).
                    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
                    let driver = if ok == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                        format!("{}.{}", v / 1000, v % 1000 / 10)
                    } else {
                        "unknown".to_string()
                    };
                    let nvcc = option_env!("TPO_CUDA_NVCC_VERSION").unwrap_or("unknown");
                    format!("cuda:{ordinal}: cannot load the {name} kernels: {e} (the PTX is from nvcc {nvcc}; the driver supports CUDA {driver} and loads PTX of its version or older)")
                })?;
            modules.insert(*name, module);
        }
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err("no cuBLAS (libcublas.so cannot be loaded: a CUDA install, or PyTorch's nvidia/cublas/lib, on LD_LIBRARY_PATH)".into());
        }
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| format!("cuda:{ordinal}: cuBLAS: {e}"))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| format!("cuda:{ordinal}: multiprocessor count: {e}"))?
            .max(1) as usize;
        let row_partials = stream
            .alloc_zeros::<f32>(logprobs::partials_len(sm_count))
            .map_err(|e| format!("cuda:{ordinal}: the log-prob row partials: {e}"))?;
        Ok(Gpu {
            stream,
            ctx,
            blas,
            modules,
            sm_count,
            row_partials: Mutex::new(row_partials),
            rms_scratch: Mutex::new(None),
            attention_scratch: Mutex::new(None),
        })
    }

    /// "cuda:N (name, memory)", for the line that says where a command runs.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown".into());
        let mem = self
            .ctx
            .total_mem()
            .map(|b| format!(", {:.0} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        format!("cuda:{} ({name}{mem})", self.ctx.ordinal())
    }

    /// A zeroed buffer of n elements for `stage` (what the engine is doing, e.g. "the
    /// forward of a micro-batch"). Running out of device memory is an error that names the
    /// stage, the size and what to reduce.
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        stage: &str,
    ) -> Result<CudaSlice<T>> {
        if n == 0 {
            // The driver refuses an allocation of 0 bytes: take one element and keep a
            // buffer of length 0 over it (freed with it).
            let one = self
                .stream
                .alloc_zeros::<T>(1)
                .with_context(|| format!("cannot allocate on the GPU {stage}"))?;
            // SAFETY: the pointer is a live allocation of at least 0 elements of T, owned
            // by nothing else once leaked; the new slice frees it on drop.
            return Ok(unsafe { self.stream.upgrade_device_ptr(one.leak(), 0) });
        }
        self.stream.alloc_zeros::<T>(n).map_err(|e| {
            let bytes = n * std::mem::size_of::<T>();
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let free = self
                    .ctx
                    .mem_get_info()
                    .map(|(free, total)| format!("{} of {} free", gib(free), gib(total)))
                    .unwrap_or_else(|_| "free memory unknown".into());
                anyhow::anyhow!(
                    "out of GPU memory {stage}: {} more were needed ({free}); reduce the tokens per micro-batch (--micro-batch-tokens) for training and scoring, the sequences decoded at once (generate --batch-size, train --gen-batch-size) or --max-new-tokens for sampling, or use a smaller model",
                    gib(bytes)
                )
            } else {
                anyhow::anyhow!("cannot allocate {} on the GPU {stage}: {e}", gib(bytes))
            }
        })
    }

    /// A copy of `host` on the device, for `stage` (an empty slice gives an empty buffer,
    /// which the driver's own copy refuses to allocate).
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        host: &[T],
        stage: &str,
    ) -> Result<CudaSlice<T>> {
        let mut buf = self.alloc::<T>(host.len(), stage)?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut buf)?;
        }
        Ok(buf)
    }

    /// The device address of a buffer or a view into one, to pass to a kernel. Safe to
    /// keep past the borrow only because everything runs on `self.stream`, in order.
    pub(crate) fn ptr<T>(&self, x: &impl DevicePtr<T>) -> u64 {
        x.device_ptr(&self.stream).0
    }

    /// As `ptr`, for a buffer the kernel writes.
    pub(crate) fn ptr_mut<T>(&self, x: &mut impl DevicePtrMut<T>) -> u64 {
        x.device_ptr_mut(&self.stream).0
    }

    /// A kernel of the build (`backend::kernels`), loaded from its module.
    pub(crate) fn function(&self, k: Kernel) -> Result<CudaFunction> {
        self.modules
            .get(k.module)
            .with_context(|| format!("no {} kernels in this build", k.module))?
            .load_function(k.entry)
            .with_context(|| format!("no kernel {} in {}", k.entry, k.module))
    }

    /// One thread per column of C.
    pub(crate) fn columns(c: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((c as u32).div_ceil(ROW_THREADS), 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub(crate) fn rows(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A grid-stride launch over n elements.
    pub(crate) fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(ROW_THREADS as usize).clamp(1, 8192) as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// A device buffer or view a kernel writes, as a trait object (for optional outputs,
/// so `None` needs no type annotation).
pub trait Dest<T> {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn address(&mut self, gpu: &Gpu) -> u64;
}
impl<T, X: DevicePtrMut<T>> Dest<T> for X {
    fn len(&self) -> usize {
        cudarc::driver::DeviceSlice::len(self)
    }
    fn address(&mut self, gpu: &Gpu) -> u64 {
        gpu.ptr_mut(self)
    }
}

/// A workspace lock poisoned by a panic in another thread.
pub(crate) fn poisoned<X>(_: X) -> anyhow::Error {
    anyhow::anyhow!("a GPU workspace lock was poisoned by an earlier failure")
}

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub(crate) fn check_lens(op: &str, lens: &[usize], n: usize) -> Result<()> {
    if let Some(len) = lens.iter().find(|&&l| l != n) {
        anyhow::bail!("{op}: a buffer of {len} elements, expected {n}");
    }
    Ok(())
}

pub(crate) fn check_rows(op: &str, lens: &[usize], n: usize, c: usize) -> Result<()> {
    if c == 0 || c > i32::MAX as usize || n > i32::MAX as usize {
        anyhow::bail!("{op}: {n} rows of {c} do not fit a launch");
    }
    if let Some(len) = lens.iter().find(|&&l| l != n * c) {
        anyhow::bail!("{op}: a buffer of {len} elements, expected {n} x {c}");
    }
    Ok(())
}
