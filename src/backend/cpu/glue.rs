//! Moving rows and columns between buffers: the fused q/k/v projection split into its
//! parts and joined back, and rows gathered or scattered by index. Twin of `cuda::glue`.

use rayon::prelude::*;

/// Splits the rows of qkv: (N, QD + 2 KVD) into q: (N, QD), k and v: (N, KVD).
pub fn qkv_split(q: &mut [f32], k: &mut [f32], v: &mut [f32], qkv: &[f32], qd: usize, kvd: usize) {
    let width = qd + 2 * kvd;
    let n = qkv.len() / width.max(1);
    assert!(
        qd > 0 && kvd > 0 && qkv.len() == n * width,
        "qkv_split shapes"
    );
    assert!(
        q.len() == n * qd && k.len() == n * kvd && v.len() == n * kvd,
        "qkv_split shapes"
    );
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
}

/// The inverse of `qkv_split`: qkv: (N, QD + 2 KVD) from q: (N, QD), k and v: (N, KVD).
pub fn qkv_join(qkv: &mut [f32], q: &[f32], k: &[f32], v: &[f32], qd: usize, kvd: usize) {
    let width = qd + 2 * kvd;
    let n = qkv.len() / width.max(1);
    assert!(
        qd > 0 && kvd > 0 && qkv.len() == n * width,
        "qkv_join shapes"
    );
    assert!(
        q.len() == n * qd && k.len() == n * kvd && v.len() == n * kvd,
        "qkv_join shapes"
    );
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
}

/// dst: (R, C) row i = src row rows[i].
pub fn gather_rows(dst: &mut [f32], src: &[f32], rows: &[i32], c: usize) {
    assert!(c > 0 && dst.len() == rows.len() * c, "gather_rows shapes");
    for (d, &r) in dst.chunks_exact_mut(c).zip(rows) {
        let r = r as usize;
        d.copy_from_slice(&src[r * c..(r + 1) * c]);
    }
}

/// dst row rows[i] = src: (R, C) row i; the other rows of dst are left as they are.
pub fn scatter_rows(dst: &mut [f32], src: &[f32], rows: &[i32], c: usize) {
    assert!(c > 0 && src.len() == rows.len() * c, "scatter_rows shapes");
    for (s, &r) in src.chunks_exact(c).zip(rows) {
        let r = r as usize;
        dst[r * c..(r + 1) * c].copy_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_join_is_the_identity_and_rows_move_where_told() {
        let (qd, kvd, n) = (4, 2, 3);
        let qkv: Vec<f32> = (0..n * (qd + 2 * kvd)).map(|x| x as f32).collect();
        let (mut q, mut k, mut v) = (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
        qkv_split(&mut q, &mut k, &mut v, &qkv, qd, kvd);
        assert_eq!(&q[..qd], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(&k[kvd..2 * kvd], &[12.0, 13.0]);
        assert_eq!(&v[..kvd], &[6.0, 7.0]);
        let mut back = vec![0.0; qkv.len()];
        qkv_join(&mut back, &q, &k, &v, qd, kvd);
        assert_eq!(back, qkv);

        let src: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 4 rows of 2
        let mut picked = vec![0.0; 4];
        gather_rows(&mut picked, &src, &[3, 1], 2);
        assert_eq!(picked, [6.0, 7.0, 2.0, 3.0]);
        let mut dst = vec![-1.0; 8];
        scatter_rows(&mut dst, &picked, &[0, 2], 2);
        assert_eq!(dst, [6.0, 7.0, -1.0, -1.0, 2.0, 3.0, -1.0, -1.0]);
    }
}
