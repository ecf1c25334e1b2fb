//! Residual connection: x += y. Its backward is the identity: the gradient of the sum passes
//! through unchanged to both inputs, so it needs no function of its own.

use super::check_lens;
use anyhow::Result;

/// x: (N, C) updated in place, y: (N, C).
pub fn residual_forward(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_lens("residual_forward", &[y.len()], x.len())?;
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{assert_close, randn};

    #[test]
    fn adds_element_wise() {
        let x0 = randn(37, 5);
        let y = randn(37, 6);
        let mut x = x0.clone();
        residual_forward(&mut x, &y).unwrap();
        let want: Vec<f64> = x0
            .iter()
            .zip(&y)
            .map(|(a, b)| *a as f64 + *b as f64)
            .collect();
        assert_close(&x, &want, 1e-6, 1e-6);
    }

    #[test]
    fn unequal_lengths_are_an_error_naming_the_op() {
        let mut x = vec![1.0; 4];
        let err = residual_forward(&mut x, &[2.0; 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "residual_forward: a buffer of 3 elements, expected 4"
        );
        assert_eq!(x, [1.0; 4]);
    }
}
