//! Residual connection: x += y. Its backward is the identity: the gradient of the sum passes
//! through unchanged to both inputs, so it needs no function of its own.

/// x: (N, C) updated in place, y: (N, C).
pub fn residual_forward(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "residual shapes");
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
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
        residual_forward(&mut x, &y);
        let want: Vec<f64> = x0
            .iter()
            .zip(&y)
            .map(|(a, b)| *a as f64 + *b as f64)
            .collect();
        assert_close(&x, &want, 1e-6, 1e-6);
    }
}
