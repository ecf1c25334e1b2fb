//! The fused LM-head log-probs on the device, chunked over rows: log p(target) of each scored
//! row and its backward, without ever holding the (M, V) logits. Twin of
//! `cpu::logprobs::{logprobs_forward, logprobs_backward}`; the per-sequence sums and their
//! backward are the twins of `sums_per_sequence` in `model::training`.
//!
//! Per chunk of rows the forward runs cuBLAS for the chunk's logits (T inputs, f32 output
//! and accumulation) and one row kernel (log-normaliser and the target's log-prob). The
//! backward recomputes each chunk's logits, turns them into d(logits) =
//! dlogp * (one_hot(target) - softmax) in the storage type T (cublasGemmEx wants both inputs
//! of one type), then d(hidden) = d(logits) @ W and d(W) += d(logits)^T @ hidden.
//!
//! Device memory beyond the inputs and outputs: the `LogitsScratch`, (chunk, V) f32 for the
//! logits plus, once a bf16 backward has run, (chunk, V) bf16 for the gradient rows (f32
//! writes them over the logits); nothing grows with M. With the default chunk that is 64 MiB
//! (+ 32 MiB), plus cuBLAS's own workspace.

use super::matmul::Gemm;
use super::{check_lens, check_rows, Gpu, Storage};
use anyhow::{Context, Result};
use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use std::any::TypeId;
use std::mem::size_of;

/// Rows per chunk so that a chunk's f32 logits take at most 64 MiB: a multiple of 64 in
/// [64, 8192] (V = 128 256 gives 128 rows, V = 32 000 gives 512).
pub fn default_chunk_rows(vocab: usize) -> usize {
    ((16 << 20) / vocab.max(1) / 64 * 64).clamp(64, 8192)
}

/// The reused device buffers of the chunked log-probs: one chunk's logits and gradient rows.
pub struct LogitsScratch {
    chunk_rows: usize,
    v: usize,
    logits: CudaSlice<f32>, // (chunk, V)
    /// (chunk, V) gradient rows in the storage type when it is not f32, as raw bytes: the
    /// struct serves every storage type, and this is allocated by the first such backward.
    grad: Option<CudaSlice<u8>>,
}

impl LogitsScratch {
    /// Buffers for chunks of `chunk_rows` rows over a vocabulary of `v`.
    pub fn new(gpu: &Gpu, chunk_rows: usize, v: usize) -> Result<Self> {
        if chunk_rows == 0 || v == 0 || chunk_rows > i32::MAX as usize || v > i32::MAX as usize {
            anyhow::bail!("LogitsScratch: chunks of {chunk_rows} rows of {v} logits");
        }
        let logits = gpu.alloc::<f32>(chunk_rows * v, "for a chunk of the LM head's logits")?;
        Ok(LogitsScratch {
            chunk_rows,
            v,
            logits,
            grad: None,
        })
    }

    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    fn check(&self, op: &str, v: usize) -> Result<()> {
        if v != self.v {
            anyhow::bail!("{op}: the scratch was made for V = {}, not {v}", self.v);
        }
        Ok(())
    }
}

/// Launch arguments that say where a chunk's rows start.
struct ChunkRows {
    r0: usize,
    rows: usize,
}

impl Gpu {
    /// logp, lse: (M) f32 written; hidden: (M, C) T; weight: (V, C) T; targets: (M) u32,
    /// each below V (checked by the caller); scratch: (chunk, V) f32 logits, reused.
    #[allow(clippy::too_many_arguments)]
    pub fn logprobs_forward<T: Storage>(
        &self,
        logp: &mut impl DevicePtrMut<f32>,
        lse: &mut impl DevicePtrMut<f32>,
        hidden: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        targets: &impl DevicePtr<u32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        let m = targets.len();
        check_lens("logprobs_forward logp, lse", &[logp.len(), lse.len()], m)?;
        check_rows("logprobs_forward hidden", &[hidden.len()], m, c)?;
        check_rows("logprobs_forward weight", &[weight.len()], v, c)?;
        scratch.check("logprobs_forward", v)?;
        let (logp, lse) = (self.ptr_mut(logp), self.ptr_mut(lse));
        let (hidden, weight, targets) = (self.ptr(hidden), self.ptr(weight), self.ptr(targets));
        let logits = self.ptr_mut(&mut scratch.logits);
        for r0 in (0..m).step_by(scratch.chunk_rows) {
            let chunk = ChunkRows {
                r0,
                rows: scratch.chunk_rows.min(m - r0),
            };
            self.chunk_logits::<T>(logits, hidden, weight, &chunk, c, v)?;
            let at = 4 * r0 as u64;
            self.logprob_rows_raw((logp + at, lse + at), logits, targets + at, chunk.rows, v)?;
        }
        Ok(())
    }

    /// dhidden: (M, C) T assigned; dweight: (V, C) f32 accumulated; dlogp: (M) f32, the loss
    /// gradient of each row's log-prob; hidden, weight, targets as in the forward; lse: (M)
    /// from it; scratch as in the forward (plus, for bf16, (chunk, V) gradient rows).
    #[allow(clippy::too_many_arguments)]
    pub fn logprobs_backward<T: Storage>(
        &self,
        dhidden: &mut impl DevicePtrMut<T>,
        dweight: &mut impl DevicePtrMut<f32>,
        dlogp: &impl DevicePtr<f32>,
        hidden: &impl DevicePtr<T>,
        weight: &impl DevicePtr<T>,
        targets: &impl DevicePtr<u32>,
        lse: &impl DevicePtr<f32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        let m = targets.len();
        check_lens("logprobs_backward dlogp, lse", &[dlogp.len(), lse.len()], m)?;
        check_rows(
            "logprobs_backward hidden",
            &[hidden.len(), dhidden.len()],
            m,
            c,
        )?;
        check_rows(
            "logprobs_backward weight",
            &[weight.len(), dweight.len()],
            v,
            c,
        )?;
        scratch.check("logprobs_backward", v)?;
        let (dhidden, dweight) = (self.ptr_mut(dhidden), self.ptr_mut(dweight));
        let (dlogp, hidden, weight) = (self.ptr(dlogp), self.ptr(hidden), self.ptr(weight));
        let (targets, lse) = (self.ptr(targets), self.ptr(lse));
        let logits = self.ptr_mut(&mut scratch.logits);
        // f32 gradient rows overwrite the logits they come from; other types get their own.
        let dlogits = if TypeId::of::<T>() == TypeId::of::<f32>() {
            logits
        } else {
            let bytes = scratch.chunk_rows * v * size_of::<T>();
            let grad = match scratch.grad.take() {
                Some(g) if g.len() >= bytes => g,
                _ => self.alloc::<u8>(bytes, "for a chunk of the LM head's gradient rows")?,
            };
            self.ptr_mut(scratch.grad.insert(grad))
        };
        let t_size = size_of::<T>() as u64;
        for r0 in (0..m).step_by(scratch.chunk_rows) {
            let chunk = ChunkRows {
                r0,
                rows: scratch.chunk_rows.min(m - r0),
            };
            self.chunk_logits::<T>(logits, hidden, weight, &chunk, c, v)?;
            let at = 4 * r0 as u64;
            self.grad_rows_raw::<T>(
                dlogits,
                logits,
                (targets + at, lse + at, dlogp + at),
                chunk.rows,
                v,
            )?;
            let h = hidden + r0 as u64 * c as u64 * t_size;
            let dh = dhidden + r0 as u64 * c as u64 * t_size;
            // dhidden^T (C, rows) = W^T (C, V) @ dlogits^T (V, rows): W is (C, V) column-major.
            self.gemm(
                Gemm {
                    transa: false,
                    transb: false,
                    m: c,
                    n: chunk.rows,
                    k: v,
                    beta: 0.0,
                },
                (weight, T::CUDA_TYPE, c),
                (dlogits, T::CUDA_TYPE, v),
                (dh, T::CUDA_TYPE, c),
            )?;
            // dweight^T (C, V) += hidden^T (C, rows) @ dlogits (rows, V), into f32.
            self.gemm(
                Gemm {
                    transa: false,
                    transb: true,
                    m: c,
                    n: v,
                    k: chunk.rows,
                    beta: 1.0,
                },
                (h, T::CUDA_TYPE, c),
                (dlogits, T::CUDA_TYPE, v),
                (dweight, cudaDataType::CUDA_R_32F, c),
            )?;
        }
        Ok(())
    }

    /// logits: (rows, V) f32 = hidden[r0..r0 + rows] @ weight^T, at device addresses.
    fn chunk_logits<T: Storage>(
        &self,
        logits: u64,
        hidden: u64,
        weight: u64,
        chunk: &ChunkRows,
        c: usize,
        v: usize,
    ) -> Result<()> {
        let h = hidden + (chunk.r0 * c * size_of::<T>()) as u64;
        // logits^T (V, rows) = W (V, C) @ hidden^T (C, rows); W is (C, V) column-major.
        self.gemm(
            Gemm {
                transa: true,
                transb: false,
                m: v,
                n: chunk.rows,
                k: c,
                beta: 0.0,
            },
            (weight, T::CUDA_TYPE, c),
            (h, T::CUDA_TYPE, c),
            (logits, cudaDataType::CUDA_R_32F, v),
        )
    }

    /// Log-softmax and gather over a chunk of logits: (R, V) f32; targets: (R), each below
    /// V (checked by the caller); logp, lse: (R) written.
    pub fn logprob_rows(
        &self,
        logp: &mut impl DevicePtrMut<f32>,
        lse: &mut impl DevicePtrMut<f32>,
        logits: &impl DevicePtr<f32>,
        targets: &impl DevicePtr<u32>,
        v: usize,
    ) -> Result<()> {
        let r = targets.len();
        check_lens("logprob_rows", &[logp.len(), lse.len()], r)?;
        check_rows("logprob_rows", &[logits.len()], r, v)?;
        let out = (self.ptr_mut(logp), self.ptr_mut(lse));
        self.logprob_rows_raw(out, self.ptr(logits), self.ptr(targets), r, v)
    }

    /// `logprob_rows` at device addresses.
    fn logprob_rows_raw(
        &self,
        (logp, lse): (u64, u64),
        logits: u64,
        targets: u64,
        r: usize,
        v: usize,
    ) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        let f = self.function("logprobs", "logprob_rows")?;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&logp)
            .arg(&lse)
            .arg(&logits)
            .arg(&targets)
            .arg(&v32);
        // SAFETY: the arguments match the kernel; the callers checked that the logits hold
        // R rows of V and logp, lse and targets R elements, targets below V.
        unsafe { launch.launch(Self::rows(r)) }.context("logprob_rows")?;
        Ok(())
    }

    /// dlogits: (R, V) T = upstream[r] * (one_hot(target) - softmax) of logits: (R, V) f32,
    /// upstream being d(loss)/d(logp); targets, lse (from `logprob_rows`), upstream: (R).
    pub fn logprob_grad_rows<T: Storage>(
        &self,
        dlogits: &mut impl DevicePtrMut<T>,
        logits: &impl DevicePtr<f32>,
        targets: &impl DevicePtr<u32>,
        lse: &impl DevicePtr<f32>,
        upstream: &impl DevicePtr<f32>,
        v: usize,
    ) -> Result<()> {
        let r = targets.len();
        check_lens("logprob_grad_rows", &[lse.len(), upstream.len()], r)?;
        check_rows("logprob_grad_rows", &[logits.len(), dlogits.len()], r, v)?;
        let rows = (self.ptr(targets), self.ptr(lse), self.ptr(upstream));
        self.grad_rows_raw::<T>(self.ptr_mut(dlogits), self.ptr(logits), rows, r, v)
    }

    /// `logprob_grad_rows` at device addresses, which may alias (dlogits = logits for f32).
    fn grad_rows_raw<T: Storage>(
        &self,
        dlogits: u64,
        logits: u64,
        (targets, lse, upstream): (u64, u64, u64),
        r: usize,
        v: usize,
    ) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        let f = self.function("logprobs", &format!("logprob_grad_rows_{}", T::SUFFIX))?;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&dlogits)
            .arg(&logits)
            .arg(&targets)
            .arg(&lse)
            .arg(&upstream)
            .arg(&v32);
        // SAFETY: the arguments match the kernel; the callers checked that dlogits and
        // logits hold R rows of V and the others R elements, targets below V.
        unsafe { launch.launch(Self::rows(r)) }.context("logprob_grad_rows")?;
        Ok(())
    }

    /// logp: (M) log-probs; row_starts: (S + 1) i32 on the device, nondecreasing, the
    /// first row of each sequence and M at the end (the caller's); sums: (S) assigned, the
    /// sum over rows row_starts[s]..row_starts[s + 1], in f64 (as the CPU sums them): one block
    /// per sequence, a fixed reduction tree, no atomics (deterministic).
    pub fn sequence_sums(
        &self,
        sums: &mut impl DevicePtrMut<f64>,
        logp: &impl DevicePtr<f32>,
        row_starts: &impl DevicePtr<i32>,
    ) -> Result<()> {
        let s = row_starts.len().saturating_sub(1);
        check_lens("sequence_sums", &[sums.len()], s)?;
        if logp.len() > i32::MAX as usize || s > i32::MAX as usize {
            anyhow::bail!(
                "sequence_sums: {} rows do not fit i32 row starts",
                logp.len()
            );
        }
        if s == 0 {
            return Ok(());
        }
        let f = self.function("logprobs", "sequence_sums")?;
        let (out, lp, starts) = (self.ptr_mut(sums), self.ptr(logp), self.ptr(row_starts));
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&out).arg(&lp).arg(&starts);
        // SAFETY: the arguments match the kernel; sums holds S, row_starts S + 1 entries,
        // whose values index logp (the caller's contract above).
        unsafe { launch.launch(Self::rows(s)) }.context("sequence_sums")?;
        Ok(())
    }

    /// dlogp: (M) assigned, dlogp[r] = dseq[s] for the rows of sequence s under the same
    /// row_starts as `sequence_sums` (0 for a row outside every sequence); dseq: (S).
    pub fn expand_per_row(
        &self,
        dlogp: &mut impl DevicePtrMut<f32>,
        dseq: &impl DevicePtr<f32>,
        row_starts: &impl DevicePtr<i32>,
        m: usize,
    ) -> Result<()> {
        let s = row_starts.len().saturating_sub(1);
        check_lens("expand_per_row dlogp", &[dlogp.len()], m)?;
        check_lens("expand_per_row dseq", &[dseq.len()], s)?;
        if m > i32::MAX as usize || s > i32::MAX as usize {
            anyhow::bail!("expand_per_row: {m} rows do not fit i32 row starts");
        }
        if m == 0 {
            return Ok(());
        }
        let f = self.function("logprobs", "expand_per_row")?;
        let (out, ds, starts) = (self.ptr_mut(dlogp), self.ptr(dseq), self.ptr(row_starts));
        let (s32, m32) = (s as i32, m as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&out).arg(&ds).arg(&starts).arg(&s32).arg(&m32);
        let cfg = Self::elementwise(m);
        // SAFETY: the arguments match the kernel; dlogp holds M, dseq S and row_starts S + 1
        // entries (checked above; with S = 0 the kernel reads none).
        unsafe { launch.launch(cfg) }.context("expand_per_row")?;
        Ok(())
    }
}
