//! Launchers of kernels/embedding.cu. CPU twin: `cpu::embedding`.

use super::{check_rows, Gpu, Storage};
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// out: (N, C) from table: (V, C) at tokens: (N) (ids checked by the caller).
    pub fn embedding_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        tokens: &impl DevicePtr<u32>,
        table: &impl DevicePtr<T>,
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
        let (o, t, w) = (self.ptr_mut(out), self.ptr(tokens), self.ptr(table));
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&o).arg(&t).arg(&w).arg(&c32);
        // SAFETY: the arguments match the kernel; out holds N rows of C.
        unsafe { launch.launch(Self::rows(n)) }.context("embedding_forward")?;
        Ok(())
    }

    /// dtable: (V, C) f32 accumulated; dout: (N, C); tokens: (N).
    pub fn embedding_backward<T: Storage>(
        &self,
        dtable: &mut impl DevicePtrMut<f32>,
        dout: &impl DevicePtr<T>,
        tokens: &impl DevicePtr<u32>,
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
        if n == 0 {
            return Ok(());
        }
        let f = self.function("embedding", &format!("embedding_backward_{}", T::SUFFIX))?;
        let (dt, dy, t) = (self.ptr_mut(dtable), self.ptr(dout), self.ptr(tokens));
        let (n32, c32) = (n as i32, c as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&dt).arg(&dy).arg(&t).arg(&n32).arg(&c32);
        // SAFETY: the arguments match the kernel; the ids index rows of dtable (checked by
        // the caller).
        unsafe { launch.launch(Self::columns(c)) }.context("embedding_backward")?;
        Ok(())
    }
}
