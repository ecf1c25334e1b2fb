//! Launchers of kernels/embedding.cu. CPU twin: `cpu::embedding`.

use super::{check_rows, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

impl Gpu {
    /// out: (N, C) from table: (V, C) at tokens: (N) (ids checked by the caller).
    pub fn embedding_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        tokens: &DeviceTokens,
        table: &impl DevicePtr<T>,
        c: usize,
    ) -> Result<()> {
        let tokens = &tokens.ids;
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
        let f = self.function(T::kernel(kernels::embedding::EMBEDDING_FORWARD))?;
        let (o, t, w) = (self.ptr_mut(out), self.ptr(tokens), self.ptr(table));
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&o).arg(&t).arg(&w).arg(&c32);
        // SAFETY: the arguments match the kernel; out holds N rows of C.
        unsafe { launch.launch(Self::rows(n)) }.context("embedding_forward")?;
        Ok(())
    }

    /// dtable: (V, C) f32 accumulated; dout: (N, C) the gradient of the rows of `tokens`
    /// (ids below V, checked by the caller).
    pub fn embedding_backward<T: Storage>(
        &self,
        dtable: &mut impl DevicePtrMut<f32>,
        dout: &impl DevicePtr<T>,
        tokens: &DeviceTokens,
        c: usize,
    ) -> Result<()> {
        let rows = tokens;
        let n = rows.order.len();
        check_rows("embedding_backward", &[dout.len()], n, c)?;
        if !dtable.len().is_multiple_of(c) {
            anyhow::bail!(
                "embedding_backward: a table of {} is not rows of {c}",
                dtable.len()
            );
        }
        let distinct = rows.distinct.len();
        if distinct == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::embedding::EMBEDDING_BACKWARD))?;
        let (dt, dy) = (self.ptr_mut(dtable), self.ptr(dout));
        let (o, st, ids) = (
            self.ptr(&rows.order),
            self.ptr(&rows.starts),
            self.ptr(&rows.distinct),
        );
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&dt)
            .arg(&dy)
            .arg(&o)
            .arg(&st)
            .arg(&ids)
            .arg(&c32);
        // SAFETY: the arguments match the kernel; `rows` indexes N rows of dout and its ids
        // rows of dtable (checked by the caller).
        unsafe { launch.launch(Self::rows(distinct)) }.context("embedding_backward")?;
        Ok(())
    }
}

/// A batch's token ids on the device, `tokens` (N), and its rows grouped by token for the
/// embedding's backward: `order` (N) lists the rows of each distinct token together (in row
/// order within a token), `starts` (U+1) where each token's rows begin, `ids` (U) the
/// distinct tokens. The CPU twin takes the ids as they are.
pub struct DeviceTokens {
    pub(crate) ids: CudaSlice<u32>,
    order: CudaSlice<i32>,
    starts: CudaSlice<i32>,
    distinct: CudaSlice<u32>,
}

impl DeviceTokens {
    pub fn new(gpu: &Gpu, tokens: &[u32]) -> Result<DeviceTokens> {
        let (order, starts, distinct) = group_by_token(tokens);
        const STAGE: &str = "for a batch's token ids";
        Ok(DeviceTokens {
            ids: gpu.upload(tokens, STAGE)?,
            order: gpu.upload(&order, STAGE)?,
            starts: gpu.upload(&starts, STAGE)?,
            distinct: gpu.upload(&distinct, STAGE)?,
        })
    }
}

/// (order, starts, distinct ids) of `DeviceTokens`, on the host.
pub(crate) fn group_by_token(tokens: &[u32]) -> (Vec<i32>, Vec<i32>, Vec<u32>) {
    let mut order: Vec<i32> = (0..tokens.len() as i32).collect();
    order.sort_by_key(|&r| tokens[r as usize]); // stable: row order within a token
    let (mut starts, mut ids) = (vec![], vec![]);
    for (i, &r) in order.iter().enumerate() {
        let t = tokens[r as usize];
        if ids.last() != Some(&t) {
            starts.push(i as i32);
            ids.push(t);
        }
    }
    starts.push(tokens.len() as i32);
    (order, starts, ids)
}

#[cfg(test)]
mod tests {
    use super::group_by_token;

    #[test]
    fn rows_group_by_token_in_row_order() {
        let tokens = [5u32, 2, 5, 9, 2, 5];
        let (order, starts, ids) = group_by_token(&tokens);
        assert_eq!(ids, vec![2, 5, 9]);
        assert_eq!(starts, vec![0, 2, 5, 6]);
        assert_eq!(order, vec![1, 4, 0, 2, 5, 3]);
        let (order, starts, ids) = group_by_token(&[]);
        assert!(order.is_empty() && ids.is_empty());
        assert_eq!(starts, vec![0]);
    }
}
