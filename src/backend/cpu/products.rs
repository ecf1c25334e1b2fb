//! How the CPU's matrix products run: in f32 (`matmul.rs`), or with bf16 operands and f32
//! sums on one of the bf16 kernels (`matmul_bf16.rs`, `--precision bf16`).

use super::bf16::{gemm_bf16_packed, Bf16Path, PackedRhs, Strided};
use super::{matmul, matmul_bf16};
use anyhow::Result;
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    #[default]
    F32,
    Bf16(Bf16Path),
}

impl Products {
    /// out: (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        self,
        out: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match self {
            Products::F32 => matmul::matmul_forward(out, inp, weight, bias, n, c, oc),
            Products::Bf16(path) => {
                matmul_bf16::matmul_forward_bf16(path, out, inp, weight, bias, n, c, oc)
            }
        }
    }

    /// dinp (N, C) assigned; dweight (OC, C) and dbias (OC) accumulated.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        self,
        dinp: &mut [f32],
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match self {
            Products::F32 => {
                matmul::matmul_backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc)
            }
            Products::Bf16(path) => matmul_bf16::matmul_backward_bf16(
                path, dinp, dweight, dbias, dout, inp, weight, n, c, oc,
            ),
        }
    }

    /// dinp (N, C) = dout (N, OC) @ weight (OC, C) alone: the backward through a frozen
    /// weight.
    pub fn backward_dx(
        self,
        dinp: &mut [f32],
        dout: &[f32],
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match self {
            Products::F32 => matmul::matmul_backward_dx(dinp, dout, weight, n, c, oc),
            Products::Bf16(path) => {
                matmul_bf16::matmul_backward_dx_bf16(path, dinp, dout, weight, n, c, oc)
            }
        }
    }
}

/// A weight (OC, C) that many products read in a row (the LM head over its chunks): with
/// bf16 products, packed on first use, once for the forward and once for d(input).
pub struct Prepared<'w> {
    products: Products,
    weight: &'w [f32],
    c: usize,
    oc: usize,
    forward: Option<PackedRhs>,
    backward: Option<PackedRhs>,
}

impl Products {
    /// `weight`: (OC, C), to be read by `Prepared::forward` and `backward`.
    pub fn prepare(self, weight: &[f32], c: usize, oc: usize) -> Prepared<'_> {
        Prepared {
            products: self,
            weight,
            c,
            oc,
            forward: None,
            backward: None,
        }
    }
}

impl Prepared<'_> {
    /// out: (N, OC) = inp (N, C) @ weight^T.
    pub fn forward(&mut self, out: &mut [f32], inp: &[f32], n: usize) -> Result<()> {
        let (c, oc, weight) = (self.c, self.oc, self.weight);
        let Products::Bf16(path) = self.products else {
            return self.products.forward(out, inp, weight, None, n, c, oc);
        };
        super::matmul::check_forward(out, inp, weight.len(), None, n, c, oc)?;
        // SAFETY: weight is (oc, c) (checked above), read as its transpose (c, oc).
        let packed = self
            .forward
            .get_or_insert_with(|| unsafe { PackedRhs::new(Strided::new(weight, 1, c), c, oc) });
        matmul_bf16::forward_packed(path, out, inp, packed, None, n, c, oc)
    }

    /// dinp (N, C) assigned; dweight (OC, C) accumulated (None: the weight is frozen, its
    /// gradient is not formed); from dout (N, OC) and inp (N, C).
    pub fn backward(
        &mut self,
        dinp: &mut [f32],
        dweight: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        n: usize,
    ) -> Result<()> {
        let (c, oc, weight) = (self.c, self.oc, self.weight);
        let Products::Bf16(path) = self.products else {
            return match dweight {
                Some(dw) => self
                    .products
                    .backward(dinp, dw, None, dout, inp, weight, n, c, oc),
                None => self.products.backward_dx(dinp, dout, weight, n, c, oc),
            };
        };
        match dweight.as_deref() {
            Some(dw) => {
                super::matmul::check_backward(dinp, dw, None, dout, inp, weight.len(), n, c, oc)?
            }
            None => super::matmul::check_backward_dx(dinp, dout, weight, n, c, oc)?,
        }
        // SAFETY: weight is (oc, c) (checked above), read as itself.
        let packed = self
            .backward
            .get_or_insert_with(|| unsafe { PackedRhs::new(Strided::new(weight, c, 1), oc, c) });
        // SAFETY: every buffer's size is checked above; packed is (oc, c).
        unsafe {
            let dout_rows = Strided::new(dout, oc, 1);
            gemm_bf16_packed(path, dinp.as_mut_ptr(), c, false, dout_rows, packed, n);
        }
        // dweight += dout^T @ inp reads no weight: the plain product.
        match dweight {
            Some(dw) => matmul_bf16::dweight_bf16(path, dw, dout, inp, n, c, oc),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Products {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Products::F32 => write!(f, "f32 products"),
            Products::Bf16(path) => write!(f, "bf16 products on {path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    /// A prepared weight gives the plain products' results bit for bit, on every path.
    #[test]
    fn a_prepared_weight_gives_the_plain_products() {
        let (n, c, oc) = (37, 70, 100);
        let (inp, weight, dout) = (randn(n * c, 1), randn(oc * c, 2), randn(n * oc, 3));
        let mut all = vec![Products::F32];
        all.extend(
            Bf16Path::ALL
                .into_iter()
                .filter(|p| p.available())
                .map(Products::Bf16),
        );
        for products in all {
            let mut want = vec![0.0; n * oc];
            products
                .forward(&mut want, &inp, &weight, None, n, c, oc)
                .unwrap();
            let (mut want_di, mut want_dw) = (vec![0.0; n * c], vec![0.5; oc * c]);
            let (di, dw) = (&mut want_di, &mut want_dw);
            products
                .backward(di, dw, None, &dout, &inp, &weight, n, c, oc)
                .unwrap();
            let mut head = products.prepare(&weight, c, oc);
            let mut got = vec![f32::NAN; n * oc];
            head.forward(&mut got, &inp, n).unwrap();
            assert_eq!(got, want, "{products}");
            let (mut di, mut dw) = (vec![f32::NAN; n * c], vec![0.5; oc * c]);
            head.backward(&mut di, Some(&mut dw), &dout, &inp, n)
                .unwrap();
            assert_eq!((&di, dw), (&want_di, want_dw), "{products}");
            // A frozen weight: the same d(input), no gradient.
            let mut frozen = vec![f32::NAN; n * c];
            head.backward(&mut frozen, None, &dout, &inp, n).unwrap();
            assert_eq!(frozen, di, "{products}");
        }
    }
}
