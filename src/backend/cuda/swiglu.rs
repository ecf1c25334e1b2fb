//! Launchers of kernels/swiglu.cu, on the rows of the fused gate/up projection. CPU twin:
//! `cpu::swiglu`, applied to each row's halves as the CPU model does.

use super::{check_lens, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// out: (N, I); gate_up: (N, 2I), each row gate then up.
    pub fn swiglu_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        gate_up: &impl DevicePtr<T>,
        im: usize,
    ) -> Result<()> {
        let n = out.len();
        if im == 0 || !n.is_multiple_of(im) {
            anyhow::bail!("swiglu_forward: {n} outputs are not rows of {im}");
        }
        check_lens("swiglu_forward gate_up", &[gate_up.len()], 2 * n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::swiglu::SWIGLU_FORWARD))?;
        let (o, gu) = (self.ptr_mut(out), self.ptr(gate_up));
        let (n64, im64) = (n as i64, im as i64);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&o).arg(&gu).arg(&n64).arg(&im64);
        // SAFETY: the arguments match the kernel; out holds n = N x I, gate_up 2n.
        unsafe { launch.launch(Self::elementwise(n)) }.context("swiglu_forward")?;
        Ok(())
    }

    /// dgate_up: (N, 2I) assigned; dout: (N, I); gate_up: (N, 2I).
    pub fn swiglu_backward<T: Storage>(
        &self,
        dgate_up: &mut impl DevicePtrMut<T>,
        dout: &impl DevicePtr<T>,
        gate_up: &impl DevicePtr<T>,
        im: usize,
    ) -> Result<()> {
        let n = dout.len();
        if im == 0 || !n.is_multiple_of(im) {
            anyhow::bail!("swiglu_backward: {n} gradients are not rows of {im}");
        }
        check_lens(
            "swiglu_backward gate_up",
            &[dgate_up.len(), gate_up.len()],
            2 * n,
        )?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::swiglu::SWIGLU_BACKWARD))?;
        let (dgu, dy, gu) = (self.ptr_mut(dgate_up), self.ptr(dout), self.ptr(gate_up));
        let (n64, im64) = (n as i64, im as i64);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&dgu).arg(&dy).arg(&gu).arg(&n64).arg(&im64);
        // SAFETY: as in swiglu_forward.
        unsafe { launch.launch(Self::elementwise(n)) }.context("swiglu_backward")?;
        Ok(())
    }
}
