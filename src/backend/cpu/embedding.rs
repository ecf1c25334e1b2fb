//! Token embedding lookup.

/// out: (N, C), tokens: (N), table: (V, C). Token ids are checked by the caller against V.
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &[f32], c: usize) {
    assert_eq!(out.len(), tokens.len() * c, "embedding out shape");
    for (row, &t) in out.chunks_exact_mut(c).zip(tokens) {
        let t = t as usize;
        row.copy_from_slice(&table[t * c..(t + 1) * c]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    #[test]
    fn rows_are_the_table_rows_of_the_tokens() {
        let (v, c) = (11, 6);
        let table = randn(v * c, 4);
        let tokens = [3u32, 0, 10, 3];
        let mut out = vec![0.0; tokens.len() * c];
        embedding_forward(&mut out, &tokens, &table, c);
        for (i, &t) in tokens.iter().enumerate() {
            for j in 0..c {
                assert_eq!(out[i * c + j], table[t as usize * c + j]);
            }
        }
    }
}
