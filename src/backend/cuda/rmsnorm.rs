//! Launchers of kernels/rmsnorm.cu. CPU twin: `cpu::rmsnorm`.

use super::{check_lens, check_rows, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// out, inp: (N, C); weight: (C). Twin of `cpu::rmsnorm::rmsnorm_forward`.
    pub fn rmsnorm_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        let n = inp.len() / c.max(1);
        check_rows("rmsnorm_forward", &[out.len(), inp.len()], n, c)?;
        check_lens("rmsnorm_forward weight", &[weight.len()], c)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::rmsnorm::RMSNORM_FORWARD))?;
        let (o, x, w) = (self.ptr_mut(out), self.ptr(inp), self.ptr(weight));
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&o).arg(&x).arg(&w).arg(&eps).arg(&c32);
        // SAFETY: the argument list matches the kernel's signature, and the buffers hold
        // N rows of C (checked above).
        unsafe { launch.launch(Self::rows(n)) }.context("rmsnorm_forward")?;
        Ok(())
    }

    /// dinp (N, C) assigned; dweight (C) accumulated (f32); dout, inp: (N, C); weight: (C).
    /// Twin of `cpu::rmsnorm::rmsnorm_backward`.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward<T: Storage, D: DevicePtrMut<f32>>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        dweight: Option<&mut D>,
        dout: &impl DevicePtr<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        let n = inp.len() / c.max(1);
        check_rows(
            "rmsnorm_backward",
            &[dinp.len(), dout.len(), inp.len()],
            n,
            c,
        )?;
        check_lens("rmsnorm_backward weight", &[weight.len()], c)?;
        if let Some(dw) = dweight.as_ref() {
            check_lens("rmsnorm_backward dweight", &[dw.len()], c)?;
        }
        if n == 0 {
            return Ok(());
        }
        let mut workspace = self.rms_scratch.lock().map_err(super::poisoned)?;
        if workspace.as_ref().is_none_or(|s| s.len() < n * c) {
            *workspace = Some(self.alloc::<f32>(n * c, "for the RMSNorm backward's workspace")?);
        }
        let scratch = workspace.as_mut().context("the RMSNorm workspace")?;
        let f = self.function(T::kernel(kernels::rmsnorm::RMSNORM_BACKWARD))?;
        let (dx, s) = (self.ptr_mut(dinp), self.ptr_mut(scratch));
        let (dy, x, w) = (self.ptr(dout), self.ptr(inp), self.ptr(weight));
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&dx)
            .arg(&s)
            .arg(&dy)
            .arg(&x)
            .arg(&w)
            .arg(&eps)
            .arg(&c32);
        // SAFETY: as in rmsnorm_forward; scratch holds at least N x C.
        unsafe { launch.launch(Self::rows(n)) }.context("rmsnorm_backward")?;
        // dweight += the column sums of the per-row terms (none for a frozen weight).
        let Some(dweight) = dweight else {
            return Ok(());
        };
        self.column_sums::<f32>(dweight, &scratch.slice(..n * c), n, c)
            .context("rmsnorm_backward dweight")?;
        Ok(())
    }
}
