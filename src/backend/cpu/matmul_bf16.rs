//! The Linear products of `matmul.rs` with bf16 operands and f32 sums (`--precision bf16`):
//! the inputs, weights and output gradients are rounded to bf16 as the kernels pack them
//! (`bf16.rs`); the results, the bias and every gradient stay f32.

use super::bf16::{gemm_bf16, gemm_bf16_packed, Bf16Path, PackedRhs, Strided};
use super::check_lens;
use super::matmul::{add_bias, check_backward, check_backward_dx, check_forward};
use anyhow::Result;

/// out: (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC), as `matmul::matmul_forward`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward_bf16(
    path: Bf16Path,
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_forward(out, inp, weight.len(), bias, n, c, oc)?;
    // SAFETY: out is (n, oc), inp (n, c) and weight (oc, c), checked above.
    unsafe {
        gemm_bf16(
            path,
            out.as_mut_ptr(),
            oc,
            false,
            Strided::new(inp, c, 1),
            Strided::new(weight, 1, c),
            n,
            oc,
            c,
        );
    }
    add_bias(out, bias, oc);
    Ok(())
}

/// `matmul_forward_bf16` with the weight packed already (as the forward's rhs, (C, OC)).
#[allow(clippy::too_many_arguments)]
pub fn forward_packed(
    path: Bf16Path,
    out: &mut [f32],
    inp: &[f32],
    weight: &PackedRhs,
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_forward(out, inp, oc * c, bias, n, c, oc)?;
    // SAFETY: out (n, oc) and inp (n, c), checked above; the packing is (c, oc).
    unsafe {
        let lhs = Strided::new(inp, c, 1);
        gemm_bf16_packed(path, out.as_mut_ptr(), oc, false, lhs, weight, n);
    }
    add_bias(out, bias, oc);
    Ok(())
}

/// dinp (N, C) = dout @ weight; dweight (OC, C) += dout^T @ inp; dbias (OC) += column sums
/// of dout; as `matmul::matmul_backward`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_bf16(
    path: Bf16Path,
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
    let dbias_len = dbias.as_ref().map(|d| d.len());
    check_backward(dinp, dweight, dbias_len, dout, inp, weight.len(), n, c, oc)?;
    matmul_backward_dx_bf16(path, dinp, dout, weight, n, c, oc)?;
    dweight_bf16(path, dweight, dout, inp, n, c, oc)?;
    if let Some(dbias) = dbias {
        for row in dout.chunks_exact(oc) {
            dbias.iter_mut().zip(row).for_each(|(b, d)| *b += d);
        }
    }
    Ok(())
}

/// dinp (N, C) = dout @ weight alone (a frozen weight: no gradient of it is formed), the
/// dinp of `matmul_backward_bf16`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward_dx_bf16(
    path: Bf16Path,
    dinp: &mut [f32],
    dout: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_backward_dx(dinp, dout, weight, n, c, oc)?;
    // SAFETY: dinp (n, c), dout (n, oc), weight (oc, c): checked above.
    unsafe {
        gemm_bf16(
            path,
            dinp.as_mut_ptr(),
            c,
            false,
            Strided::new(dout, oc, 1),
            Strided::new(weight, c, 1),
            n,
            c,
            oc,
        );
    }
    Ok(())
}

/// dweight (OC, C) += dout (N, OC)^T @ inp (N, C).
pub fn dweight_bf16(
    path: Bf16Path,
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    check_lens("matmul_backward dweight", &[dweight.len()], oc * c)?;
    check_lens("matmul_backward dout", &[dout.len()], n * oc)?;
    check_lens("matmul_backward inp", &[inp.len()], n * c)?;
    // SAFETY: dweight (oc, c), dout (n, oc) read as its transpose, inp (n, c): checked.
    unsafe {
        gemm_bf16(
            path,
            dweight.as_mut_ptr(),
            c,
            true,
            Strided::new(dout, 1, oc),
            Strided::new(inp, c, 1),
            oc,
            c,
            n,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};
    use crate::backend::cpu::testutil::randn;

    /// Every bf16 path against the f32 products: within bf16's rounding of the operands,
    /// 2^-9 relative each, of the sum of |terms| (bounded here by the f32 product of the
    /// absolute values).
    #[test]
    fn each_path_matches_the_f32_products_within_bf16_rounding() {
        let (n, c, oc) = (37, 70, 45);
        let inp = randn(n * c, 1);
        let weight = randn(oc * c, 2);
        let bias = randn(oc, 3);
        let dout = randn(n * oc, 4);
        let abs = |x: &[f32]| x.iter().map(|v| v.abs()).collect::<Vec<f32>>();
        let mut want = vec![0.0; n * oc];
        matmul_forward(&mut want, &inp, &weight, Some(&bias), n, c, oc).unwrap();
        let mut mag = vec![0.0; n * oc];
        matmul_forward(&mut mag, &abs(&inp), &abs(&weight), None, n, c, oc).unwrap();
        let (mut want_di, mut want_dw, mut want_db) =
            (vec![0.0; n * c], vec![0.5; oc * c], vec![0.5; oc]);
        matmul_backward(
            &mut want_di,
            &mut want_dw,
            Some(&mut want_db),
            &dout,
            &inp,
            &weight,
            n,
            c,
            oc,
        )
        .unwrap();
        let (mut mag_di, mut mag_dw) = (vec![0.0; n * c], vec![0.0; oc * c]);
        matmul_backward(
            &mut mag_di,
            &mut mag_dw,
            None,
            &abs(&dout),
            &abs(&inp),
            &abs(&weight),
            n,
            c,
            oc,
        )
        .unwrap();
        let close = |got: &[f32], want: &[f32], mag: &[f32], what: &str| {
            for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
                assert!(
                    (g - w).abs() <= 2.0 * m / 256.0 + 1e-5,
                    "{what}[{i}]: {g} vs {w}"
                );
            }
        };
        for path in Bf16Path::ALL.into_iter().filter(|p| p.available()) {
            let mut out = vec![f32::NAN; n * oc];
            matmul_forward_bf16(path, &mut out, &inp, &weight, Some(&bias), n, c, oc).unwrap();
            close(&out, &want, &mag, &format!("{path:?} out"));
            let (mut di, mut dw, mut db) =
                (vec![f32::NAN; n * c], vec![0.5; oc * c], vec![0.5; oc]);
            matmul_backward_bf16(
                path,
                &mut di,
                &mut dw,
                Some(&mut db),
                &dout,
                &inp,
                &weight,
                n,
                c,
                oc,
            )
            .unwrap();
            close(&di, &want_di, &mag_di, &format!("{path:?} dinp"));
            close(&dw, &want_dw, &mag_dw, &format!("{path:?} dweight"));
            // The bias gradient is an f32 sum of f32 values, exactly as the f32 op's.
            assert_eq!(db, want_db, "{path:?} dbias");
        }
    }

    /// A frozen weight's backward gives the full backward's dinp, bit for bit, on every
    /// path this CPU has.
    #[test]
    fn dinp_alone_is_the_full_backwards_dinp() {
        let (n, c, oc) = (37, 70, 45);
        let (inp, weight, dout) = (randn(n * c, 1), randn(oc * c, 2), randn(n * oc, 3));
        for path in Bf16Path::ALL.into_iter().filter(|p| p.available()) {
            let (mut full, mut dw) = (vec![0.0; n * c], vec![0.0; oc * c]);
            matmul_backward_bf16(
                path, &mut full, &mut dw, None, &dout, &inp, &weight, n, c, oc,
            )
            .unwrap();
            let mut alone = vec![f32::NAN; n * c];
            matmul_backward_dx_bf16(path, &mut alone, &dout, &weight, n, c, oc).unwrap();
            assert!(alone == full, "{path}");
        }
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_op() {
        let path = Bf16Path::Portable;
        let err = matmul_forward_bf16(path, &mut [0.0; 5], &[0.0; 6], &[0.0; 6], None, 2, 3, 2)
            .unwrap_err();
        assert!(err.to_string().contains("matmul_forward out"), "{err}");
        let err = matmul_backward_bf16(
            path,
            &mut [0.0; 6],
            &mut [0.0; 6],
            None,
            &[0.0; 3],
            &[0.0; 6],
            &[0.0; 6],
            2,
            3,
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("matmul_backward dout"), "{err}");
    }
}
