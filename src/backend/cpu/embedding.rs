//! Token embedding lookup and its backward.

use super::check_rows;
use anyhow::{bail, Result};

/// out: (N, C), tokens: (N), table: (V, C).
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &[f32], c: usize) -> Result<()> {
    check_table("embedding_forward", out.len(), tokens, table.len(), c)?;
    for (row, &t) in out.chunks_exact_mut(c).zip(tokens) {
        let t = t as usize;
        row.copy_from_slice(&table[t * c..(t + 1) * c]);
    }
    Ok(())
}

/// dtable: (V, C) accumulated; dout: (N, C); tokens: (N).
///
/// Serial in row order: a token that repeats adds to the same table row, and a fixed order
/// keeps the sum deterministic.
pub fn embedding_backward(
    dtable: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    c: usize,
) -> Result<()> {
    check_table("embedding_backward", dout.len(), tokens, dtable.len(), c)?;
    for (row, &t) in dout.chunks_exact(c).zip(tokens) {
        let t = t as usize;
        for (d, g) in dtable[t * c..(t + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
    Ok(())
}

/// Checks that `rows` holds a row of C per token, and that each token has a row in a table
/// of `table` elements.
fn check_table(op: &str, rows: usize, tokens: &[u32], table: usize, c: usize) -> Result<()> {
    check_rows(op, &[rows], tokens.len(), c)?;
    if !table.is_multiple_of(c) {
        bail!("{op}: a table of {table} is not rows of {c}");
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= table / c) {
        bail!("{op}: token {t} of a table of {} rows", table / c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        assert_close, numeric_grad, plus, randn, to_f64, weighted_sum, GRAD_TOL,
    };

    #[test]
    fn rows_are_the_table_rows_of_the_tokens() {
        let (v, c) = (11, 6);
        let table = randn(v * c, 4);
        let tokens = [3u32, 0, 10, 3];
        let mut out = vec![0.0; tokens.len() * c];
        embedding_forward(&mut out, &tokens, &table, c).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            for j in 0..c {
                assert_eq!(out[i * c + j], table[t as usize * c + j]);
            }
        }
    }

    /// Token 3 repeats, token 5 never occurs; dtable starts nonzero and is added to.
    #[test]
    fn backward_matches_finite_differences_and_accumulates() {
        let (v, c) = (7, 5);
        let tokens = [3u32, 0, 6, 3, 1];
        let table = randn(v * c, 50);
        let dout = randn(tokens.len() * c, 51);
        let dtable0 = randn(v * c, 52);
        let mut dtable = dtable0.clone();
        embedding_backward(&mut dtable, &dout, &tokens, c).unwrap();
        let loss = |table: &[f64]| {
            let out: Vec<f64> = tokens
                .iter()
                .flat_map(|&t| table[t as usize * c..][..c].to_vec())
                .collect();
            weighted_sum(&dout, &out)
        };
        let want = numeric_grad(&to_f64(&table), loss);
        assert_close(&dtable, &plus(&want, &dtable0), GRAD_TOL, GRAD_TOL);
    }

    #[test]
    fn bad_shapes_and_tokens_are_errors_naming_the_op() {
        let (v, c) = (4, 3);
        let table = randn(v * c, 53);
        let mut out = vec![0.0; 2 * c];
        let err = |r: anyhow::Result<()>| r.unwrap_err().to_string();
        assert_eq!(
            err(embedding_forward(&mut out[..5], &[0, 1], &table, c)),
            "embedding_forward: a buffer of 5 elements, expected 2 x 3"
        );
        assert_eq!(
            err(embedding_forward(&mut out, &[0, 4], &table, c)),
            "embedding_forward: token 4 of a table of 4 rows"
        );
        let mut dtable = vec![0.0; v * c - 1];
        assert_eq!(
            err(embedding_backward(&mut dtable, &out, &[0, 1], c)),
            "embedding_backward: a table of 11 is not rows of 3"
        );
    }
}
