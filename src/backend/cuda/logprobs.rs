//! The fused LM-head log-probs on the device, chunked over rows: log p(target) of each scored
//! row and its backward, without ever holding the (M, V) logits. Twin of
//! `cpu::logprobs::{logprobs_forward, logprobs_backward}`. The per-sequence sums are the
//! host's (`model::graph::logprobs`), from the M row log-probs.
//!
//! Per chunk of rows the forward runs cuBLAS for the chunk's logits (T inputs, f32 output
//! and accumulation) and the row pass (log-normaliser and the target's log-prob). The
//! backward recomputes each chunk's logits, turns them into d(logits) =
//! dlogp * (one_hot(target) - softmax) in the storage type T (cublasGemmEx wants both inputs
//! of one type), then d(hidden) = d(logits) @ W and d(W) += d(logits)^T @ hidden.
//!
//! The row passes read each logit once and are bound by memory bandwidth, which needs the
//! whole GPU busy: the forward takes a row per block in one online pass (max and sum of exp
//! together) and, where a chunk has too few rows to fill the GPU (a short last chunk, a small
//! M, a vocabulary large enough for chunks of 64 rows), splits each row over several blocks
//! (`row_splits`: rows x splits up to one wave of 4 blocks per SM) and merges the splits'
//! (max, sum of exp) in a second, tiny kernel; the gradient pass is elementwise over the
//! chunk (`grad_blocks`: one wave, grid-stride). Both load float4 where aligned.
//!
//! Device memory beyond the inputs and outputs: the `LogitsScratch`, (chunk, V) f32 for the
//! logits plus, once a bf16 backward has run, (chunk, V) bf16 for the gradient rows (f32
//! writes them over the logits); nothing grows with M. With the default chunk that is 256 MiB
//! (+ 128 MiB), plus cuBLAS's own workspace and the `Gpu`'s few KiB of row partials.

use super::matmul::Gemm;
use super::{check_lens, check_rows, Gpu, Storage, ROW_THREADS};
use crate::backend::kernels;
use anyhow::{Context, Result};
use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use std::any::TypeId;
use std::mem::size_of;
use std::sync::PoisonError;

/// Rows per chunk so that a chunk's f32 logits take at most 256 MiB: a multiple of 64 in
/// [64, 8192] (V = 128 256 gives 512 rows, V = 32 000 gives 2048). Larger chunks mean fewer,
/// larger products: each chunk's products read all of W (V x C) and the d(W) product reads
/// and writes all of the f32 d(W), so per row that traffic falls with the chunk (at 128
/// rows, V = 128 256, C = 2048, the d(W) product moved 2 GiB for 67 GFLOP: memory-bound).
pub fn default_chunk_rows(vocab: usize) -> usize {
    ((64 << 20) / vocab.max(1) / 64 * 64).clamp(64, 8192)
}

/// Blocks per SM of the log-prob row passes: what their kernels' launch bounds (256 threads,
/// at least 4 blocks per SM) guarantee to be resident at once, so that a grid of this many
/// per SM runs as one wave, every block streaming at the same rate.
const ROW_BLOCKS_PER_SM: usize = 4;

/// The fewest logits a split of the forward row pass takes: one full round of its loads
/// (256 threads x 8 float4).
const MIN_SPLIT: usize = ROW_THREADS as usize * 8 * 4;

/// Blocks of one wave of a row pass on `sm_count` SMs.
fn row_wave(sm_count: usize) -> usize {
    ROW_BLOCKS_PER_SM * sm_count.max(1)
}

/// Floats of the `Gpu`'s row partials: a (max, sum) pair per block of one wave, what
/// `row_splits` launches at most when it splits at all.
pub(super) fn partials_len(sm_count: usize) -> usize {
    2 * row_wave(sm_count)
}

/// Blocks per row of the forward row pass over `rows` rows of `v` logits, `wave` blocks
/// fitting at once: as many as keep rows x splits within the wave (more would leave a tail
/// wave), each split at least `MIN_SPLIT` logits; 1 (no partials, no combine kernel) when
/// the rows alone fill more than half the wave.
fn row_splits(rows: usize, v: usize, wave: usize) -> usize {
    (wave / rows.max(1)).min(v.div_ceil(MIN_SPLIT)).max(1)
}

/// Blocks of the elementwise gradient pass over `n` logits: one float4 per thread when that
/// is fewer, else one wave (each thread then strides over the rest).
fn grad_blocks(n: usize, sm_count: usize) -> usize {
    n.div_ceil(4 * ROW_THREADS as usize)
        .clamp(1, row_wave(sm_count))
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
    pub fn logprobs_backward<T: Storage, D: DevicePtrMut<f32>>(
        &self,
        dhidden: &mut impl DevicePtrMut<T>,
        dweight: Option<&mut D>,
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
        let mut weight_lens = vec![weight.len()];
        weight_lens.extend(dweight.as_ref().map(|d| d.len()));
        check_rows("logprobs_backward weight", &weight_lens, v, c)?;
        scratch.check("logprobs_backward", v)?;
        let dhidden = self.ptr_mut(dhidden);
        // None: a frozen head, whose gradient product is skipped.
        let dweight = dweight.map(|d| self.ptr_mut(d));
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
            let Some(dweight) = dweight else {
                continue;
            };
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

    /// `logprob_rows` at device addresses: `logprob_row_partials` over rows x splits blocks,
    /// then, when a row has several splits, `logprob_row_combine`.
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
        let splits = row_splits(r, v, row_wave(self.sm_count));
        // Held until both kernels are enqueued; the stream runs them in that order.
        let partials = self
            .row_partials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let partials = if splits > 1 {
            if 2 * r * splits > partials.len() {
                anyhow::bail!("logprob_rows: {r} rows x {splits} splits overflow the partials");
            }
            self.ptr(&*partials)
        } else {
            0 // unread: one split finishes its row
        };
        let (v32, r32, s32) = (v as i32, r as i32, splits as i32);
        let f = self.function(kernels::logprobs::LOGPROB_ROW_PARTIALS)?;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&partials)
            .arg(&logp)
            .arg(&lse)
            .arg(&logits)
            .arg(&targets)
            .arg(&v32)
            .arg(&s32);
        // SAFETY: the arguments match the kernel; the callers checked that the logits hold
        // R rows of V and logp, lse and targets R elements, targets below V; with several
        // splits the partials hold 2 R splits floats (checked above).
        unsafe { launch.launch(Self::rows(r * splits)) }.context("logprob_row_partials")?;
        if splits > 1 {
            let f = self.function(kernels::logprobs::LOGPROB_ROW_COMBINE)?;
            let mut launch = self.stream.launch_builder(&f);
            launch
                .arg(&logp)
                .arg(&lse)
                .arg(&partials)
                .arg(&logits)
                .arg(&targets)
                .arg(&v32)
                .arg(&r32)
                .arg(&s32);
            // SAFETY: as above; the partials were written by the kernel before, in order.
            unsafe { launch.launch(Self::elementwise(r)) }.context("logprob_row_combine")?;
        }
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
        let f = self.function(T::kernel(kernels::logprobs::LOGPROB_GRAD_ROWS))?;
        let (v32, n) = (v as i32, (r * v) as i64);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&dlogits)
            .arg(&logits)
            .arg(&targets)
            .arg(&lse)
            .arg(&upstream)
            .arg(&v32)
            .arg(&n);
        // SAFETY: the arguments match the kernel; the callers checked that dlogits and
        // logits hold R rows of V (n = R V) and the others R elements, targets below V.
        let cfg = Self::rows(grad_blocks(r * v, self.sm_count));
        unsafe { launch.launch(cfg) }.context("logprob_grad_rows")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunks_are_multiples_of_64_rows_within_256_mib() {
        for v in [1, 1000, 32_000, 50_257, 128_256, 151_936, 262_144] {
            let chunk = default_chunk_rows(v);
            assert!(chunk.is_multiple_of(64), "V {v}: {chunk}");
            assert!((64..=8192).contains(&chunk), "V {v}: {chunk}");
            assert!(chunk * v * 4 <= 256 << 20, "V {v}: {chunk}");
        }
        assert_eq!(default_chunk_rows(128_256), 512);
        assert_eq!(default_chunk_rows(32_000), 2048);
    }

    /// The split forward pass stays within one wave and the partials, fills at least half
    /// the wave when the row length allows, and gives each split at least MIN_SPLIT logits.
    #[test]
    fn row_splits_fill_one_wave_and_fit_the_partials() {
        for sm in [1, 108, 114, 132, 144] {
            let wave = row_wave(sm);
            for v in [1, 3, 13, 1001, 8192, 8193, 32_003, 100_003, 128_256] {
                for rows in (1..=3 * wave).chain([100_000, 1 << 30]) {
                    let s = row_splits(rows, v, wave);
                    assert!(s >= 1);
                    if s > 1 {
                        assert!(rows * s <= wave, "sm {sm} V {v} rows {rows}: {s}");
                        assert!(2 * rows * s <= partials_len(sm));
                        assert!(v.div_ceil(s) >= MIN_SPLIT / 2, "V {v}: {s} splits");
                    }
                    // Either the wave is at least half full or the row allows no more splits.
                    let max_splits = v.div_ceil(MIN_SPLIT);
                    assert!(
                        2 * rows * s > wave || s == max_splits,
                        "sm {sm} V {v} rows {rows}: {s}"
                    );
                    assert!(s <= max_splits);
                }
            }
        }
        // The default chunk at V = 128 256 on 132 SMs: 512 rows, one block each; the
        // forward's 128-row chunk of before would get 4 splits.
        assert_eq!(row_splits(512, 128_256, row_wave(132)), 1);
        assert_eq!(row_splits(128, 128_256, row_wave(132)), 4);
        assert_eq!(row_splits(1, 128_256, row_wave(132)), 16);
    }

    #[test]
    fn grad_blocks_cover_small_passes_and_cap_at_one_wave() {
        for sm in [1, 132] {
            assert_eq!(grad_blocks(0, sm), 1);
            assert_eq!(grad_blocks(1, sm), 1);
            assert_eq!(grad_blocks(1024, sm), 1);
            assert_eq!(grad_blocks(1025, sm), 2.min(row_wave(sm)));
            assert_eq!(grad_blocks(512 * 128_256, sm), row_wave(sm));
        }
        // Never more blocks than one float4 per thread needs.
        for n in [7, 1000, 4096, 33 * 32_003] {
            let b = grad_blocks(n, 132);
            assert!(b * 1024 >= n.min(row_wave(132) * 1024));
            assert!((b - 1) * 1024 < n);
        }
    }
}
