//! Fused causal attention over a packed training batch on the device, forward and backward
//! (kernels/attention.cu, FlashAttention-2 style). Twins of `cpu::attention::attention_forward`
//! (whole sequences, each from position 0) and `cpu::attention::attention_backward`.
//!
//! Shapes: q, out, dq, dout: (N, H, D); k, v, dk, dv: (N, Hkv, D); lse: (N, H) f32, the
//! natural log of each row's softmax normaliser. N is the sum of the sequence lengths.

use super::{check_lens, check_rows, Gpu, Storage};
use crate::backend::kernels::{self, Kernel};
use crate::backend::settings::AttentionDims;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

/// Sequence boundaries of a packed batch on the device: `starts` (S + 1) i32 prefix offsets
/// (starts[0] = 0, non-decreasing, starts[S] = N), and the longest sequence, which must be
/// at least every starts[s + 1] - starts[s] (rows of a longer one would not be computed).
/// The kernels clamp the offsets to 0..=N, so wrong ones cannot reach outside the buffers.
pub struct PackedSeqs<'a> {
    pub starts: &'a CudaSlice<i32>,
    pub max_len: usize,
}

/// The f32 buffers the backward needs beyond its outputs: delta (N, H) = rowsum(dout * out)
/// and dq's accumulator (N, H, D). Kept by `Gpu`, grown on demand by `attention_backward`.
pub(crate) struct AttentionScratch {
    delta: CudaSlice<f32>,
    dq: CudaSlice<f32>,
}

impl AttentionScratch {
    /// Scratch for batches of up to `n` rows.
    pub(crate) fn new(gpu: &Gpu, n: usize, dims: AttentionDims) -> Result<AttentionScratch> {
        let (delta, dq) = scratch_lens(n, dims);
        let alloc =
            |len: usize| gpu.alloc::<f32>(len.max(1), "for the attention backward's scratch");
        Ok(AttentionScratch {
            delta: alloc(delta)?,
            dq: alloc(dq)?,
        })
    }

    fn reserve(&mut self, gpu: &Gpu, n: usize, dims: AttentionDims) -> Result<()> {
        let (delta, dq) = scratch_lens(n, dims);
        if self.delta.len() < delta || self.dq.len() < dq {
            *self = AttentionScratch::new(gpu, n, dims)?;
        }
        Ok(())
    }
}

fn scratch_lens(n: usize, dims: AttentionDims) -> (usize, usize) {
    (n * dims.n_head, n * dims.n_head * dims.head_dim)
}

/// Threads per block of the tile kernels (attn::THREADS).
const THREADS: u32 = 128;
/// Query rows and keys per tile of the forward (attn::FWD_BQ, FWD_BK) and the backward.
const FWD_BQ: usize = 64;
const FWD_BK: usize = 32;
const BWD_BQ: usize = 32;
const BWD_BK: usize = 32;
/// The head dims kernels/attention.cu instantiates.
const HEAD_DIMS: [usize; 7] = [4, 8, 16, 32, 64, 96, 128];
/// The head dims with a bf16 forward and backward on tensor cores (attention_forward_tc,
/// attention_backward_tc), the forward's key tile (attn::FTC_BK).
const TC_HEAD_DIMS: [usize; 2] = [64, 128];
const FTC_BK: usize = 64;
/// The tensor-core backward's key and query tiles (attn::BTC_BK, BTC_BQ).
const BTC_BK: usize = 64;
const BTC_BQ: usize = 64;
/// Dynamic shared memory a block gets without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// Dynamic shared memory of the forward's blocks, as attn::fwd_smem_floats lays it out:
/// Q (BQ, D + 1), K and V (BK, D + 1), P (BQ, BK + 1), f32.
fn forward_smem(d: usize) -> usize {
    4 * (FWD_BQ * (d + 1) + 2 * FWD_BK * (d + 1) + FWD_BQ * (FWD_BK + 1))
}

/// As `forward_smem` for the tensor-core forward (attn::FwdTcLayout): two stages of K and V
/// (BK, D + 8) in bf16 (Q borrows one before the loop; S, P and O stay in registers).
fn forward_tc_smem(d: usize) -> usize {
    2 * (2 * 2 * FTC_BK * (d + 8))
}

/// As `forward_smem` for the backward (attn::bwd_smem_floats): Q and dO (BQ, D + 1), K and V
/// (BK, D + 1), P and dS (BQ, BK + 1), lse and delta (BQ).
fn backward_smem(d: usize) -> usize {
    4 * (2 * BWD_BQ * (d + 1) + 2 * BWD_BK * (d + 1) + 2 * BWD_BQ * (BWD_BK + 1) + 2 * BWD_BQ)
}

/// As `forward_smem` for the tensor-core backward (attn::BwdTcLayout): K and V (BK, D + 8),
/// two stages of Q and dO (BQ, D + 8), dS^T (BK, BQ + 8) in bf16; two stages of lse and
/// delta (BQ) in f32.
fn backward_tc_smem(d: usize) -> usize {
    2 * (2 * BTC_BK * (d + 8) + 4 * BTC_BQ * (d + 8) + BTC_BK * (BTC_BQ + 8)) + 4 * 4 * BTC_BQ
}

/// Whether the bf16 kernels on tensor cores serve storage T at head dim d.
fn tensor_cores<T: Storage>(d: usize) -> bool {
    T::SUFFIX == "bf16" && TC_HEAD_DIMS.contains(&d)
}

/// The grid of a tile kernel: (tiles of `tile` rows covering the longest sequence) x
/// sequences blocks along x, `heads` along y; the kernel splits x as (tile, sequence).
fn tile_launch(
    max_len: usize,
    tile: usize,
    n_seqs: usize,
    heads: usize,
    smem: usize,
) -> Result<(LaunchConfig, i32)> {
    let tiles = max_len.div_ceil(tile);
    let blocks = tiles * n_seqs;
    if blocks > i32::MAX as usize || heads > 65535 {
        anyhow::bail!(
            "attention: {n_seqs} sequences of up to {max_len} rows and {heads} heads do not fit a launch"
        );
    }
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, heads as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    Ok((cfg, tiles as i32))
}

/// The checked shape of a call: N rows, S sequences.
struct Shape {
    n: usize,
    n_seqs: usize,
}

fn check_shape(
    op: &str,
    dims: AttentionDims,
    q_lens: &[usize],
    kv_lens: &[usize],
    lse_len: usize,
    seqs: &PackedSeqs,
) -> Result<Shape> {
    let AttentionDims {
        n_head,
        n_kv_head,
        head_dim: d,
    } = dims;
    if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        anyhow::bail!("{op}: {n_head} heads do not group over {n_kv_head}");
    }
    if !HEAD_DIMS.contains(&d) {
        anyhow::bail!("{op}: head dim {d} has no kernel (supported: {HEAD_DIMS:?})");
    }
    let n = q_lens[0] / (n_head * d);
    check_rows(op, q_lens, n, n_head * d)?;
    check_rows(op, kv_lens, n, n_kv_head * d)?;
    check_lens(&format!("{op} lse"), &[lse_len], n * n_head)?;
    let n_seqs = seqs.starts.len().checked_sub(1).with_context(|| {
        format!("{op}: sequence starts need S + 1 offsets, got an empty buffer")
    })?;
    if n > 0 && (n_seqs == 0 || seqs.max_len == 0) {
        anyhow::bail!("{op}: {n} rows but no sequence holds them");
    }
    if n > 0 && seqs.max_len > n {
        anyhow::bail!(
            "{op}: a sequence of {} rows in a batch of {n}",
            seqs.max_len
        );
    }
    if n_seqs > i32::MAX as usize {
        anyhow::bail!("{op}: {n_seqs} sequences do not fit a launch");
    }
    Ok(Shape { n, n_seqs })
}

/// The entry point of tile kernel `name` (e.g. "attention_forward_tc") for head dim d and
/// storage T.
fn attention_entry<T: Storage>(name: &str, d: usize) -> Result<Kernel> {
    let entry = format!("{name}_d{d}_{}", T::SUFFIX);
    kernels::find(kernels::attention::ENTRIES, "attention", &entry)
}

impl Gpu {
    /// The tile kernel `name` for head dim d and storage T, allowed `smem` bytes of dynamic
    /// shared memory.
    fn attention_kernel<T: Storage>(
        &self,
        name: &str,
        d: usize,
        smem: usize,
    ) -> Result<CudaFunction> {
        let f = self.function(attention_entry::<T>(name, d)?)?;
        if smem > DEFAULT_SMEM {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .with_context(|| format!("{name}: {smem} bytes of shared memory"))?;
        }
        Ok(f)
    }

    /// out: (N, H, D) and lse: (N, H) assigned, from q: (N, H, D), k, v: (N, Hkv, D), causal
    /// within each sequence of `seqs`. Twin of `cpu::attention::attention_forward` with each
    /// sequence's rows at positions 0, 1, ... over its own keys.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        lse: &mut impl DevicePtrMut<f32>,
        q: &impl DevicePtr<T>,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        seqs: &PackedSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        let Shape { n, n_seqs } = check_shape(
            "attention_forward",
            dims,
            &[q.len(), out.len()],
            &[k.len(), v.len()],
            lse.len(),
            seqs,
        )?;
        if n == 0 {
            return Ok(());
        }
        let d = dims.head_dim;
        // bf16 at the common head dims goes on tensor cores; the scalar kernel is the rest.
        let (name, smem) = if tensor_cores::<T>(d) {
            ("attention_forward_tc", forward_tc_smem(d))
        } else {
            ("attention_forward", forward_smem(d))
        };
        let f = self.attention_kernel::<T>(name, d, smem)?;
        let (cfg, q_tiles) = tile_launch(seqs.max_len, FWD_BQ, n_seqs, dims.n_head, smem)?;
        let (o, l) = (self.ptr_mut(out), self.ptr_mut(lse));
        let (qp, kp, vp, sp) = (self.ptr(q), self.ptr(k), self.ptr(v), self.ptr(seqs.starts));
        let ints = [n_seqs, n, dims.n_head, dims.n_kv_head].map(|x| x as i32);
        let scale = 1.0 / (d as f32).sqrt();
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&o)
            .arg(&l)
            .arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&sp)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&q_tiles)
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature; the buffers hold N rows of the
        // checked widths, and the kernel clamps the sequence offsets to 0..=N.
        unsafe { launch.launch(cfg) }.context("attention_forward")?;
        Ok(())
    }

    /// dq: (N, H, D), dk, dv: (N, Hkv, D) assigned, from dout, q, out: (N, H, D), k, v:
    /// (N, Hkv, D) and lse: (N, H) of `attention_forward`. Twin of
    /// `cpu::attention::attention_backward`. dk and dv are deterministic; dq is summed over
    /// key tiles by f32 atomics, so its last bits may vary from run to run.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: Storage>(
        &self,
        dq: &mut impl DevicePtrMut<T>,
        dk: &mut impl DevicePtrMut<T>,
        dv: &mut impl DevicePtrMut<T>,
        dout: &impl DevicePtr<T>,
        q: &impl DevicePtr<T>,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        out: &impl DevicePtr<T>,
        lse: &impl DevicePtr<f32>,
        seqs: &PackedSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        let Shape { n, n_seqs } = check_shape(
            "attention_backward",
            dims,
            &[q.len(), dq.len(), dout.len(), out.len()],
            &[k.len(), v.len(), dk.len(), dv.len()],
            lse.len(),
            seqs,
        )?;
        if n == 0 {
            return Ok(());
        }
        let AttentionDims {
            n_head,
            n_kv_head,
            head_dim: d,
        } = dims;
        let mut workspace = self.attention_scratch.lock().map_err(super::poisoned)?;
        if workspace.is_none() {
            *workspace = Some(AttentionScratch::new(self, n, dims)?);
        }
        let scratch = workspace.as_mut().context("the attention workspace")?;
        scratch.reserve(self, n, dims)?;
        let (delta_len, dq_len) = scratch_lens(n, dims);
        let mut delta = scratch.delta.slice_mut(0..delta_len);
        let mut dq_acc = scratch.dq.slice_mut(0..dq_len);
        self.stream
            .memset_zeros(&mut dq_acc)
            .context("attention_backward: zeroing dq")?;
        let (delta_p, dq_acc_p) = (self.ptr_mut(&mut delta), self.ptr_mut(&mut dq_acc));
        let (dout_p, out_p) = (self.ptr(dout), self.ptr(out));

        // delta = rowsum(dout * out): one warp per (row, head).
        let f = self.function(T::kernel(kernels::attention::ATTENTION_DELTA))?;
        let (rows, d32) = (delta_len as i64, d as i32);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&delta_p)
            .arg(&dout_p)
            .arg(&out_p)
            .arg(&rows)
            .arg(&d32);
        // SAFETY: delta holds N x H floats, dout and out N x H rows of D (checked above).
        unsafe { launch.launch(Self::elementwise(delta_len * 32)) }
            .context("attention_backward: delta")?;

        // bf16 at the common head dims goes on tensor cores (key tiles of 64); the scalar
        // kernel (key tiles of 32) is the rest. Same arguments.
        let (name, smem, key_tile) = if tensor_cores::<T>(d) {
            ("attention_backward_tc", backward_tc_smem(d), BTC_BK)
        } else {
            ("attention_backward", backward_smem(d), BWD_BK)
        };
        let f = self.attention_kernel::<T>(name, d, smem)?;
        let (cfg, _) = tile_launch(seqs.max_len, key_tile, n_seqs, n_kv_head, smem)?;
        let (dk_p, dv_p) = (self.ptr_mut(dk), self.ptr_mut(dv));
        let (qp, kp, vp) = (self.ptr(q), self.ptr(k), self.ptr(v));
        let (lse_p, sp) = (self.ptr(lse), self.ptr(seqs.starts));
        let ints = [n_seqs, n, n_head, n_kv_head].map(|x| x as i32);
        let scale = 1.0 / (d as f32).sqrt();
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&dq_acc_p)
            .arg(&dk_p)
            .arg(&dv_p)
            .arg(&dout_p)
            .arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&lse_p)
            .arg(&delta_p)
            .arg(&sp)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&scale);
        // SAFETY: the arguments match the kernel's signature; the buffers hold N rows of the
        // checked widths, the scratch views N x H and N x H x D floats, and the kernel clamps
        // the sequence offsets to 0..=N.
        unsafe { launch.launch(cfg) }.context(name)?;

        let f = self.function(T::kernel(kernels::attention::ATTENTION_DQ_STORE))?;
        let dq_p = self.ptr_mut(dq);
        let n64 = dq_len as i64;
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(&dq_p).arg(&dq_acc_p).arg(&n64);
        // SAFETY: dq and its accumulator hold N x H x D elements.
        unsafe { launch.launch(Self::elementwise(dq_len)) }.context("attention_backward: dq")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_grid_covers_the_longest_sequence_once_per_sequence() {
        for (max_len, tile, n_seqs, tiles) in [(1, 64, 1, 1), (64, 64, 3, 1), (65, 64, 3, 2)] {
            let (cfg, t) = tile_launch(max_len, tile, n_seqs, 8, 0).unwrap();
            assert_eq!(t, tiles);
            assert_eq!(cfg.grid_dim, ((tiles as usize * n_seqs) as u32, 8, 1));
            assert_eq!(cfg.block_dim, (THREADS, 1, 1));
        }
        assert!(tile_launch(usize::MAX / 2, 1, 4, 1, 0).is_err());
    }

    #[test]
    fn tensor_cores_serve_bf16_at_head_dims_64_and_128_only() {
        for d in HEAD_DIMS {
            assert_eq!(tensor_cores::<half::bf16>(d), d == 64 || d == 128, "d {d}");
            assert!(!tensor_cores::<f32>(d), "f32 d {d}");
        }
    }

    /// Every tile kernel the launchers can ask for, at every head dim and storage type, is
    /// an entry point of the build (the constants come from the PTX, or from
    /// kernels/entries.txt, which the build checks against it).
    #[test]
    fn every_attention_kernel_the_launchers_name_exists() {
        fn names<T: Storage>(d: usize) -> [&'static str; 2] {
            if tensor_cores::<T>(d) {
                ["attention_forward_tc", "attention_backward_tc"]
            } else {
                ["attention_forward", "attention_backward"]
            }
        }
        for d in HEAD_DIMS {
            for name in names::<f32>(d) {
                attention_entry::<f32>(name, d).unwrap();
            }
            for name in names::<half::bf16>(d) {
                attention_entry::<half::bf16>(name, d).unwrap();
            }
        }
        let err = attention_entry::<f32>("attention_forward_tc", 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no kernel attention_forward_tc_d64_f32 in kernels/attention.cu"
        );
    }

    #[test]
    fn shared_memory_fits_an_sm80_block() {
        // sm_80 allows 163 KB of dynamic shared memory per block, sm_90 227 KB.
        for d in HEAD_DIMS {
            assert!(forward_smem(d) <= 163 * 1024, "forward d {d}");
            assert!(backward_smem(d) <= 163 * 1024, "backward d {d}");
        }
        for d in TC_HEAD_DIMS {
            assert!(HEAD_DIMS.contains(&d));
            assert!(
                forward_tc_smem(d) <= 163 * 1024,
                "tensor-core forward d {d}"
            );
            assert!(
                backward_tc_smem(d) <= 163 * 1024,
                "tensor-core backward d {d}"
            );
        }
        // Two blocks of the tensor-core backward fit an H100's 228 KB per SM (1 KB of it
        // reserved per block) at D = 128: 112 KB each.
        assert_eq!(backward_tc_smem(128), 114_688);
        assert!(2 * (backward_tc_smem(128) + 1024) <= 228 * 1024);
        assert_eq!(backward_tc_smem(64), 2 * (6 * 64 * 72 + 64 * 72) + 1024);
        // The tensor-core forward: 68 KB at D = 128, so three blocks fit an H100 SM (and two
        // an A100's 164 KB); 36 KB at D = 64.
        assert_eq!(forward_tc_smem(128), 69_632);
        assert!(3 * (forward_tc_smem(128) + 1024) <= 228 * 1024);
        assert!(2 * (forward_tc_smem(128) + 1024) <= 164 * 1024);
        assert_eq!(forward_tc_smem(64), 36_864);
        // The layout of kernels/attention.cu at D = 128: 74 496 and 74 752 bytes.
        assert_eq!(forward_smem(128), 4 * (64 * 129 + 64 * 129 + 64 * 33));
        assert_eq!(backward_smem(128), 74_752);
    }
}
