//! The CUDA backend's runtime: a context and stream on one device, the PTX modules build.rs
//! embedded (loaded once), and one launch idiom. Everything is loaded at run time (cudarc's
//! dynamic loading), so a machine without CUDA builds and runs the CPU backend unchanged.
//!
//! Work in progress (issue 5): matmul (cuBLAS), embedding, RMSNorm, rope, SwiGLU, AdamW,
//! the log-prob row pass and decode attention are wired; their GPU tests compare
//! them with the CPU twins and are skipped, saying why, where there is no GPU.

mod dpo;
pub mod logprobs;
pub(crate) mod matmul;
mod sampling;

use super::cpu::adamw::AdamW;
use super::kernels;
use anyhow::{Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// A storage type of activations and weights on the device; arithmetic is always f32.
pub trait Storage: DeviceRepr + ValidAsZeroBits + Copy + Default + 'static {
    /// The suffix of the kernels' entry points for this type.
    const SUFFIX: &'static str;
    /// The type as cuBLAS names it.
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType;
}
impl Storage for f32 {
    const SUFFIX: &'static str = "f32";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
}
impl Storage for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
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
        Ok(Gpu {
            stream,
            ctx,
            blas,
            modules,
        })
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

    pub(crate) fn function(&self, module: &str, entry: &str) -> Result<CudaFunction> {
        self.modules
            .get(module)
            .with_context(|| format!("no {module} kernels in this build"))?
            .load_function(entry)
            .with_context(|| format!("no kernel {entry} in {module}"))
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
        check_lens("rmsnorm_forward weight", &[weight.len()], c)?;
        if n == 0 {
            return Ok(());
        }
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
        check_lens("rmsnorm_backward weight", &[weight.len(), dweight.len()], c)?;
        if n == 0 {
            return Ok(());
        }
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
        let cfg = Self::columns(c);
        // SAFETY: dweight holds C floats, scratch N x C.
        unsafe { launch.launch(cfg) }.context("rmsnorm_dweight_reduce")?;
        Ok(())
    }

    /// A grid-stride launch over n elements.
    pub(crate) fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(ROW_THREADS as usize).clamp(1, 8192) as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// out, gate, up: n elements. Twin of `cpu::swiglu::swiglu_forward`.
    pub fn swiglu_forward<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        gate: &CudaSlice<T>,
        up: &CudaSlice<T>,
    ) -> Result<()> {
        let n = out.len();
        check_lens("swiglu_forward", &[gate.len(), up.len()], n)?;
        let f = self.function("swiglu", &format!("swiglu_forward_{}", T::SUFFIX))?;
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(out).arg(gate).arg(up).arg(&n64);
        // SAFETY: the arguments match the kernel, every buffer holds n elements.
        unsafe { launch.launch(Self::elementwise(n)) }.context("swiglu_forward")?;
        Ok(())
    }

    /// dgate, dup assigned; dout, gate, up: n elements. Twin of `cpu::swiglu::swiglu_backward`.
    pub fn swiglu_backward<T: Storage>(
        &self,
        dgate: &mut CudaSlice<T>,
        dup: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        gate: &CudaSlice<T>,
        up: &CudaSlice<T>,
    ) -> Result<()> {
        let n = dout.len();
        check_lens(
            "swiglu_backward",
            &[dgate.len(), dup.len(), gate.len(), up.len()],
            n,
        )?;
        let f = self.function("swiglu", &format!("swiglu_backward_{}", T::SUFFIX))?;
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(dgate)
            .arg(dup)
            .arg(dout)
            .arg(gate)
            .arg(up)
            .arg(&n64);
        // SAFETY: as in swiglu_forward.
        unsafe { launch.launch(Self::elementwise(n)) }.context("swiglu_backward")?;
        Ok(())
    }

    /// One AdamW step over all parameters in one launch (twin of
    /// `cpu::adamw::adamw_update`); `shadow` receives the new weights in bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_update(
        &self,
        params: &mut CudaSlice<f32>,
        previous: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        shadow: Option<&mut CudaSlice<half::bf16>>,
        h: AdamW,
    ) -> Result<()> {
        let n = params.len();
        let mut lens = vec![previous.len(), m.len(), v.len(), grads.len()];
        lens.extend(shadow.as_ref().map(|s| s.len()));
        check_lens("adamw_update", &lens, n)?;
        // The bias corrections as the CPU twin computes them (f64, then f32).
        let bias1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
        let bias2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
        let step_size = (h.lr as f64 / bias1) as f32;
        let inv_sqrt_bias2 = (1.0 / bias2.sqrt()) as f32;
        let decay = 1.0 - h.lr * h.weight_decay;
        let n64 = n as i64;
        let null = 0u64;
        let f = self.function("adamw", "adamw_update")?;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(params).arg(previous).arg(m).arg(v).arg(grads);
        match shadow {
            Some(s) => launch.arg(s),
            None => launch.arg(&null),
        };
        launch
            .arg(&n64)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&decay)
            .arg(&step_size)
            .arg(&inv_sqrt_bias2)
            .arg(&h.grad_scale);
        // SAFETY: the arguments match the kernel (a null pointer where there is no
        // shadow), every buffer holds n elements.
        unsafe { launch.launch(Self::elementwise(n)) }.context("adamw_update")?;
        Ok(())
    }

    /// out: (N, C) from table: (V, C) at tokens: (N) (ids checked by the caller). Twin of
    /// `cpu::embedding::embedding_forward`.
    pub fn embedding_forward<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        tokens: &CudaSlice<u32>,
        table: &CudaSlice<T>,
        c: usize,
    ) -> Result<()> {
        let n = tokens.len();
        check_rows("embedding_forward", &[out.len()], n, c)?;
        if !table.len().is_multiple_of(c) {
            anyhow::bail!(
                "embedding_forward: a table of {} is not rows of {c}",
                table.len()
            );
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("embedding", &format!("embedding_forward_{}", T::SUFFIX))?;
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(out).arg(tokens).arg(table).arg(&c32);
        // SAFETY: the arguments match the kernel; out holds N rows of C.
        unsafe { launch.launch(Self::rows(n)) }.context("embedding_forward")?;
        Ok(())
    }

    /// dtable: (V, C) f32 accumulated; dout: (N, C); tokens: (N). Twin of
    /// `cpu::embedding::embedding_backward`.
    pub fn embedding_backward<T: Storage>(
        &self,
        dtable: &mut CudaSlice<f32>,
        dout: &CudaSlice<T>,
        tokens: &CudaSlice<u32>,
        c: usize,
    ) -> Result<()> {
        let n = tokens.len();
        check_rows("embedding_backward", &[dout.len()], n, c)?;
        if !dtable.len().is_multiple_of(c) {
            anyhow::bail!(
                "embedding_backward: a table of {} is not rows of {c}",
                dtable.len()
            );
        }
        let f = self.function("embedding", &format!("embedding_backward_{}", T::SUFFIX))?;
        let (n32, c32) = (n as i32, c as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(dtable).arg(dout).arg(tokens).arg(&n32).arg(&c32);
        let cfg = Self::columns(c);
        // SAFETY: the arguments match the kernel; the ids index rows of dtable (checked by
        // the caller).
        unsafe { launch.launch(cfg) }.context("embedding_backward")?;
        Ok(())
    }

    /// Rotates x: (N, heads, D) in place by the angles whose cosines and sines are cos,
    /// sin: (N, D/2); direction 1 is `cpu::rope::rope_forward`, -1 `rope_backward`.
    pub fn rope<T: Storage>(
        &self,
        x: &mut CudaSlice<T>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        half: usize,
        direction: f32,
    ) -> Result<()> {
        if half == 0 || cos.len() != sin.len() || !cos.len().is_multiple_of(half) {
            anyhow::bail!(
                "rope: tables of {} and {} are not rows of {half}",
                cos.len(),
                sin.len()
            );
        }
        let n = cos.len() / half;
        check_lens("rope", &[x.len()], n * heads * 2 * half)?;
        let f = self.function("rope", &format!("rope_{}", T::SUFFIX))?;
        let (n32, h32, half32) = (n as i32, heads as i32, half as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(x)
            .arg(cos)
            .arg(sin)
            .arg(&n32)
            .arg(&h32)
            .arg(&half32)
            .arg(&direction);
        // SAFETY: the arguments match the kernel; x holds N x heads x D.
        unsafe { launch.launch(Self::elementwise(n * heads * half)) }.context("rope")?;
        Ok(())
    }
}

/// The shape of a decode-attention call: B sequences, one query row each, over caches of
/// up to t_max positions.
#[derive(Clone, Copy, Debug)]
pub struct DecodeDims {
    pub batch: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub t_max: usize,
}

impl Gpu {
    /// out: (B, H, D); lse: (B, H); scratch: (B, H, Tmax) f32; q: (B, H, D); k, v:
    /// (B, Tmax, Hkv, D); lens: (B), each in 1..=Tmax (checked by the caller). Twin of
    /// `cpu::attention::attention_forward` with one row per sequence at position len - 1.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        lens: &CudaSlice<i32>,
        dims: DecodeDims,
    ) -> Result<()> {
        let DecodeDims {
            batch,
            n_head,
            n_kv_head,
            head_dim: d,
            t_max,
        } = dims;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) || d == 0 {
            anyhow::bail!("decode_attention: {n_head} heads do not group over {n_kv_head}");
        }
        check_lens(
            "decode_attention q",
            &[q.len(), out.len()],
            batch * n_head * d,
        )?;
        check_lens("decode_attention lse", &[lse.len()], batch * n_head)?;
        check_lens(
            "decode_attention scratch",
            &[scratch.len()],
            batch * n_head * t_max,
        )?;
        check_lens(
            "decode_attention cache",
            &[k.len(), v.len()],
            batch * t_max * n_kv_head * d,
        )?;
        check_lens("decode_attention lens", &[lens.len()], batch)?;
        if batch == 0 {
            return Ok(());
        }
        let f = self.function(
            "decode_attention",
            &format!("decode_attention_{}", T::SUFFIX),
        )?;
        let ints = [n_head, n_kv_head, d, t_max].map(|x| x as i32);
        let scale = 1.0 / (d as f32).sqrt();
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(out)
            .arg(lse)
            .arg(scratch)
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(lens)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&scale);
        // SAFETY: the arguments match the kernel, the buffers have the checked sizes.
        unsafe { launch.launch(Self::rows(batch * n_head)) }.context("decode_attention")?;
        Ok(())
    }
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
