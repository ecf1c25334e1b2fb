//! Generation on the device, twin of `model::forward` with KV caches: a prefill over packed
//! prompts (fused attention over each whole prompt) that writes the prompts' keys and
//! values into cache slots, and decode steps of one row per slot over the caches.
//!
//! The cache of each layer is (B, Tmax, Hkv, D): B slots of Tmax positions. A slot holds
//! one (prompt, sample) sequence; the K samples of a prompt get copies of its prompt's
//! keys and values at prefill.

use super::{GpuModel, Storage};
use crate::backend::cuda::{DecodeDims, Gpu, PackedSeqs};
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;

const PREFILL: &str = "in the prefill of a generation batch";
const DECODE: &str = "in a decode step";

/// What a packed forward hands each layer's keys (after rope) and values to: (layer, k, v).
pub(crate) type KvSink<'a, T> = dyn FnMut(usize, &CudaSlice<T>, &CudaSlice<T>) -> Result<()> + 'a;

/// The KV caches of B slots of Tmax positions, one (B, Tmax, Hkv*D) pair per layer.
pub struct SlotCaches<T: Storage> {
    k: Vec<CudaSlice<T>>,
    v: Vec<CudaSlice<T>>,
    pub slots: usize,
    pub t_max: usize,
}

impl<T: Storage> GpuModel<T> {
    pub fn slot_caches(&self, slots: usize, t_max: usize) -> Result<SlotCaches<T>> {
        let n = slots * t_max * self.config.kv_dim();
        let stage = "for the KV caches of generation";
        let layers = self.layout.layers.len();
        let (mut k, mut v) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for _ in 0..layers {
            k.push(self.gpu.alloc::<T>(n, stage)?);
            v.push(self.gpu.alloc::<T>(n, stage)?);
        }
        Ok(SlotCaches { k, v, slots, t_max })
    }

    /// Runs the prompts, packed, and copies prompt p's keys and values into each slot of
    /// `targets[p]` (positions 0..len). Returns the logits of each prompt's last row: (P, V)
    /// f32, on the device.
    pub fn prefill(
        &self,
        prompts: &[&[u32]],
        targets: &[Vec<usize>],
        caches: &mut SlotCaches<T>,
    ) -> Result<CudaSlice<f32>> {
        let gpu: &Gpu = &self.gpu;
        let kvd = self.config.kv_dim();
        if prompts.len() != targets.len() {
            bail!("prefill: one list of slots per prompt");
        }
        // Cache rows to fill: (source row of the packed prompts, slot * Tmax + position).
        let (mut src, mut dst) = (vec![], vec![]);
        let mut base = 0;
        for (p, slots) in prompts.iter().zip(targets) {
            if p.len() > caches.t_max {
                bail!(
                    "prefill: a prompt of {} tokens does not fit slots of {}",
                    p.len(),
                    caches.t_max
                );
            }
            for &slot in slots {
                if slot >= caches.slots {
                    bail!("prefill: slot {slot} of {}", caches.slots);
                }
                for t in 0..p.len() {
                    src.push((base + t) as i32);
                    dst.push((slot * caches.t_max + t) as i32);
                }
            }
            base += p.len();
        }
        let (src_dev, dst_dev) = (gpu.stream.clone_htod(&src)?, gpu.stream.clone_htod(&dst)?);
        let mut copies = gpu.alloc::<T>(src.len() * kvd, PREFILL)?;
        // Each prompt's keys and values go to every slot that continues it.
        let (x, starts) = self.packed_forward(prompts, PREFILL, &mut |l, k, v| {
            gpu.gather_rows(&mut copies, k, &src_dev, kvd)?;
            gpu.scatter_rows(&mut caches.k[l], &copies, &dst_dev, kvd)?;
            gpu.gather_rows(&mut copies, v, &src_dev, kvd)?;
            gpu.scatter_rows(&mut caches.v[l], &copies, &dst_dev, kvd)
        })?;
        // The last row of each prompt: final norm and LM head.
        let last: Vec<i32> = starts[1..].iter().map(|&s| s - 1).collect();
        let last_dev = gpu.stream.clone_htod(&last)?;
        self.head_logits(&x, &last_dev, PREFILL)
    }

    /// The decoder layers over fresh whole sequences, packed: returns the residual stream
    /// leaving the last layer, (N, C), and the sequences' row offsets (S + 1). `kv(layer, k,
    /// v)` sees each layer's keys (after rope) and values, (N, Hkv*D) each.
    pub(crate) fn packed_forward(
        &self,
        seqs: &[&[u32]],
        stage: &str,
        kv: &mut KvSink<T>,
    ) -> Result<(CudaSlice<T>, Vec<i32>)> {
        let gpu: &Gpu = &self.gpu;
        let cfg = &self.config;
        let c = cfg.hidden_size;
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let lay = &self.layout;
        let tokens: Vec<u32> = seqs.iter().flat_map(|p| p.iter().copied()).collect();
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!("token id {t} is beyond the vocabulary ({})", cfg.vocab_size);
        }
        if let Some(s) = seqs
            .iter()
            .find(|s| s.is_empty() || s.len() > cfg.max_context)
        {
            bail!(
                "a sequence of {} tokens: expected 1 to the model's context ({})",
                s.len(),
                cfg.max_context
            );
        }
        let n = tokens.len();
        let mut starts = vec![0i32];
        let mut positions = Vec::with_capacity(n);
        for p in seqs {
            positions.extend(0..p.len());
            starts.push(starts.last().unwrap() + p.len() as i32);
        }
        let stream = &gpu.stream;
        let tokens_dev = stream.clone_htod(&tokens)?;
        let starts_dev = stream.clone_htod(&starts)?;
        let (cos, sin) = self.rope_tables(&positions)?;
        let packed = PackedSeqs {
            starts: &starts_dev,
            max_len: seqs.iter().map(|p| p.len()).max().unwrap_or(0),
        };
        let im = cfg.intermediate_size;
        let mut x = gpu.alloc::<T>(n * c, stage)?;
        gpu.embedding_forward(&mut x, &tokens_dev, &self.w(&lay.embed_tokens), c)?;
        let mut h = gpu.alloc::<T>(n * c, stage)?;
        let mut qkv = gpu.alloc::<T>(n * qkv_dim, stage)?;
        let mut q = gpu.alloc::<T>(n * qd, stage)?;
        let mut k = gpu.alloc::<T>(n * kvd, stage)?;
        let mut vv = gpu.alloc::<T>(n * kvd, stage)?;
        let mut att = gpu.alloc::<T>(n * qd, stage)?;
        let mut lse = gpu.alloc::<f32>(n * dims.n_head, stage)?;
        let mut gate_up = gpu.alloc::<T>(n * 2 * im, stage)?;
        let mut act = gpu.alloc::<T>(n * im, stage)?;
        for (l, w) in lay.layers.iter().enumerate() {
            self.attention_inputs(
                w,
                &x,
                &mut h,
                &mut qkv,
                (&mut q, &mut k, &mut vv),
                (&cos, &sin),
                n,
            )?;
            kv(l, &k, &vv)?;
            gpu.attention_forward(&mut att, &mut lse, &q, &k, &vv, &packed, dims)?;
            gpu.matmul_forward(&mut h, &att, &self.w(&w.o_proj), None, n, qd, c)?;
            gpu.add_inplace(&mut x, &h)?;
            self.mlp(&mut x, &mut h, &mut gate_up, &mut act, w, n)?;
        }
        Ok((x, starts))
    }

    /// The MLP block on x: (N, C) in place; h, gate_up, act are scratch of N rows.
    fn mlp(
        &self,
        x: &mut CudaSlice<T>,
        h: &mut CudaSlice<T>,
        gate_up: &mut CudaSlice<T>,
        act: &mut CudaSlice<T>,
        w: &crate::model::params::LayerParams,
        n: usize,
    ) -> Result<()> {
        let gpu: &Gpu = &self.gpu;
        let (c, im) = (self.config.hidden_size, self.config.intermediate_size);
        let eps = self.config.rms_norm_eps;
        gpu.rmsnorm_forward(h, &*x, &self.w(&w.post_attention_layernorm), eps, n, c)?;
        gpu.matmul_forward(gate_up, &*h, &self.w(&w.gate_up_proj()), None, n, c, 2 * im)?;
        gpu.swiglu_forward(act, &*gate_up, im)?;
        gpu.matmul_forward(h, &*act, &self.w(&w.down_proj), None, n, im, c)?;
        gpu.add_inplace(x, &*h)
    }

    /// Final norm and LM head of the rows `rows` of x: (R, V) f32 logits.
    fn head_logits(
        &self,
        x: &CudaSlice<T>,
        rows: &CudaSlice<i32>,
        stage: &str,
    ) -> Result<CudaSlice<f32>> {
        let v = self.config.vocab_size;
        self.head_rows(x, rows, &self.layout.lm_head.clone(), v, stage)
    }

    /// Final norm of the rows `rows` of x, then the product with the head `weight`: (out,
    /// C) gives (R, out) f32.
    pub(crate) fn head_rows(
        &self,
        x: &CudaSlice<T>,
        rows: &CudaSlice<i32>,
        weight: &std::ops::Range<usize>,
        out: usize,
        stage: &str,
    ) -> Result<CudaSlice<f32>> {
        let gpu: &Gpu = &self.gpu;
        let c = self.config.hidden_size;
        let r = rows.len();
        let mut picked = gpu.alloc::<T>(r * c, stage)?;
        gpu.gather_rows(&mut picked, x, rows, c)?;
        let mut normed = gpu.alloc::<T>(r * c, stage)?;
        gpu.rmsnorm_forward(
            &mut normed,
            &picked,
            &self.w(&self.layout.norm),
            self.config.rms_norm_eps,
            r,
            c,
        )?;
        let mut logits = gpu.alloc::<f32>(r * out, stage)?;
        gpu.matmul_forward_f32_out(&mut logits, &normed, &self.w(weight), r, c, out)?;
        Ok(logits)
    }

    /// One decode step: `tokens[b]` goes to slot b at position `positions[b]` (its cache
    /// holds positions 0..positions[b]); every slot runs (an idle slot with a dummy token at
    /// position 0). Returns the logits: (B, V) f32.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        positions: &[usize],
        caches: &mut SlotCaches<T>,
    ) -> Result<CudaSlice<f32>> {
        let gpu: &Gpu = &self.gpu;
        let cfg = &self.config;
        let (c, im) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = qd + 2 * kvd;
        let dims = self.attention_dims();
        let lay = &self.layout;
        let b = caches.slots;
        if tokens.len() != b || positions.len() != b {
            bail!("decode_step: one token and position per slot");
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!(
                "decode_step: token id {t} is beyond the vocabulary ({})",
                cfg.vocab_size
            );
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= caches.t_max) {
            bail!(
                "decode_step: position {p} beyond the caches' {}",
                caches.t_max
            );
        }
        let stream = &gpu.stream;
        let tokens_dev = stream.clone_htod(tokens)?;
        let rows: Vec<i32> = positions
            .iter()
            .enumerate()
            .map(|(s, &p)| (s * caches.t_max + p) as i32)
            .collect();
        let lens: Vec<i32> = positions.iter().map(|&p| p as i32 + 1).collect();
        let (rows_dev, lens_dev) = (stream.clone_htod(&rows)?, stream.clone_htod(&lens)?);
        let (cos, sin) = self.rope_tables(positions)?;
        let ddims = DecodeDims {
            batch: b,
            n_head: dims.n_head,
            n_kv_head: dims.n_kv_head,
            head_dim: dims.head_dim,
            t_max: caches.t_max,
        };

        let mut x = gpu.alloc::<T>(b * c, DECODE)?;
        gpu.embedding_forward(&mut x, &tokens_dev, &self.w(&lay.embed_tokens), c)?;
        let mut h = gpu.alloc::<T>(b * c, DECODE)?;
        let mut qkv = gpu.alloc::<T>(b * qkv_dim, DECODE)?;
        let mut q = gpu.alloc::<T>(b * qd, DECODE)?;
        let mut k = gpu.alloc::<T>(b * kvd, DECODE)?;
        let mut vv = gpu.alloc::<T>(b * kvd, DECODE)?;
        let mut att = gpu.alloc::<T>(b * qd, DECODE)?;
        let mut lse = gpu.alloc::<f32>(b * dims.n_head, DECODE)?;
        // The per-split partials of decode attention (none where one split suffices).
        let mut scores = gpu.alloc::<f32>(gpu.decode_attention_scratch_len(ddims)?, DECODE)?;
        let mut gate_up = gpu.alloc::<T>(b * 2 * im, DECODE)?;
        let mut act = gpu.alloc::<T>(b * im, DECODE)?;
        for (l, w) in lay.layers.iter().enumerate() {
            self.attention_inputs(
                w,
                &x,
                &mut h,
                &mut qkv,
                (&mut q, &mut k, &mut vv),
                (&cos, &sin),
                b,
            )?;
            gpu.scatter_rows(&mut caches.k[l], &k, &rows_dev, kvd)?;
            gpu.scatter_rows(&mut caches.v[l], &vv, &rows_dev, kvd)?;
            gpu.decode_attention(
                &mut att,
                &mut lse,
                &mut scores,
                &q,
                &caches.k[l],
                &caches.v[l],
                &lens_dev,
                ddims,
            )?;
            gpu.matmul_forward(&mut h, &att, &self.w(&w.o_proj), None, b, qd, c)?;
            gpu.add_inplace(&mut x, &h)?;
            self.mlp(&mut x, &mut h, &mut gate_up, &mut act, w, b)?;
        }
        let all: Vec<i32> = (0..b as i32).collect();
        let all_dev = stream.clone_htod(&all)?;
        self.head_logits(&x, &all_dev, DECODE)
    }
}
