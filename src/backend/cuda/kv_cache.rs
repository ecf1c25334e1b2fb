//! The KV caches of generation on the device, twin of `cpu::kv_cache`: B slots of Tmax
//! positions, one (B, Tmax, Hkv*D) pair per layer. A slot holds one (prompt, sample)
//! sequence; the K samples of a prompt get copies of its prompt's keys and values at
//! prefill. `SlotPass` says where one pass's rows go.

use super::{DecodeDims, DevBuf, Gpu, Storage};
use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, DeviceSlice};

const STAGE: &str = "for the KV caches of generation";

pub struct SlotCaches<T: Storage> {
    pub(crate) k: Vec<CudaSlice<T>>,
    pub(crate) v: Vec<CudaSlice<T>>,
    pub slots: usize,
    pub t_max: usize,
    pub(crate) kv_dim: usize,
    /// The per-split partials of decode attention (none where one split suffices).
    pub(crate) scores: CudaSlice<f32>,
    pub(crate) dims: DecodeDims,
}

impl<T: Storage> SlotCaches<T> {
    /// Caches of `slots` sequences of up to `t_max` positions for `layers` layers of
    /// attention with head counts and size `dims` (its batch and t_max are set here).
    pub fn new(
        gpu: &Gpu,
        layers: usize,
        slots: usize,
        t_max: usize,
        mut dims: DecodeDims,
    ) -> Result<SlotCaches<T>> {
        dims.batch = slots;
        dims.t_max = t_max;
        let kv_dim = dims.n_kv_head * dims.head_dim;
        let n = slots * t_max * kv_dim;
        let (mut k, mut v) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for _ in 0..layers {
            k.push(gpu.alloc::<T>(n, STAGE)?);
            v.push(gpu.alloc::<T>(n, STAGE)?);
        }
        let scores = gpu.alloc::<f32>(gpu.decode_attention_scratch_len(dims)?, STAGE)?;
        Ok(SlotCaches {
            k,
            v,
            slots,
            t_max,
            kv_dim,
            scores,
            dims,
        })
    }
}

/// One pass over the caches: each cache row to write, copied from a row of the pass, and
/// for a decode step (one row per slot) each slot's length after it.
pub struct SlotPass<'c, T: Storage> {
    pub(crate) caches: &'c mut SlotCaches<T>,
    /// Rows of the pass (packed prompts, or one per slot).
    rows: usize,
    /// Rows of the pass (M) and the cache rows (slot * Tmax + position) they go to (M).
    pub(crate) src: CudaSlice<i32>,
    pub(crate) dst: CudaSlice<i32>,
    /// (B) positions held by each slot after a decode step.
    pub(crate) lens: Option<CudaSlice<i32>>,
    /// (M, Hkv*D) scratch of the copies.
    pub(crate) copies: CudaSlice<T>,
}

impl<'c, T: Storage> SlotPass<'c, T> {
    /// A prefill of packed prompts: prompt p's keys and values go to positions 0..len of
    /// each slot of `targets[p]`.
    pub fn prefill(
        gpu: &Gpu,
        caches: &'c mut SlotCaches<T>,
        prompt_lens: &[usize],
        targets: &[Vec<usize>],
    ) -> Result<SlotPass<'c, T>> {
        if prompt_lens.len() != targets.len() {
            bail!("prefill: one list of slots per prompt");
        }
        let (mut src, mut dst) = (vec![], vec![]);
        let mut base = 0;
        for (&len, slots) in prompt_lens.iter().zip(targets) {
            if len > caches.t_max {
                bail!(
                    "prefill: a prompt of {len} tokens does not fit slots of {}",
                    caches.t_max
                );
            }
            for &slot in slots {
                if slot >= caches.slots {
                    bail!("prefill: slot {slot} of {}", caches.slots);
                }
                for t in 0..len {
                    src.push((base + t) as i32);
                    dst.push((slot * caches.t_max + t) as i32);
                }
            }
            base += len;
        }
        Self::with_rows(gpu, caches, base, &src, &dst, None)
    }

    /// A decode step: row b is slot b's token at position `positions[b]`.
    pub fn decode(
        gpu: &Gpu,
        caches: &'c mut SlotCaches<T>,
        positions: &[usize],
    ) -> Result<SlotPass<'c, T>> {
        if positions.len() != caches.slots {
            bail!("decode: one position per slot");
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= caches.t_max) {
            bail!("decode: position {p} beyond the caches' {}", caches.t_max);
        }
        let src: Vec<i32> = (0..positions.len() as i32).collect();
        let dst: Vec<i32> = positions
            .iter()
            .enumerate()
            .map(|(s, &p)| (s * caches.t_max + p) as i32)
            .collect();
        let lens: Vec<i32> = positions.iter().map(|&p| p as i32 + 1).collect();
        let rows = positions.len();
        Self::with_rows(gpu, caches, rows, &src, &dst, Some(&lens))
    }

    /// Writes the pass's keys and values k, v: (N, Hkv*D) into `layer` of the caches.
    pub fn fill(&mut self, gpu: &Gpu, layer: usize, k: &DevBuf<T>, v: &DevBuf<T>) -> Result<()> {
        let kvd = self.caches.kv_dim;
        // The gather kernel trusts its indices: the pass must have the rows they index.
        if k.len() != self.rows * kvd || v.len() != self.rows * kvd {
            bail!(
                "cache fill: keys of {} and values of {} elements for {} rows of {kvd}",
                k.len(),
                v.len(),
                self.rows
            );
        }
        if layer >= self.caches.k.len() {
            bail!("cache fill: layer {layer} of {}", self.caches.k.len());
        }
        let c = &mut *self.caches;
        gpu.gather_rows(&mut self.copies, k, &self.src, kvd)?;
        gpu.scatter_rows(&mut c.k[layer], &self.copies, &self.dst, kvd)?;
        gpu.gather_rows(&mut self.copies, v, &self.src, kvd)?;
        gpu.scatter_rows(&mut c.v[layer], &self.copies, &self.dst, kvd)
    }

    fn with_rows(
        gpu: &Gpu,
        caches: &'c mut SlotCaches<T>,
        rows: usize,
        src: &[i32],
        dst: &[i32],
        lens: Option<&[i32]>,
    ) -> Result<SlotPass<'c, T>> {
        let lens = match lens {
            Some(l) => Some(gpu.upload(l, STAGE)?),
            None => None,
        };
        Ok(SlotPass {
            rows,
            src: gpu.upload(src, STAGE)?,
            dst: gpu.upload(dst, STAGE)?,
            lens,
            copies: gpu.alloc::<T>(src.len() * caches.kv_dim, STAGE)?,
            caches,
        })
    }
}
