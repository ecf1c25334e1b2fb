//! Launcher of kernels/adamw.cu: one AdamW step over every parameter in one launch. CPU
//! twin: `cpu::adamw::adamw_update`.

use super::{check_lens, Dest, Gpu, Storage};
use crate::backend::kernels;
use crate::backend::settings::AdamW;
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// params, previous (the weights before the step), m, v: (P) f32 updated; grads: (P)
    /// f32; `weights` receives the new weights in the storage type (the copy the forward
    /// reads).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_update<T: Storage>(
        &self,
        params: &mut impl DevicePtrMut<f32>,
        previous: &mut impl DevicePtrMut<f32>,
        m: &mut impl DevicePtrMut<f32>,
        v: &mut impl DevicePtrMut<f32>,
        grads: &impl DevicePtr<f32>,
        weights: Option<&mut dyn Dest<T>>,
        h: AdamW,
    ) -> Result<()> {
        let n = params.len();
        let mut lens = vec![previous.len(), m.len(), v.len(), grads.len()];
        lens.extend(weights.as_ref().map(|s| s.len()));
        check_lens("adamw_update", &lens, n)?;
        if n == 0 {
            return Ok(());
        }
        // The bias corrections as the CPU twin computes them (f64, then f32).
        let bias1 = 1.0 - (h.beta1 as f64).powi(h.step as i32);
        let bias2 = 1.0 - (h.beta2 as f64).powi(h.step as i32);
        let step_size = (h.lr as f64 / bias1) as f32;
        let inv_sqrt_bias2 = (1.0 / bias2.sqrt()) as f32;
        let decay = 1.0 - h.lr * h.weight_decay;
        let n64 = n as i64;
        let (p, prev, m, v) = (
            self.ptr_mut(params),
            self.ptr_mut(previous),
            self.ptr_mut(m),
            self.ptr_mut(v),
        );
        let g = self.ptr(grads);
        // A null pointer where no copy is kept.
        let s = weights.map_or(0u64, |s| s.address(self));
        let f = self.function(T::kernel(kernels::adamw::ADAMW_UPDATE))?;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&p)
            .arg(&prev)
            .arg(&m)
            .arg(&v)
            .arg(&g)
            .arg(&s)
            .arg(&n64)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&h.eps)
            .arg(&decay)
            .arg(&step_size)
            .arg(&inv_sqrt_bias2)
            .arg(&h.grad_scale);
        // SAFETY: the arguments match the kernel, every buffer holds n elements.
        unsafe { launch.launch(Self::elementwise(n)) }.context("adamw_update")?;
        Ok(())
    }
}
