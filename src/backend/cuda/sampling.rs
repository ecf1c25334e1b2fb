//! Token sampling on the device: greedy, temperature, top-k, top-p, one block per row, with
//! one uniform per row drawn on the host (so a seed gives the CPU's stream). The twin of
//! `cpu::sampling::sample`: the same kept set (ties at a cutoff go to the lowest ids) and
//! the same walk over the kept tokens in id order; only the sums differ in rounding (the
//! device sums masses exactly, in fixed point, so its draws repeat run after run).

use super::{check_lens, check_rows, Gpu};
use crate::backend::kernels;
use crate::backend::settings::SamplingParams;
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Threads per row; kernels/sampling.cu's SAMPLE_THREADS.
const SAMPLE_THREADS: u32 = 1024;

impl Gpu {
    /// tokens: (B) written; logits: (B, V) f32, finite, not modified; uniforms: (B) in
    /// [0, 1), one draw per row from the host's `Rng`; params as for the CPU's `sample`
    /// (temperature 0: greedy, the first index of the largest logit).
    pub fn sample_rows(
        &self,
        tokens: &mut impl DevicePtrMut<u32>,
        logits: &impl DevicePtr<f32>,
        uniforms: &impl DevicePtr<f32>,
        params: &SamplingParams,
        v: usize,
    ) -> Result<()> {
        let kept = 0u64; // no kept mask
        self.sample_launch(tokens, kept, logits, uniforms, params, v)
    }

    /// As `sample_rows`, and kept: (B, V) written, 1 for each token that survived the
    /// filters and 0 for the others (with temperature 0, only the token chosen): for tests
    /// and diagnostics.
    pub fn sample_rows_with_kept(
        &self,
        tokens: &mut impl DevicePtrMut<u32>,
        kept: &mut impl DevicePtrMut<u8>,
        logits: &impl DevicePtr<f32>,
        uniforms: &impl DevicePtr<f32>,
        params: &SamplingParams,
        v: usize,
    ) -> Result<()> {
        check_rows("sample_rows kept", &[kept.len()], tokens.len(), v)?;
        let kept = self.ptr_mut(kept);
        self.sample_launch(tokens, kept, logits, uniforms, params, v)
    }

    fn sample_launch(
        &self,
        tokens: &mut impl DevicePtrMut<u32>,
        kept: u64,
        logits: &impl DevicePtr<f32>,
        uniforms: &impl DevicePtr<f32>,
        params: &SamplingParams,
        v: usize,
    ) -> Result<()> {
        let b = tokens.len();
        check_lens("sample_rows uniforms", &[uniforms.len()], b)?;
        check_rows("sample_rows logits", &[logits.len()], b, v)?;
        // The fixed-point masses (2^40 per unit weight) of a row must sum below 2^64.
        if v >= 1 << 24 || b > i32::MAX as usize {
            anyhow::bail!("sample_rows: {b} rows of {v} logits (at most 2^24 - 1 per row)");
        }
        if b == 0 {
            return Ok(());
        }
        let f = self.function(kernels::sampling::SAMPLE_ROWS)?;
        let (out, lg, un) = (self.ptr_mut(tokens), self.ptr(logits), self.ptr(uniforms));
        // top_k >= V keeps every token, as on the CPU.
        let top_k = params.top_k.min(v) as i32;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&out)
            .arg(&kept)
            .arg(&lg)
            .arg(&un)
            .arg(&params.temperature)
            .arg(&params.top_p)
            .arg(&top_k)
            .arg(&v32);
        let cfg = LaunchConfig {
            grid_dim: (b as u32, 1, 1),
            block_dim: (SAMPLE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel; tokens and uniforms hold B elements,
        // logits B rows of V, and kept is null or B rows of V (checked by the callers).
        unsafe { launch.launch(cfg) }.context("sample_rows")?;
        Ok(())
    }
}
