//! How the CPU's matrix products run: in f32 (`matmul.rs`), or with bf16 operands and f32
//! sums on one of the bf16 kernels (`matmul_bf16.rs`, `--precision bf16`).

use super::bf16::Bf16Path;
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
}

impl fmt::Display for Products {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Products::F32 => write!(f, "f32 products"),
            Products::Bf16(path) => write!(f, "bf16 products on {path}"),
        }
    }
}
