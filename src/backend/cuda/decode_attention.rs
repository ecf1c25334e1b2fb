//! Launcher of kernels/decode_attention.cu. CPU twin: `cpu::attention::attention_forward`
//! with one row per sequence at position len - 1.

use super::{check_lens, Gpu, Storage};
use anyhow::{Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

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
    /// out: (B, H, D); lse: (B, H); scratch: at least (B, H, Tmax) f32; q: (B, H, D); k, v:
    /// (B, Tmax, Hkv, D); lens: (B), each in 1..=Tmax (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        lse: &mut impl DevicePtrMut<f32>,
        scratch: &mut impl DevicePtrMut<f32>,
        q: &impl DevicePtr<T>,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        lens: &impl DevicePtr<i32>,
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
        if scratch.len() < batch * n_head * t_max {
            anyhow::bail!(
                "decode_attention: a scratch of {} floats, expected {batch} x {n_head} x {t_max}",
                scratch.len()
            );
        }
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
        let (o, l, s) = (self.ptr_mut(out), self.ptr_mut(lse), self.ptr_mut(scratch));
        let (qp, kp, vp, lp) = (self.ptr(q), self.ptr(k), self.ptr(v), self.ptr(lens));
        let ints = [n_head, n_kv_head, d, t_max].map(|x| x as i32);
        let scale = 1.0 / (d as f32).sqrt();
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&o)
            .arg(&l)
            .arg(&s)
            .arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&lp)
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
