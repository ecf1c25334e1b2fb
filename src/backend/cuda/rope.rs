//! Launcher of kernels/rope.cu. CPU twin: `cpu::rope`.

use super::{check_lens, Gpu, Storage};
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// Rotates x: (N, heads, D) in place by the angles whose cosines and sines are cos,
    /// sin: (N, D/2); direction 1 is `cpu::rope::rope_forward`, -1 `rope_backward`.
    pub fn rope<T: Storage>(
        &self,
        x: &mut impl DevicePtrMut<T>,
        cos: &impl DevicePtr<f32>,
        sin: &impl DevicePtr<f32>,
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
        if n * heads == 0 {
            return Ok(());
        }
        let f = self.function("rope", &format!("rope_{}", T::SUFFIX))?;
        let (xp, c, s) = (self.ptr_mut(x), self.ptr(cos), self.ptr(sin));
        let (n32, h32, half32) = (n as i32, heads as i32, half as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&xp)
            .arg(&c)
            .arg(&s)
            .arg(&n32)
            .arg(&h32)
            .arg(&half32)
            .arg(&direction);
        // SAFETY: the arguments match the kernel; x holds N x heads x D.
        unsafe { launch.launch(Self::elementwise(n * heads * half)) }.context("rope")?;
        Ok(())
    }
}
