//! The CUDA instantiation of the op set: weights and activations in the storage type T on
//! one GPU, each op a launcher of this folder. The workspace some kernels need beyond their
//! outputs (the RMSNorm and attention backwards') is kept here and grown on demand, so the
//! graph passes the same arguments as on the CPU.

use super::attention::{AttentionScratch, PackedSeqs};
use super::buffer::{DevBuf, View, ViewMut};
use super::embedding::TokenRows;
use super::kv_cache::SlotPass;
use super::logprobs::{default_chunk_rows, LogitsScratch};
use super::{Bias, DecodeDims, Gpu, Storage};
use crate::backend::ops::{Ops, RowGrad};
use crate::backend::rope_table::RopeTable;
use crate::backend::settings::{AdamW, AttentionDims};
use crate::backend::storage::Elem;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, DeviceSlice};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// The op set on `gpu`, with weights and activations stored as T.
pub struct CudaOps<T: Storage> {
    pub gpu: Arc<Gpu>,
    /// (N, C) f32 per-row terms of the RMSNorm backward.
    rms_scratch: Mutex<Option<CudaSlice<f32>>>,
    attention_scratch: Mutex<Option<AttentionScratch>>,
    storage: PhantomData<T>,
}

impl<T: Storage> CudaOps<T> {
    pub fn new(gpu: Arc<Gpu>) -> CudaOps<T> {
        CudaOps {
            gpu,
            rms_scratch: Mutex::new(None),
            attention_scratch: Mutex::new(None),
            storage: PhantomData,
        }
    }
}

/// A batch's token ids, and its rows grouped by token for the embedding's backward.
pub struct DeviceTokens {
    ids: CudaSlice<u32>, // (N)
    rows: TokenRows,
}

/// Row offsets of a packed batch's sequences: (S + 1), and the longest.
pub struct DeviceSeqs {
    starts: CudaSlice<i32>,
    max_len: usize,
}

/// The rotary tables of a batch's rows: cos, sin (N, D/2).
pub struct DeviceRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
}

const GRAPH: &str = "in the model's forward or backward";

fn poisoned<X>(_: X) -> anyhow::Error {
    anyhow::anyhow!("a GPU workspace lock was poisoned by an earlier failure")
}

impl<T: Storage> Ops for CudaOps<T> {
    type S = T;
    type Buf<E: Elem> = DevBuf<E>;
    type W<'a> = View<'a, T>;
    type G<'a> = ViewMut<'a, f32>;
    type Tokens = DeviceTokens;
    type Seqs = DeviceSeqs;
    type Rope = DeviceRope;
    type LogitsScratch = LogitsScratch;
    type Caches<'c> = SlotPass<'c, T>;

    fn alloc<E: Elem>(&self, n: usize, stage: &str) -> Result<DevBuf<E>> {
        Ok(DevBuf::new(self.gpu.alloc::<E>(n, stage)?, n))
    }
    fn set_len<E: Elem>(&self, buf: &mut DevBuf<E>, n: usize) -> Result<()> {
        if !buf.set_len(n) {
            bail!(
                "a buffer of {} elements cannot hold {n}: the working memory was sized for smaller micro-batches (lower --micro-batch-tokens)",
                buf.capacity()
            );
        }
        Ok(())
    }
    fn len<E: Elem>(buf: &DevBuf<E>) -> usize {
        DeviceSlice::len(buf)
    }
    fn reserve<E: Elem>(&self, buf: &mut DevBuf<E>, n: usize, stage: &str) -> Result<()> {
        if buf.capacity() < n {
            *buf = self.alloc(n, stage)?;
        }
        self.set_len(buf, n)
    }
    fn upload<E: Elem>(&self, host: &[E], stage: &str) -> Result<DevBuf<E>> {
        let mut buf = self.alloc::<E>(host.len(), stage)?;
        if !host.is_empty() {
            self.gpu.stream.memcpy_htod(host, &mut buf.data)?;
        }
        Ok(buf)
    }
    fn download<E: Elem>(&self, buf: &DevBuf<E>) -> Result<Vec<E>> {
        let n = DeviceSlice::len(buf);
        let mut host = vec![E::default(); n];
        if n > 0 {
            self.gpu
                .stream
                .memcpy_dtoh(&buf.data.slice(..n), &mut host)?;
        }
        Ok(host)
    }
    fn zero<E: Elem>(&self, buf: &mut DevBuf<E>) -> Result<()> {
        let n = DeviceSlice::len(buf);
        if n > 0 {
            self.gpu.stream.memset_zeros(&mut buf.data.slice_mut(..n))?;
        }
        Ok(())
    }
    fn copy<E: Elem>(&self, dst: &mut DevBuf<E>, src: &DevBuf<E>) -> Result<()> {
        let n = DeviceSlice::len(src);
        self.set_len(dst, n)?;
        if n > 0 {
            self.gpu
                .stream
                .memcpy_dtod(&src.data.slice(..n), &mut dst.data.slice_mut(..n))?;
        }
        Ok(())
    }
    fn weights<'a>(buf: &'a DevBuf<T>, r: Range<usize>) -> View<'a, T> {
        View::of(&buf.data, r)
    }
    fn grads<'a>(buf: &'a mut DevBuf<f32>, r: Range<usize>) -> ViewMut<'a, f32> {
        ViewMut::of(&mut buf.data, r)
    }
    fn grads_pair<'a>(
        buf: &'a mut DevBuf<f32>,
        a: Range<usize>,
        b: Range<usize>,
    ) -> Result<(ViewMut<'a, f32>, ViewMut<'a, f32>)> {
        if a.end != b.start {
            bail!("grads_pair: {b:?} does not follow {a:?}");
        }
        Ok(ViewMut::two(&mut buf.data, a, b))
    }
    fn tokens(&self, ids: &[u32]) -> Result<DeviceTokens> {
        Ok(DeviceTokens {
            ids: self.gpu.stream.clone_htod(ids)?,
            rows: TokenRows::new(&self.gpu, ids)?,
        })
    }
    fn seqs(&self, seqs: &[Range<usize>]) -> Result<DeviceSeqs> {
        let mut starts = vec![0i32];
        starts.extend(seqs.iter().map(|s| s.end as i32));
        Ok(DeviceSeqs {
            starts: self.gpu.stream.clone_htod(&starts)?,
            max_len: seqs.iter().map(|s| s.len()).max().unwrap_or(0),
        })
    }
    fn rope(&self, table: &RopeTable) -> Result<DeviceRope> {
        let s = &self.gpu.stream;
        Ok(DeviceRope {
            cos: s.clone_htod(&table.cos)?,
            sin: s.clone_htod(&table.sin)?,
            half: table.half,
        })
    }
    fn logits_scratch(&self, v: usize) -> Result<LogitsScratch> {
        LogitsScratch::new(&self.gpu, default_chunk_rows(v), v)
    }

    fn embedding_forward(
        &self,
        out: &mut DevBuf<T>,
        tokens: &DeviceTokens,
        table: View<'_, T>,
        c: usize,
    ) -> Result<()> {
        self.gpu.embedding_forward(out, &tokens.ids, &table, c)
    }
    fn embedding_backward(
        &self,
        mut dtable: ViewMut<'_, f32>,
        dout: &DevBuf<T>,
        tokens: &DeviceTokens,
        c: usize,
    ) -> Result<()> {
        self.gpu
            .embedding_backward(&mut dtable, dout, &tokens.rows, c)
    }
    fn rmsnorm_forward(
        &self,
        out: &mut DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        let n = DeviceSlice::len(inp) / c.max(1);
        self.gpu.rmsnorm_forward(out, inp, &weight, eps, n, c)
    }
    fn rmsnorm_backward(
        &self,
        dinp: &mut DevBuf<T>,
        mut dweight: ViewMut<'_, f32>,
        dout: &DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        let len = DeviceSlice::len(inp);
        let n = len / c.max(1);
        let mut scratch = self.rms_scratch.lock().map_err(poisoned)?;
        if scratch.as_ref().is_none_or(|s| s.len() < len) {
            *scratch = Some(self.gpu.alloc::<f32>(len.max(1), GRAPH)?);
        }
        let scratch = scratch.as_mut().context("the RMSNorm scratch")?;
        self.gpu
            .rmsnorm_backward(dinp, &mut dweight, scratch, dout, inp, &weight, eps, n, c)
    }
    fn matmul_forward(
        &self,
        out: &mut DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        bias: Option<View<'_, T>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let bias = bias.as_ref().map(|b| b as &dyn Bias<T>);
        self.gpu.matmul_forward(out, inp, &weight, bias, n, c, oc)
    }
    fn matmul_backward(
        &self,
        dinp: &mut DevBuf<T>,
        mut dweight: ViewMut<'_, f32>,
        dbias: Option<ViewMut<'_, f32>>,
        dout: &DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match dbias {
            Some(mut db) => self.gpu.matmul_backward(
                dinp,
                &mut dweight,
                Some(&mut db),
                dout,
                inp,
                &weight,
                (n, c, oc),
            ),
            None => {
                self.gpu
                    .matmul_backward(dinp, &mut dweight, None, dout, inp, &weight, (n, c, oc))
            }
        }
    }
    fn residual_forward(&self, x: &mut DevBuf<T>, y: &DevBuf<T>) -> Result<()> {
        self.gpu.add_inplace(x, y)
    }
    fn rope_forward(&self, x: &mut DevBuf<T>, rope: &DeviceRope, heads: usize) -> Result<()> {
        self.gpu
            .rope(x, &rope.cos, &rope.sin, heads, rope.half, 1.0)
    }
    fn rope_backward(&self, dx: &mut DevBuf<T>, rope: &DeviceRope, heads: usize) -> Result<()> {
        self.gpu
            .rope(dx, &rope.cos, &rope.sin, heads, rope.half, -1.0)
    }
    fn swiglu_forward(&self, out: &mut DevBuf<T>, gate_up: &DevBuf<T>, im: usize) -> Result<()> {
        self.gpu.swiglu_forward(out, gate_up, im)
    }
    fn swiglu_backward(
        &self,
        dgate_up: &mut DevBuf<T>,
        dout: &DevBuf<T>,
        gate_up: &DevBuf<T>,
        im: usize,
    ) -> Result<()> {
        self.gpu.swiglu_backward(dgate_up, dout, gate_up, im)
    }
    fn attention_forward(
        &self,
        out: &mut DevBuf<T>,
        lse: &mut DevBuf<f32>,
        q: &DevBuf<T>,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
        seqs: &DeviceSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        let packed = PackedSeqs {
            starts: &seqs.starts,
            max_len: seqs.max_len,
        };
        self.gpu.attention_forward(out, lse, q, k, v, &packed, dims)
    }
    fn attention_backward(
        &self,
        dq: &mut DevBuf<T>,
        dk: &mut DevBuf<T>,
        dv: &mut DevBuf<T>,
        dout: &DevBuf<T>,
        q: &DevBuf<T>,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
        out: &DevBuf<T>,
        lse: &DevBuf<f32>,
        seqs: &DeviceSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        let packed = PackedSeqs {
            starts: &seqs.starts,
            max_len: seqs.max_len,
        };
        let n = DeviceSlice::len(q) / (dims.n_head * dims.head_dim).max(1);
        let mut scratch = self.attention_scratch.lock().map_err(poisoned)?;
        if scratch.is_none() {
            *scratch = Some(AttentionScratch::new(&self.gpu, n, dims)?);
        }
        let scratch = scratch.as_mut().context("the attention scratch")?;
        self.gpu
            .attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, &packed, dims)
    }
    fn cache_fill(
        &self,
        caches: &mut SlotPass<'_, T>,
        layer: usize,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
    ) -> Result<()> {
        let kvd = caches.caches.kv_dim;
        if layer >= caches.caches.k.len() {
            bail!("cache_fill: layer {layer} of {}", caches.caches.k.len());
        }
        let gpu = &self.gpu;
        let c = &mut *caches.caches;
        gpu.gather_rows(&mut caches.copies, k, &caches.src, kvd)?;
        gpu.scatter_rows(&mut c.k[layer], &caches.copies, &caches.dst, kvd)?;
        gpu.gather_rows(&mut caches.copies, v, &caches.src, kvd)?;
        gpu.scatter_rows(&mut c.v[layer], &caches.copies, &caches.dst, kvd)
    }
    fn cached_attention(
        &self,
        out: &mut DevBuf<T>,
        lse: &mut DevBuf<f32>,
        q: &DevBuf<T>,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
        caches: &mut SlotPass<'_, T>,
        layer: usize,
        dims: AttentionDims,
    ) -> Result<()> {
        self.cache_fill(caches, layer, k, v)?;
        let Some(lens) = &caches.lens else {
            bail!("cached_attention: these caches were laid out for a prefill, not a decode step");
        };
        let c = &mut *caches.caches;
        let ddims = DecodeDims {
            n_head: dims.n_head,
            n_kv_head: dims.n_kv_head,
            head_dim: dims.head_dim,
            ..c.dims
        };
        self.gpu.decode_attention(
            out,
            lse,
            &mut c.scores,
            q,
            &c.k[layer],
            &c.v[layer],
            lens,
            ddims,
        )
    }
    fn matmul_forward_f32(
        &self,
        out: &mut DevBuf<f32>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.gpu.matmul_forward_f32_out(out, inp, &weight, n, c, oc)
    }
    fn qkv_split(
        &self,
        q: &mut DevBuf<T>,
        k: &mut DevBuf<T>,
        v: &mut DevBuf<T>,
        qkv: &DevBuf<T>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        let width = qd + 2 * kvd;
        let n = DeviceSlice::len(qkv) / width.max(1);
        let at = |stride, offset| super::Columns { stride, offset };
        let gpu = &self.gpu;
        gpu.copy_columns((q, at(qd, 0)), (qkv, at(width, 0)), n, qd)?;
        gpu.copy_columns((k, at(kvd, 0)), (qkv, at(width, qd)), n, kvd)?;
        gpu.copy_columns((v, at(kvd, 0)), (qkv, at(width, qd + kvd)), n, kvd)
    }
    fn qkv_join(
        &self,
        qkv: &mut DevBuf<T>,
        q: &DevBuf<T>,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        let width = qd + 2 * kvd;
        let n = DeviceSlice::len(qkv) / width.max(1);
        let at = |stride, offset| super::Columns { stride, offset };
        let gpu = &self.gpu;
        gpu.copy_columns((qkv, at(width, 0)), (q, at(qd, 0)), n, qd)?;
        gpu.copy_columns((qkv, at(width, qd)), (k, at(kvd, 0)), n, kvd)?;
        gpu.copy_columns((qkv, at(width, qd + kvd)), (v, at(kvd, 0)), n, kvd)
    }
    fn gather_rows(
        &self,
        dst: &mut DevBuf<T>,
        src: &DevBuf<T>,
        rows: &DevBuf<i32>,
        c: usize,
    ) -> Result<()> {
        self.gpu.gather_rows(dst, src, rows, c)
    }
    fn scatter_rows(
        &self,
        dst: &mut DevBuf<T>,
        src: &DevBuf<T>,
        rows: &DevBuf<i32>,
        c: usize,
    ) -> Result<()> {
        self.gpu.scatter_rows(dst, src, rows, c)
    }
    fn logprobs_forward(
        &self,
        logp: &mut DevBuf<f32>,
        lse: &mut DevBuf<f32>,
        hidden: &DevBuf<T>,
        weight: View<'_, T>,
        targets: &DevBuf<u32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        self.gpu
            .logprobs_forward(logp, lse, hidden, &weight, targets, c, v, scratch)
    }
    fn logprobs_backward(
        &self,
        dhidden: &mut DevBuf<T>,
        mut dweight: ViewMut<'_, f32>,
        dlogp: &DevBuf<f32>,
        hidden: &DevBuf<T>,
        weight: View<'_, T>,
        targets: &DevBuf<u32>,
        lse: &DevBuf<f32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        self.gpu.logprobs_backward(
            dhidden,
            &mut dweight,
            dlogp,
            hidden,
            &weight,
            targets,
            lse,
            c,
            v,
            scratch,
        )
    }
    fn logprobs_with_grad(
        &self,
        logp: &mut DevBuf<f32>,
        dhidden: &mut DevBuf<T>,
        dweight: ViewMut<'_, f32>,
        hidden: &DevBuf<T>,
        weight: View<'_, T>,
        targets: &DevBuf<u32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
        groups: &[Range<usize>],
        grad: &mut RowGrad,
    ) -> Result<()> {
        // Every log-prob first (one synchronisation), the loss on the host, then the
        // backward with the logits recomputed.
        let m = DeviceSlice::len(targets);
        let mut lse = self.alloc::<f32>(m, GRAPH)?;
        self.logprobs_forward(logp, &mut lse, hidden, weight, targets, c, v, scratch)?;
        let host = self.download(logp)?;
        let mut dlogp = Vec::with_capacity(m);
        for (g, r) in groups.iter().enumerate() {
            let d = grad(g, &host[r.clone()])?;
            if d.len() != r.len() {
                bail!("the loss gave {} gradients for {} rows", d.len(), r.len());
            }
            dlogp.extend(d);
        }
        if dlogp.len() != m {
            bail!("logprobs_with_grad: the groups do not tile the {m} rows");
        }
        let dlogp = self.upload(&dlogp, GRAPH)?;
        self.logprobs_backward(
            dhidden, dweight, &dlogp, hidden, weight, targets, &lse, c, v, scratch,
        )
    }

    fn master_from_host(&self, host: &mut Vec<f32>) -> Result<DevBuf<f32>> {
        self.upload(host, "for the weights, gradients and AdamW state")
    }
    fn lend_to_host(&self, master: &mut DevBuf<f32>, host: &mut Vec<f32>) -> Result<()> {
        *host = self
            .download(master)
            .context("copying the trained weights from the GPU")?;
        Ok(())
    }
    fn return_from_host(&self, _master: &mut DevBuf<f32>, _host: &mut Vec<f32>) -> Result<()> {
        Ok(())
    }
    fn refresh_weights(&self, copy: &mut Option<DevBuf<T>>, master: &DevBuf<f32>) -> Result<()> {
        // Through the host: this runs once at the start and after a roll-back; AdamW writes
        // the copy as it updates.
        let host: Vec<T> = self
            .download(master)?
            .into_iter()
            .map(T::from_f32)
            .collect();
        *copy = Some(self.upload(&host, "for the weights the forward reads")?);
        Ok(())
    }
    fn forward_weights<'a>(
        _master: &'a DevBuf<f32>,
        copy: &'a Option<DevBuf<T>>,
    ) -> Result<&'a DevBuf<T>> {
        copy.as_ref()
            .context("the device's copy of the weights was never written")
    }
    fn adamw_update(
        &self,
        params: &mut DevBuf<f32>,
        previous: &mut DevBuf<f32>,
        m: &mut DevBuf<f32>,
        v: &mut DevBuf<f32>,
        grads: &DevBuf<f32>,
        copy: Option<&mut DevBuf<T>>,
        r: Range<usize>,
        h: AdamW,
    ) -> Result<()> {
        let mut copy = copy.map(|c| c.data.slice_mut(r.clone()));
        self.gpu.adamw_update(
            &mut params.data.slice_mut(r.clone()),
            &mut previous.data.slice_mut(r.clone()),
            &mut m.data.slice_mut(r.clone()),
            &mut v.data.slice_mut(r.clone()),
            &grads.data.slice(r),
            copy.as_mut().map(|c| c as &mut dyn super::Dest<T>),
            h,
        )
    }
    fn sum_squares(&self, x: &DevBuf<f32>) -> Result<f64> {
        self.gpu.sum_squares(x)
    }
}
