//! The CUDA backend's runtime: a context and stream on one device, the PTX modules build.rs
//! embedded (loaded once), and one launch idiom. Everything is loaded at run time (cudarc's
//! dynamic loading), so a machine without CUDA builds and runs the CPU backend unchanged.
//!
//! Work in progress (issue 5): only RMSNorm is wired; its GPU tests compare it with the CPU
//! twin and are skipped, saying why, where there is no GPU.

use super::kernels;
use anyhow::{Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// A storage type of activations and weights on the device; arithmetic is always f32.
pub trait Storage: DeviceRepr + ValidAsZeroBits + Copy + Default + 'static {
    /// The suffix of the kernels' entry points for this type.
    const SUFFIX: &'static str;
}
impl Storage for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Storage for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
}

/// Threads per block of the row kernels (one block per row).
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
        let mut modules = HashMap::new();
        for (name, ptx) in kernels::ALL {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(*ptx))
                .map_err(|e| format!("cuda:{ordinal}: cannot load the {name} kernels: {e}"))?;
            modules.insert(*name, module);
        }
        Ok(Gpu {
            stream: ctx.default_stream(),
            ctx,
            modules,
        })
    }

    fn function(&self, module: &str, entry: &str) -> Result<CudaFunction> {
        self.modules
            .get(module)
            .with_context(|| format!("no {module} kernels in this build"))?
            .load_function(entry)
            .with_context(|| format!("no kernel {entry} in {module}"))
    }

    fn rows(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// out, inp: (N, C); weight: (C). Twin of `cpu::rmsnorm::rmsnorm_forward`.
    pub fn rmsnorm_forward<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        eps: f32,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_rows("rmsnorm_forward", &[out.len(), inp.len()], n, c)?;
        let f = self.function("rmsnorm", &format!("rmsnorm_forward_{}", T::SUFFIX))?;
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(out).arg(inp).arg(weight).arg(&eps).arg(&c32);
        // SAFETY: the argument list matches the kernel's signature, and the buffers hold
        // N rows of C (checked above).
        unsafe { launch.launch(Self::rows(n)) }.context("rmsnorm_forward")?;
        Ok(())
    }

    /// dinp (N, C) assigned; dweight (C) accumulated (f32); dout, inp: (N, C); weight: (C);
    /// scratch: (N, C) f32. Twin of `cpu::rmsnorm::rmsnorm_backward`.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward<T: Storage>(
        &self,
        dinp: &mut CudaSlice<T>,
        dweight: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        dout: &CudaSlice<T>,
        inp: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        eps: f32,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_rows(
            "rmsnorm_backward",
            &[dinp.len(), scratch.len(), dout.len(), inp.len()],
            n,
            c,
        )?;
        let f = self.function("rmsnorm", &format!("rmsnorm_backward_{}", T::SUFFIX))?;
        let (n32, c32) = (n as i32, c as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(dinp)
            .arg(&mut *scratch)
            .arg(dout)
            .arg(inp)
            .arg(weight)
            .arg(&eps)
            .arg(&c32);
        // SAFETY: as in rmsnorm_forward.
        unsafe { launch.launch(Self::rows(n)) }.context("rmsnorm_backward")?;
        let f = self.function("rmsnorm", "rmsnorm_dweight_reduce")?;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(dweight).arg(&*scratch).arg(&n32).arg(&c32);
        let cfg = LaunchConfig {
            grid_dim: ((c as u32).div_ceil(ROW_THREADS), 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dweight holds C floats, scratch N x C.
        unsafe { launch.launch(cfg) }.context("rmsnorm_dweight_reduce")?;
        Ok(())
    }
}

fn check_rows(op: &str, lens: &[usize], n: usize, c: usize) -> Result<()> {
    if c == 0 || c > i32::MAX as usize || n > u32::MAX as usize {
        anyhow::bail!("{op}: {n} rows of {c} do not fit a launch");
    }
    if let Some(len) = lens.iter().find(|&&l| l != n * c) {
        anyhow::bail!("{op}: a buffer of {len} elements, expected {n} x {c}");
    }
    Ok(())
}
