//! Launcher of kernels/decode_attention.cu (flash-decoding: a split kernel over (split of
//! the cache's positions, kv head, sequence), then a combine kernel when there is more than
//! one split). CPU twin: `cpu::attention::attention_forward` with one row per sequence at
//! position len - 1.

use super::{check_lens, Gpu, Storage};
use crate::backend::kernels;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// The shape of a decode-attention call: B sequences, one query row each, over caches of
/// up to t_max positions.
#[derive(Clone, Copy, Debug)]
pub struct DecodeDims {
    pub batch: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub t_max: usize,
}

/// Threads per block of both kernels (dec::THREADS), in warps.
const THREADS: u32 = 128;
const WARPS: usize = THREADS as usize / 32;
/// Elements of D per lane (dec::E).
const LANE_ELEMS: usize = 8;
/// The largest head dim the kernels take (a key's lanes are at most a warp).
pub const DECODE_MAX_HEAD_DIM: usize = 32 * LANE_ELEMS;
/// A split takes at least this many positions, so that its fixed costs (the q loads, the
/// merge of its warps, its partial's write and read back) stay small beside its K/V reads.
const MIN_SPLIT: usize = 128;
/// At most this many splits (dec::MAX_SPLITS: the combine's shared weights).
const MAX_SPLITS: usize = 256;
/// Blocks aimed at per SM: the split kernel keeps 2 (8 query heads a block) to 4 or more
/// (fewer) blocks resident per SM, each with 8 to 16 bytes of K/V loads in flight per lane.
const BLOCKS_PER_SM: usize = 4;

/// How a call is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// Query heads per block (1, 2, 4 or 8): the group size rounded up to a power of two,
    /// at most 8.
    gm: usize,
    /// Blocks per kv head along its group: ceil(group / gm).
    chunks: usize,
    /// Splits of the positions 0..t_max, split_len each (the last one shorter).
    splits: usize,
    split_len: usize,
}

impl Plan {
    fn new(dims: DecodeDims, sms: usize) -> Plan {
        let group = (dims.n_head / dims.n_kv_head.max(1)).max(1);
        let gm = group.next_power_of_two().min(8);
        let chunks = group.div_ceil(gm);
        let base = (dims.batch * dims.n_kv_head * chunks).max(1);
        let want = (BLOCKS_PER_SM * sms.max(1)).div_ceil(base);
        let splits = want
            .min(dims.t_max.div_ceil(MIN_SPLIT))
            .clamp(1, MAX_SPLITS);
        let split_len = dims.t_max.div_ceil(splits).max(1);
        Plan {
            gm,
            chunks,
            splits: dims.t_max.div_ceil(split_len).max(1),
            split_len,
        }
    }

    /// The scratch the split kernel writes for the combine, in floats: (B, H, splits)
    /// maxima, as many sums, (B, H, splits, D) unnormalised outputs; none with one split
    /// (the split kernel then writes out and lse itself).
    fn scratch_len(&self, dims: DecodeDims) -> usize {
        if self.splits == 1 {
            0
        } else {
            dims.batch * dims.n_head * self.splits * (dims.head_dim + 2)
        }
    }

    /// The split kernel's dynamic shared memory: q [gm][lpk * 8], the warps' outputs
    /// [WARPS][gm][D], maxima and sums [WARPS][gm] each, f32.
    fn shared_bytes(&self, d: usize) -> usize {
        let lpk = d.div_ceil(LANE_ELEMS).next_power_of_two();
        4 * (self.gm * lpk * LANE_ELEMS + WARPS * self.gm * (d + 2))
    }
}

impl Gpu {
    fn sm_count(&self) -> Result<usize> {
        let n = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .context("decode_attention: the multiprocessor count")?;
        Ok(n.max(1) as usize)
    }

    /// The floats of scratch `decode_attention` needs for `dims` on this device (0 where
    /// one split covers the cache: short caches, or enough sequences and heads to fill the
    /// GPU without splitting).
    pub fn decode_attention_scratch_len(&self, dims: DecodeDims) -> Result<usize> {
        Ok(Plan::new(dims, self.sm_count()?).scratch_len(dims))
    }

    /// out: (B, H, D); lse: (B, H); scratch: at least `decode_attention_scratch_len(dims)`
    /// f32 (per-split partials; its contents on entry do not matter); q: (B, H, D); k, v:
    /// (B, Tmax, Hkv, D); lens: (B), each in 1..=Tmax (checked by the caller; the kernels
    /// clamp to Tmax). D at most `DECODE_MAX_HEAD_DIM`. Deterministic: no atomics.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention<T: Storage>(
        &self,
        out: &mut impl DevicePtrMut<T>,
        lse: &mut impl DevicePtrMut<f32>,
        scratch: &mut impl DevicePtrMut<f32>,
        q: &impl DevicePtr<T>,
        k: &impl DevicePtr<T>,
        v: &impl DevicePtr<T>,
        lens: &impl DevicePtr<i32>,
        dims: DecodeDims,
    ) -> Result<()> {
        let DecodeDims {
            batch,
            n_head,
            n_kv_head,
            head_dim: d,
            t_max,
        } = dims;
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) || d == 0 {
            anyhow::bail!("decode_attention: {n_head} heads do not group over {n_kv_head}");
        }
        if d > DECODE_MAX_HEAD_DIM {
            anyhow::bail!(
                "decode_attention: head dim {d} is over the kernel's {DECODE_MAX_HEAD_DIM}"
            );
        }
        check_lens(
            "decode_attention q",
            &[q.len(), out.len()],
            batch * n_head * d,
        )?;
        check_lens("decode_attention lse", &[lse.len()], batch * n_head)?;
        check_lens(
            "decode_attention cache",
            &[k.len(), v.len()],
            batch * t_max * n_kv_head * d,
        )?;
        check_lens("decode_attention lens", &[lens.len()], batch)?;
        if batch == 0 || n_head == 0 {
            return Ok(());
        }
        if t_max == 0 || t_max > i32::MAX as usize {
            anyhow::bail!("decode_attention: caches of {t_max} positions");
        }
        let plan = Plan::new(dims, self.sm_count()?);
        let need = plan.scratch_len(dims);
        if scratch.len() < need {
            anyhow::bail!(
                "decode_attention: a scratch of {} floats, expected {need} ({batch} x {n_head} x {} splits x ({d} + 2))",
                scratch.len(),
                plan.splits
            );
        }
        let y = n_kv_head * plan.chunks;
        if batch > 65535 || y > 65535 || n_head > i32::MAX as usize {
            anyhow::bail!(
                "decode_attention: {batch} sequences of {n_head} heads do not fit a launch"
            );
        }
        let (o, l, s) = (self.ptr_mut(out), self.ptr_mut(lse), self.ptr_mut(scratch));
        let (qp, kp, vp, lp) = (self.ptr(q), self.ptr(k), self.ptr(v), self.ptr(lens));
        // 16-byte loads where every key row starts on 16 bytes.
        let aligned =
            kp % 16 == 0 && vp % 16 == 0 && (d * std::mem::size_of::<T>()).is_multiple_of(16);
        let load = if aligned { "vec" } else { "scalar" };
        // The same names as the test `every_decode_split_kernel_is_in_the_kernels` checks.
        let name = format!("decode_attention_split_g{}_{load}", plan.gm);
        let pair =
            kernels::find_typed(kernels::decode_attention::TYPED, "decode_attention", &name)?;
        let f = self.function(T::kernel(pair))?;
        let ints = [batch, n_head, n_kv_head, d, t_max].map(|x| x as i32);
        let (split_len, splits) = (plan.split_len as i32, plan.splits as i32);
        let scale = 1.0 / (d as f32).sqrt();
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&o)
            .arg(&l)
            .arg(&s)
            .arg(&qp)
            .arg(&kp)
            .arg(&vp)
            .arg(&lp)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&ints[4])
            .arg(&scale)
            .arg(&split_len)
            .arg(&splits);
        let cfg = LaunchConfig {
            grid_dim: (plan.splits as u32, y as u32, batch as u32),
            block_dim: (THREADS, 1, 1),
            // At most 4 * (8 * 256 + 4 * 8 * 258) = 41 KiB: under the default 48 KiB.
            shared_mem_bytes: plan.shared_bytes(d) as u32,
        };
        // SAFETY: the arguments match the kernel, the buffers have the checked sizes, the
        // scratch holds the plan's partials.
        unsafe { launch.launch(cfg) }.context("decode_attention")?;
        if plan.splits == 1 {
            return Ok(());
        }
        let f = self.function(T::kernel(
            kernels::decode_attention::DECODE_ATTENTION_COMBINE,
        ))?;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&o)
            .arg(&l)
            .arg(&s)
            .arg(&lp)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[3])
            .arg(&ints[4])
            .arg(&split_len)
            .arg(&splits);
        let cfg = LaunchConfig {
            grid_dim: (n_head as u32, batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; the split kernel ran first on the same stream.
        unsafe { launch.launch(cfg) }.context("decode_attention combine")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(batch: usize, n_head: usize, n_kv_head: usize, d: usize, t_max: usize) -> DecodeDims {
        DecodeDims {
            batch,
            n_head,
            n_kv_head,
            head_dim: d,
            t_max,
        }
    }

    /// Every split kernel the launcher can name is in the PTX (the generic launcher check
    /// in backend::kernels skips names built from variables).
    #[test]
    fn every_decode_split_kernel_is_in_the_kernels() {
        use crate::backend::kernels::{ALL, COMPILED};
        if !COMPILED {
            eprintln!("skipped: built without nvcc");
            return;
        }
        let (_, ptx) = ALL.iter().find(|(n, _)| *n == "decode_attention").unwrap();
        let entries: Vec<&str> = ptx
            .lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('('))
            .collect();
        for gm in [1, 2, 4, 8] {
            for load in ["vec", "scalar"] {
                for suffix in ["f32", "bf16"] {
                    let name = format!("decode_attention_split_g{gm}_{load}_{suffix}");
                    assert!(
                        entries.contains(&name.as_str()),
                        "{name} not in {entries:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn decode_plans_cover_the_cache_and_fill_the_gpu() {
        for sms in [1, 108, 132] {
            for batch in [1, 3, 16, 64, 256] {
                for (h, hkv) in [(4, 4), (8, 4), (8, 2), (8, 1), (14, 2), (16, 1), (32, 8)] {
                    for t_max in [1, 5, 127, 128, 129, 1200, 4096, 100_000] {
                        let dm = dims(batch, h, hkv, 128, t_max);
                        let p = Plan::new(dm, sms);
                        let what = format!("{dm:?} on {sms} SMs: {p:?}");
                        assert!(p.gm.is_power_of_two() && p.gm <= 8, "{what}");
                        assert!(p.gm * p.chunks >= h / hkv, "{what}");
                        assert!(p.gm * (p.chunks - 1) < h / hkv, "{what}");
                        // The splits cover 0..t_max, none of them empty.
                        assert!(p.splits * p.split_len >= t_max, "{what}");
                        assert!((p.splits - 1) * p.split_len < t_max, "{what}");
                        assert!((1..=MAX_SPLITS).contains(&p.splits), "{what}");
                        if p.splits > 1 {
                            assert!(p.split_len >= MIN_SPLIT / 2, "{what}");
                        }
                        // Splitting only where the grid would not fill the GPU anyway.
                        let blocks = batch * hkv * p.chunks * p.splits;
                        if p.splits > 1 {
                            assert!(
                                blocks <= BLOCKS_PER_SM * sms + batch * hkv * p.chunks,
                                "{what}"
                            );
                        }
                        assert!(p.shared_bytes(256) <= 48 * 1024, "{what}");
                    }
                }
            }
        }
        // A long cache and one sequence: many splits; a short one: one split, no scratch.
        let long = dims(1, 8, 2, 128, 1200);
        let p = Plan::new(long, 132);
        assert!(p.splits >= 8, "{p:?}");
        assert_eq!(p.scratch_len(long), 8 * p.splits * 130);
        let short = dims(16, 8, 2, 128, 64);
        assert_eq!(Plan::new(short, 132).splits, 1);
        assert_eq!(Plan::new(short, 132).scratch_len(short), 0);
    }
}
