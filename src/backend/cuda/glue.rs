//! Launchers of kernels/glue.cu: residual adds, column slices and row gathers/scatters.

use super::{check_lens, check_rows, Dest, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{bail, Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

pub use crate::backend::settings::Columns;

impl Gpu {
    /// x += y, elementwise (the residual stream, or two gradient branches meeting). Twin of
    /// `cpu::residual::residual_forward`.
    pub fn residual_forward<T: Storage>(
        &self,
        x: &mut impl DevicePtrMut<T>,
        y: &impl DevicePtr<T>,
    ) -> Result<()> {
        let n = x.len();
        check_lens("residual_forward", &[y.len()], n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::glue::RESIDUAL_FORWARD))?;
        let (xp, yp, n64) = (self.ptr_mut(x), self.ptr(y), n as i64);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&xp).arg(&yp).arg(&n64);
        // SAFETY: the arguments match the kernel; both buffers hold n elements.
        unsafe { launch.launch(Self::elementwise(n)) }.context("residual_forward")?;
        Ok(())
    }

    /// Splits the rows of qkv: (N, QD + 2 KVD) into q: (N, QD), k and v: (N, KVD). Twin of
    /// `cpu::glue::qkv_split`.
    pub fn qkv_split<T: Storage>(
        &self,
        q: &mut impl DevicePtrMut<T>,
        k: &mut impl DevicePtrMut<T>,
        v: &mut impl DevicePtrMut<T>,
        qkv: &impl DevicePtr<T>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        let width = qd + 2 * kvd;
        let n = qkv.len() / width.max(1);
        let at = |stride, offset| Columns { stride, offset };
        self.copy_columns((q, at(qd, 0)), (qkv, at(width, 0)), n, qd)?;
        self.copy_columns((k, at(kvd, 0)), (qkv, at(width, qd)), n, kvd)?;
        self.copy_columns((v, at(kvd, 0)), (qkv, at(width, qd + kvd)), n, kvd)
    }

    /// The inverse of `qkv_split`. Twin of `cpu::glue::qkv_join`.
    pub fn qkv_join<T: Storage>(
        &self,
        qkv: &mut impl DevicePtrMut<T>,
        q: &impl DevicePtr<T>,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        let width = qd + 2 * kvd;
        let n = qkv.len() / width.max(1);
        let at = |stride, offset| Columns { stride, offset };
        self.copy_columns((qkv, at(width, 0)), (q, at(qd, 0)), n, qd)?;
        self.copy_columns((qkv, at(width, qd)), (k, at(kvd, 0)), n, kvd)?;
        self.copy_columns((qkv, at(width, qd + kvd)), (v, at(kvd, 0)), n, kvd)
    }

    /// Copies `width` columns of each of `rows` rows from src to dst: `scale_columns` with
    /// a scale of 1, assigned (exact in f32 and bf16).
    pub fn copy_columns<T: Storage>(
        &self,
        dst: (&mut impl DevicePtrMut<T>, Columns),
        src: (&impl DevicePtr<T>, Columns),
        rows: usize,
        width: usize,
    ) -> Result<()> {
        self.scale_columns(dst, src, rows, width, 1.0, false)
    }

    /// dst's block (+)= scale * src's block: `width` columns of each of `rows` rows, added
    /// when `accumulate`, else assigned. Twin of `cpu::glue::scale_columns`.
    #[allow(clippy::too_many_arguments)]
    pub fn scale_columns<T: Storage>(
        &self,
        (dst, to): (&mut impl DevicePtrMut<T>, Columns),
        (src, from): (&impl DevicePtr<T>, Columns),
        rows: usize,
        width: usize,
        scale: f32,
        accumulate: bool,
    ) -> Result<()> {
        for (what, len, at) in [("dst", dst.len(), to), ("src", src.len(), from)] {
            check_block("scale_columns", what, len, at, rows, width)?;
        }
        if rows * width == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::glue::SCALE_COLUMNS))?;
        let (d, s) = (self.ptr_mut(dst), self.ptr(src));
        let ints = [to.stride, to.offset, from.stride, from.offset, rows, width].map(|x| x as i64);
        let add = i32::from(accumulate);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&d)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&s)
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&ints[4])
            .arg(&ints[5])
            .arg(&scale)
            .arg(&add);
        // SAFETY: the arguments match the kernel; every row's block fits its buffer
        // (checked above).
        unsafe { launch.launch(Self::elementwise(rows * width)) }.context("scale_columns")?;
        Ok(())
    }

    /// dst (+)= dropout(src) with probability p, the mask drawn from (seed, element index):
    /// added when `accumulate`, else assigned. Twin of `cpu::dropout::dropout`.
    pub fn dropout<T: Storage>(
        &self,
        dst: &mut impl DevicePtrMut<T>,
        src: &impl DevicePtr<T>,
        p: f32,
        seed: u64,
        accumulate: bool,
    ) -> Result<()> {
        let n = src.len();
        if dst.len() != n {
            bail!("dropout: a buffer of {} elements, expected {n}", dst.len());
        }
        if !(0.0..1.0).contains(&p) {
            bail!("dropout: probability {p}, expected at least 0 and below 1");
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function(T::kernel(kernels::glue::DROPOUT))?;
        let (d, s) = (self.ptr_mut(dst), self.ptr(src));
        let (len, add) = (n as i64, i32::from(accumulate));
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&d)
            .arg(&s)
            .arg(&len)
            .arg(&p)
            .arg(&seed)
            .arg(&add);
        // SAFETY: the arguments match the kernel; both buffers hold n elements (checked).
        unsafe { launch.launch(Self::elementwise(n)) }.context("dropout")?;
        Ok(())
    }

    /// dst: (M, C) row m = src row idx[m]; idx: (M) on the device, each below src's row
    /// count (checked by the caller).
    pub fn gather_rows<T: Storage>(
        &self,
        dst: &mut impl DevicePtrMut<T>,
        src: &impl DevicePtr<T>,
        idx: &impl DevicePtr<i32>,
        c: usize,
    ) -> Result<()> {
        self.move_rows("gather_rows", dst, src, idx, c)
    }

    /// dst row idx[m] = src: (M, C) row m; idx: (M) on the device, distinct and each
    /// below dst's row count (checked by the caller).
    pub fn scatter_rows<T: Storage>(
        &self,
        dst: &mut impl DevicePtrMut<T>,
        src: &impl DevicePtr<T>,
        idx: &impl DevicePtr<i32>,
        c: usize,
    ) -> Result<()> {
        self.move_rows("scatter_rows", dst, src, idx, c)
    }

    fn move_rows<T: Storage>(
        &self,
        op: &str,
        dst: &mut impl DevicePtrMut<T>,
        src: &impl DevicePtr<T>,
        idx: &impl DevicePtr<i32>,
        c: usize,
    ) -> Result<()> {
        let m = idx.len();
        let indexed = if op == "gather_rows" {
            (dst.len(), src.len())
        } else {
            (src.len(), dst.len())
        };
        check_rows(op, &[indexed.0], m, c)?;
        if !indexed.1.is_multiple_of(c) {
            anyhow::bail!("{op}: {} elements are not rows of {c}", indexed.1);
        }
        if m == 0 {
            return Ok(());
        }
        let pair = match op {
            "gather_rows" => kernels::glue::GATHER_ROWS,
            _ => kernels::glue::SCATTER_ROWS,
        };
        let f = self.function(T::kernel(pair))?;
        let (d, s, i) = (self.ptr_mut(dst), self.ptr(src), self.ptr(idx));
        let c32 = c as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&d).arg(&s).arg(&i).arg(&c32);
        // SAFETY: the arguments match the kernel; the indexed side holds M rows of C and the
        // caller keeps every index within the other side's rows.
        unsafe { launch.launch(Self::rows(m)) }.context(op.to_string())?;
        Ok(())
    }

    /// The sum of squares of x, in f64 (the gradient norm).
    pub fn sum_squares(&self, x: &impl DevicePtr<f32>) -> Result<f64> {
        let n = x.len();
        if n == 0 {
            return Ok(0.0);
        }
        let cfg = Self::elementwise(n);
        let mut partial = self.alloc::<f64>(cfg.grid_dim.0 as usize, "for the gradient norm")?;
        let f = self.function(kernels::glue::SUM_SQUARES_PARTIAL)?;
        let (p, xp, n64) = (self.ptr_mut(&mut partial), self.ptr(x), n as i64);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&p).arg(&xp).arg(&n64);
        // SAFETY: the arguments match the kernel; partial holds one float per block.
        unsafe { launch.launch(cfg) }.context("sum_squares_partial")?;
        let host = self.stream.clone_dtoh(&partial)?;
        Ok(host.iter().sum())
    }

    /// out: (C) f32 += the column sums of x: (N, C), in two deterministic passes (row
    /// segments summed in order, then the segments' sums in order).
    pub fn column_sums<T: Storage>(
        &self,
        out: &mut dyn Dest<f32>,
        x: &impl DevicePtr<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_rows("column_sums", &[x.len()], n, c)?;
        check_lens("column_sums out", &[out.len()], c)?;
        if n == 0 {
            return Ok(());
        }
        let (segs, seg) = column_segments(n);
        let mut partial = self.alloc::<f32>(segs * c, "for column sums")?;
        let f = self.function(T::kernel(kernels::glue::COLUMN_SUMS_PARTIAL))?;
        let (p, xp) = (self.ptr_mut(&mut partial), self.ptr(x));
        let ints = [n, c, seg].map(|v| v as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&p)
            .arg(&xp)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2]);
        let mut cfg = Self::columns(c);
        cfg.grid_dim.1 = segs as u32;
        // SAFETY: the arguments match the kernel; partial holds segs x C, x holds N x C and
        // every segment's rows are below N.
        unsafe { launch.launch(cfg) }.context("column_sums_partial")?;
        let f = self.function(kernels::glue::COLUMN_SUMS_FINISH)?;
        let (o, segs32) = (out.address(self), segs as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&o).arg(&p).arg(&segs32).arg(&ints[1]);
        // SAFETY: out holds C floats, partial segs x C.
        unsafe { launch.launch(Self::columns(c)) }.context("column_sums_finish")?;
        Ok(())
    }
}

/// How `column_sums` splits N rows: (segments, rows per segment), about 64 rows or more
/// per segment and at most 256 segments.
pub(crate) fn column_segments(n: usize) -> (usize, usize) {
    let segs = n.div_ceil(64).clamp(1, 256);
    let seg = n.div_ceil(segs);
    (n.div_ceil(seg), seg)
}

/// Whether `width` columns at `at` fit each of `rows` rows of a buffer of `len` elements.
fn check_block(
    op: &str,
    what: &str,
    len: usize,
    at: Columns,
    rows: usize,
    width: usize,
) -> Result<()> {
    if at.offset + width > at.stride || len != rows * at.stride {
        anyhow::bail!(
            "{op} {what}: {width} columns at {} do not fit rows of {} in {len} elements ({rows} rows)",
            at.offset,
            at.stride
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::column_segments;

    #[test]
    fn column_segments_cover_every_row_once() {
        for n in [1, 2, 63, 64, 65, 1000, 16_384, 16_385, 1 << 20] {
            let (segs, seg) = column_segments(n);
            assert!((1..=256).contains(&segs), "{n}: {segs}");
            // Segments 0..segs-1 are full and the last one is not empty.
            assert!(
                (segs - 1) * seg < n && segs * seg >= n,
                "{n}: {segs} x {seg}"
            );
        }
    }
}
