//! Linear layers on cuBLAS: out = inp @ weight^T (+ bias), and the backward, with f32
//! accumulation (cublasGemmEx, compute type 32F) whatever the storage type. Row-major
//! (N, C) buffers are column-major (C, N) ones to cuBLAS, so each product is written
//! transposed, as llm.c does.

use super::{check_lens, Dest, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{bail, Context, Result};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceSlice, PushKernelArg};
use std::ffi::c_void;

/// One cublasGemmEx call on column-major operands: c (m, n) = alpha op(a) op(b) + beta c.
pub(crate) struct Gemm {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub beta: f32,
}

impl Gpu {
    pub(crate) fn gemm(
        &self,
        g: Gemm,
        (a, a_type, lda): (u64, cudaDataType, usize),
        (b, b_type, ldb): (u64, cudaDataType, usize),
        (c, c_type, ldc): (u64, cudaDataType, usize),
    ) -> Result<()> {
        let dims = [g.m, g.n, g.k, lda, ldb, ldc];
        if dims.iter().any(|&d| d > i32::MAX as usize) {
            anyhow::bail!("matmul: dimensions {dims:?} do not fit cuBLAS");
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1.0f32;
        // cuBLAS works on the calling thread's current context.
        self.ctx
            .bind_to_thread()
            .context("cuBLAS: binding the context")?;
        // SAFETY: the pointers are live device buffers of the sizes the caller checked, the
        // scalars are f32 as compute type 32F requires, and the handle's stream is ours.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(g.transa),
                op(g.transb),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &alpha as *const f32 as *const c_void,
                a as *const c_void,
                a_type,
                lda as i32,
                b as *const c_void,
                b_type,
                ldb as i32,
                &g.beta as *const f32 as *const c_void,
                c as *mut c_void,
                c_type,
                ldc as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .context("cublasGemmEx")
    }

    /// out: (N, OC) = inp: (N, C) @ weight: (OC, C)^T + bias: (OC). Twin of
    /// `cpu::matmul::matmul_forward`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        bias: Option<&dyn Bias<T>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        if let Some(bias) = bias {
            check_lens("matmul bias", &[bias.len()], oc)?;
        }
        self.product(out, inp, weight, n, c, oc)?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        if let Some(bias) = bias {
            let f = self.function(T::kernel(kernels::bias::ADD_BIAS))?;
            let (total, oc32) = ((n * oc) as i64, oc as i32);
            let (o, b) = (self.ptr_mut(out), bias.address(self));
            let mut launch = self.stream.launch_builder(&f);
            launch.arg(&o).arg(&b).arg(&total).arg(&oc32);
            // SAFETY: out holds N x OC, bias OC.
            unsafe { launch.launch(Self::elementwise(n * oc)) }.context("add_bias")?;
        }
        Ok(())
    }

    /// out: (N, OC) f32 = inp: (N, C) @ weight: (OC, C)^T, whatever the storage type (the
    /// LM head's logits, which sampling reads in f32).
    pub fn matmul_forward_f32_out<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<f32>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.product(out, inp, weight, n, c, oc)
    }

    /// out: (N, OC) of type O = inp: (N, C) @ weight: (OC, C)^T, f32 accumulation.
    fn product<T: Storage, O: Storage>(
        &self,
        out: &mut impl DevicePtrMut<O>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        check_lens("matmul out", &[out.len()], n * oc)?;
        check_lens("matmul inp", &[inp.len()], n * c)?;
        check_lens("matmul weight", &[weight.len()], oc * c)?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        if c == 0 {
            // An empty product: zeros.
            self.stream.memset_zeros(out).context("matmul")?;
            return Ok(());
        }
        let (w, x, o) = (self.ptr(weight), self.ptr(inp), self.ptr_mut(out));
        // out^T (OC, N) = W (OC, C) @ inp^T (C, N); W is (C, OC) column-major: transposed.
        self.gemm(
            Gemm {
                transa: true,
                transb: false,
                m: oc,
                n,
                k: c,
                beta: 0.0,
            },
            (w, T::CUDA_TYPE, c),
            (x, T::CUDA_TYPE, c),
            (o, O::CUDA_TYPE, oc),
        )
    }

    /// dinp: (N, C) assigned; dweight: (OC, C) and dbias: (OC) f32 accumulated; dout:
    /// (N, OC); inp: (N, C); weight: (OC, C). Twin of `cpu::matmul::matmul_backward`.
    /// `dweight` None: a frozen weight, whose gradient is never formed (twin of
    /// `matmul_backward_dx`; `dbias` must be None too).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward<T: Storage, D: DevicePtrMut<f32>>(
        &self,
        dinp: &mut impl DevicePtrMut<T>,
        mut dweight: Option<&mut D>,
        dbias: Option<&mut dyn Dest<f32>>,
        dout: &impl DevicePtr<T>,
        inp: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        check_lens("matmul dinp", &[dinp.len(), inp.len()], n * c)?;
        check_lens("matmul weight", &[weight.len()], oc * c)?;
        if let Some(dweight) = dweight.as_ref() {
            check_lens("matmul dweight", &[dweight.len()], oc * c)?;
        } else if dbias.is_some() {
            bail!("matmul_backward: a bias gradient without the weight's");
        }
        check_lens("matmul dout", &[dout.len()], n * oc)?;
        if let Some(dbias) = dbias.as_ref() {
            check_lens("matmul dbias", &[dbias.len()], oc)?;
        }
        if n == 0 || c == 0 {
            return Ok(());
        }
        if oc == 0 {
            // dinp is assigned: an empty product gives zeros.
            self.stream.memset_zeros(dinp).context("matmul_backward")?;
            return Ok(());
        }
        {
            let (w, x, dy) = (self.ptr(weight), self.ptr(inp), self.ptr(dout));
            let dx = self.ptr_mut(dinp);
            // dinp^T (C, N) = W^T (C, OC) @ dout^T (OC, N): W column-major (C, OC) as is.
            self.gemm(
                Gemm {
                    transa: false,
                    transb: false,
                    m: c,
                    n,
                    k: oc,
                    beta: 0.0,
                },
                (w, T::CUDA_TYPE, c),
                (dy, T::CUDA_TYPE, oc),
                (dx, T::CUDA_TYPE, c),
            )?;
            if let Some(dweight) = dweight.as_mut() {
                let dw = self.ptr_mut(*dweight);
                // dweight^T (C, OC) += inp^T (C, N) @ dout (N, OC), into f32.
                self.gemm(
                    Gemm {
                        transa: false,
                        transb: true,
                        m: c,
                        n: oc,
                        k: n,
                        beta: 1.0,
                    },
                    (x, T::CUDA_TYPE, c),
                    (dy, T::CUDA_TYPE, oc),
                    (dw, cudaDataType::CUDA_R_32F, c),
                )?;
            }
        }
        if let Some(dbias) = dbias {
            // dbias += the column sums of dout.
            self.column_sums(dbias, dout, n, oc)?;
        }
        Ok(())
    }
}

/// A bias vector on the device: a whole buffer or a view into the flat weights. (A trait
/// object, so `None` needs no type annotation at the call sites.)
pub trait Bias<T> {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn address(&self, gpu: &Gpu) -> u64;
}
impl<T, X: DevicePtr<T>> Bias<T> for X {
    fn len(&self) -> usize {
        DeviceSlice::len(self)
    }
    fn address(&self, gpu: &Gpu) -> u64 {
        gpu.ptr(self)
    }
}
