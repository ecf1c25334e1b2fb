//! Launcher of kernels/rope.cu. CPU twin: `cpu::rope`.

use super::{check_lens, Gpu, Storage};
use crate::backend::kernels;
use crate::backend::rope_table::RopeTable;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

/// The rotary tables of a batch's rows on the device: cos, sin (N, D/2). Twin of
/// `RopeTable`, from which it is made.
pub struct DeviceRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
}

impl DeviceRope {
    pub fn new(gpu: &Gpu, table: &RopeTable) -> Result<DeviceRope> {
        const STAGE: &str = "for a batch's rotary tables";
        Ok(DeviceRope {
            cos: gpu.upload(&table.cos, STAGE)?,
            sin: gpu.upload(&table.sin, STAGE)?,
            half: table.half,
        })
    }
}

impl Gpu {
    /// Rotates x: (N, heads, D) in place by the angles of its rows. Twin of
    /// `cpu::rope::rope_forward`.
    pub fn rope_forward<T: Storage>(
        &self,
        x: &mut impl DevicePtrMut<T>,
        table: &DeviceRope,
        heads: usize,
    ) -> Result<()> {
        self.rotate(x, &table.cos, &table.sin, heads, table.half, 1.0)
    }

    /// The backward of `rope_forward`, in place on dx: (N, heads, D): the inverse rotation.
    /// Twin of `cpu::rope::rope_backward`.
    pub fn rope_backward<T: Storage>(
        &self,
        dx: &mut impl DevicePtrMut<T>,
        table: &DeviceRope,
        heads: usize,
    ) -> Result<()> {
        self.rotate(dx, &table.cos, &table.sin, heads, table.half, -1.0)
    }

    /// Rotates x: (N, heads, D) in place by the angles whose cosines and sines are cos,
    /// sin: (N, D/2); direction 1 forward, -1 backward.
    fn rotate<T: Storage>(
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
        let f = self.function(T::kernel(kernels::rope::ROPE))?;
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
