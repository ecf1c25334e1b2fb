//! Moving rows and columns between buffers: the fused q/k/v projection split into its
//! parts and joined back, and rows gathered or scattered by index. Twin of `cuda::glue`.

use super::check_rows;
use crate::backend::settings::Columns;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Splits the rows of qkv: (N, QD + 2 KVD) into q: (N, QD), k and v: (N, KVD).
pub fn qkv_split(
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
    qkv: &[f32],
    qd: usize,
    kvd: usize,
) -> Result<()> {
    check_qkv("qkv_split", qkv.len(), q.len(), [k.len(), v.len()], qd, kvd)?;
    let width = qd + 2 * kvd;
    q.par_chunks_mut(qd)
        .zip(k.par_chunks_mut(kvd))
        .zip(v.par_chunks_mut(kvd))
        .zip(qkv.par_chunks(width))
        .with_min_len(64)
        .for_each(|(((q, k), v), row)| {
            q.copy_from_slice(&row[..qd]);
            k.copy_from_slice(&row[qd..qd + kvd]);
            v.copy_from_slice(&row[qd + kvd..]);
        });
    Ok(())
}

/// The inverse of `qkv_split`: qkv: (N, QD + 2 KVD) from q: (N, QD), k and v: (N, KVD).
pub fn qkv_join(
    qkv: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qd: usize,
    kvd: usize,
) -> Result<()> {
    check_qkv("qkv_join", qkv.len(), q.len(), [k.len(), v.len()], qd, kvd)?;
    let width = qd + 2 * kvd;
    qkv.par_chunks_mut(width)
        .zip(q.par_chunks(qd))
        .zip(k.par_chunks(kvd))
        .zip(v.par_chunks(kvd))
        .with_min_len(64)
        .for_each(|(((row, q), k), v)| {
            row[..qd].copy_from_slice(q);
            row[qd..qd + kvd].copy_from_slice(k);
            row[qd + kvd..].copy_from_slice(v);
        });
    Ok(())
}

/// Checks that qkv, q and k, v hold the same N rows of QD + 2 KVD, QD and KVD.
fn check_qkv(op: &str, qkv: usize, q: usize, kv: [usize; 2], qd: usize, kvd: usize) -> Result<()> {
    if qd == 0 || kvd == 0 {
        bail!("{op}: q rows of {qd} and k, v rows of {kvd}");
    }
    let width = qd + 2 * kvd;
    let n = qkv / width;
    check_rows(&format!("{op} qkv"), &[qkv], n, width)?;
    check_rows(&format!("{op} q"), &[q], n, qd)?;
    check_rows(&format!("{op} k, v"), &kv, n, kvd)
}

/// dst's block (+)= scale * src's block: `width` columns at `to` of each of `rows` rows of
/// dst, from those at `from` of src; added when `accumulate`, else assigned. LoRA's scaled
/// update of a fused projection's block of columns, and that block of its gradient.
#[allow(clippy::too_many_arguments)]
pub fn scale_columns(
    dst: &mut [f32],
    to: Columns,
    src: &[f32],
    from: Columns,
    rows: usize,
    width: usize,
    scale: f32,
    accumulate: bool,
) -> Result<()> {
    for (what, len, at) in [("dst", dst.len(), to), ("src", src.len(), from)] {
        if at.offset + width > at.stride || len != rows * at.stride {
            bail!(
                "scale_columns {what}: {width} columns at {} do not fit rows of {} in {len} elements ({rows} rows)",
                at.offset,
                at.stride
            );
        }
    }
    if rows * width == 0 {
        return Ok(());
    }
    dst.par_chunks_mut(to.stride)
        .zip(src.par_chunks(from.stride))
        .with_min_len(64)
        .for_each(|(d, s)| {
            let d = &mut d[to.offset..to.offset + width];
            let s = &s[from.offset..from.offset + width];
            if accumulate {
                d.iter_mut().zip(s).for_each(|(d, s)| *d += scale * s);
            } else {
                d.iter_mut().zip(s).for_each(|(d, s)| *d = scale * s);
            }
        });
    Ok(())
}

/// dst: (R, C) row i = src row rows[i].
pub fn gather_rows(dst: &mut [f32], src: &[f32], rows: &[i32], c: usize) -> Result<()> {
    check_indexed("gather_rows", dst.len(), src.len(), rows, c)?;
    for (d, &r) in dst.chunks_exact_mut(c).zip(rows) {
        let r = r as usize;
        d.copy_from_slice(&src[r * c..(r + 1) * c]);
    }
    Ok(())
}

/// dst row rows[i] = src: (R, C) row i; the other rows of dst are left as they are.
pub fn scatter_rows(dst: &mut [f32], src: &[f32], rows: &[i32], c: usize) -> Result<()> {
    check_indexed("scatter_rows", src.len(), dst.len(), rows, c)?;
    for (s, &r) in src.chunks_exact(c).zip(rows) {
        let r = r as usize;
        dst[r * c..(r + 1) * c].copy_from_slice(s);
    }
    Ok(())
}

/// Checks that `indexed` (elements) holds a row of C per index, and that every index is a
/// row of `other`.
fn check_indexed(op: &str, indexed: usize, other: usize, rows: &[i32], c: usize) -> Result<()> {
    check_rows(op, &[indexed], rows.len(), c)?;
    if !other.is_multiple_of(c) {
        bail!("{op}: {other} elements are not rows of {c}");
    }
    if let Some(r) = rows.iter().find(|&&r| r < 0 || r as usize >= other / c) {
        bail!("{op}: row {r} of {} rows", other / c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_of_columns_is_scaled_into_another_assigned_or_added() {
        let (rows, src_stride, dst_stride) = (5, 9, 12);
        let src: Vec<f32> = (0..rows * src_stride).map(|x| x as f32).collect();
        let at = |stride, offset| Columns { stride, offset };
        let mut dst = vec![1.0f32; rows * dst_stride];
        // Columns 2..6 of src, times 0.5, added to columns 7..11 of dst.
        scale_columns(
            &mut dst,
            at(dst_stride, 7),
            &src,
            at(src_stride, 2),
            rows,
            4,
            0.5,
            true,
        )
        .unwrap();
        for r in 0..rows {
            for j in 0..dst_stride {
                let want = if (7..11).contains(&j) {
                    1.0 + 0.5 * src[r * src_stride + 2 + j - 7]
                } else {
                    1.0
                };
                assert_eq!(dst[r * dst_stride + j], want, "row {r} column {j}");
            }
        }
        // Assigned: what was there does not count.
        let mut dense = vec![f32::NAN; rows * 4];
        scale_columns(
            &mut dense,
            at(4, 0),
            &dst,
            at(dst_stride, 7),
            rows,
            4,
            -2.0,
            false,
        )
        .unwrap();
        for r in 0..rows {
            for j in 0..4 {
                assert_eq!(dense[r * 4 + j], -2.0 * dst[r * dst_stride + 7 + j]);
            }
        }
        // A block that does not fit its rows is an error naming the side.
        let e = scale_columns(
            &mut dense,
            at(4, 1),
            &src,
            at(src_stride, 0),
            rows,
            4,
            1.0,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("scale_columns dst"), "{e}");
        let e = scale_columns(
            &mut dense,
            at(4, 0),
            &src,
            at(src_stride, 0),
            rows + 1,
            4,
            1.0,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("scale_columns dst"), "{e}");
    }

    #[test]
    fn split_then_join_is_the_identity_and_rows_move_where_told() {
        let (qd, kvd, n) = (4, 2, 3);
        let qkv: Vec<f32> = (0..n * (qd + 2 * kvd)).map(|x| x as f32).collect();
        let (mut q, mut k, mut v) = (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
        qkv_split(&mut q, &mut k, &mut v, &qkv, qd, kvd).unwrap();
        assert_eq!(&q[..qd], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(&k[kvd..2 * kvd], &[12.0, 13.0]);
        assert_eq!(&v[..kvd], &[6.0, 7.0]);
        let mut back = vec![0.0; qkv.len()];
        qkv_join(&mut back, &q, &k, &v, qd, kvd).unwrap();
        assert_eq!(back, qkv);

        let src: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 4 rows of 2
        let mut picked = vec![0.0; 4];
        gather_rows(&mut picked, &src, &[3, 1], 2).unwrap();
        assert_eq!(picked, [6.0, 7.0, 2.0, 3.0]);
        let mut dst = vec![-1.0; 8];
        scatter_rows(&mut dst, &picked, &[0, 2], 2).unwrap();
        assert_eq!(dst, [6.0, 7.0, -1.0, -1.0, 2.0, 3.0, -1.0, -1.0]);
    }

    #[test]
    fn bad_shapes_and_rows_are_errors_naming_the_op() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let (mut q, mut k, mut v) = (vec![0.0; 8], vec![0.0; 4], vec![0.0; 3]);
        assert_eq!(
            err(qkv_split(&mut q, &mut k, &mut v, &[0.0; 16], 4, 2)),
            "qkv_split k, v: a buffer of 3 elements, expected 2 x 2"
        );
        assert_eq!(
            err(qkv_join(&mut [0.0; 15], &q, &k, &k, 4, 2)),
            "qkv_join qkv: a buffer of 15 elements, expected 1 x 8"
        );
        let src = [0.0; 8];
        assert_eq!(
            err(gather_rows(&mut [0.0; 4], &src, &[3, 4], 2)),
            "gather_rows: row 4 of 4 rows"
        );
        assert_eq!(
            err(scatter_rows(&mut [0.0; 8], &src[..3], &[0, 1], 2)),
            "scatter_rows: a buffer of 3 elements, expected 2 x 2"
        );
    }
}
