//! The CUDA instantiation of the op set: weights and activations in the storage type T on
//! one GPU, each op the launcher of the same name in this folder (the workspace some
//! kernels need beyond their outputs is the `Gpu`'s own).

use super::attention::PackedSeqs;
use super::buffer::{DevBuf, View, ViewMut};
use super::embedding::DeviceTokens;
use super::kv_cache::SlotPass;
use super::logprobs::{default_chunk_rows, LogitsScratch};
use super::rope::DeviceRope;
use super::{Bias, DecodeDims, Dest, Gpu, Storage};
use crate::backend::ops::{Ops, RowGrad};
use crate::backend::rope_table::RopeTable;
use crate::backend::settings::{AdamW, AttentionDims, Columns};
use crate::backend::storage::Elem;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, DeviceSlice};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

/// The op set on `gpu`, with weights and activations stored as T.
pub struct CudaOps<T: Storage> {
    pub gpu: Arc<Gpu>,
    storage: PhantomData<T>,
}

impl<T: Storage> Clone for CudaOps<T> {
    fn clone(&self) -> Self {
        CudaOps::new(self.gpu.clone())
    }
}

impl<T: Storage> CudaOps<T> {
    pub fn new(gpu: Arc<Gpu>) -> CudaOps<T> {
        CudaOps {
            gpu,
            storage: PhantomData,
        }
    }
}

/// Row offsets of a packed batch's sequences: (S + 1), and the longest.
pub struct DeviceSeqs {
    starts: CudaSlice<i32>,
    max_len: usize,
}

impl DeviceSeqs {
    fn packed(&self) -> PackedSeqs<'_> {
        PackedSeqs {
            starts: &self.starts,
            max_len: self.max_len,
        }
    }
}

const GRAPH: &str = "in the model's forward or backward";

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
    fn weights(buf: &DevBuf<T>, r: Range<usize>) -> View<'_, T> {
        View::of(&buf.data, r)
    }
    fn grads(buf: &mut DevBuf<f32>, r: Range<usize>) -> ViewMut<'_, f32> {
        ViewMut::of(&mut buf.data, r)
    }
    fn grads_pair(
        buf: &mut DevBuf<f32>,
        a: Range<usize>,
        b: Range<usize>,
    ) -> Result<(ViewMut<'_, f32>, ViewMut<'_, f32>)> {
        if a.end != b.start {
            bail!("grads_pair: {b:?} does not follow {a:?}");
        }
        Ok(ViewMut::two(&mut buf.data, a, b))
    }
    fn tokens(&self, ids: &[u32]) -> Result<DeviceTokens> {
        DeviceTokens::new(&self.gpu, ids)
    }
    fn seqs(&self, seqs: &[Range<usize>]) -> Result<DeviceSeqs> {
        let mut starts = vec![0i32];
        starts.extend(seqs.iter().map(|s| s.end as i32));
        Ok(DeviceSeqs {
            starts: self.gpu.upload(&starts, GRAPH)?,
            max_len: seqs.iter().map(|s| s.len()).max().unwrap_or(0),
        })
    }
    fn rope(&self, table: RopeTable) -> Result<DeviceRope> {
        DeviceRope::new(&self.gpu, &table)
    }
    fn logits_scratch(&self, v: usize, chunk_rows: Option<usize>) -> Result<LogitsScratch> {
        let rows = chunk_rows.unwrap_or_else(|| default_chunk_rows(v));
        LogitsScratch::new(&self.gpu, rows, v)
    }

    fn embedding_forward(
        &self,
        out: &mut DevBuf<T>,
        tokens: &DeviceTokens,
        table: View<'_, T>,
        c: usize,
    ) -> Result<()> {
        self.gpu.embedding_forward(out, tokens, &table, c)
    }
    fn embedding_backward(
        &self,
        mut dtable: ViewMut<'_, f32>,
        dout: &DevBuf<T>,
        tokens: &DeviceTokens,
        c: usize,
    ) -> Result<()> {
        self.gpu.embedding_backward(&mut dtable, dout, tokens, c)
    }
    fn rmsnorm_forward(
        &self,
        out: &mut DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        self.gpu.rmsnorm_forward(out, inp, &weight, eps, c)
    }
    fn rmsnorm_backward(
        &self,
        dinp: &mut DevBuf<T>,
        mut dweight: Option<ViewMut<'_, f32>>,
        dout: &DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        eps: f32,
        c: usize,
    ) -> Result<()> {
        self.gpu
            .rmsnorm_backward(dinp, dweight.as_mut(), dout, inp, &weight, eps, c)
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
        mut dweight: Option<ViewMut<'_, f32>>,
        mut dbias: Option<ViewMut<'_, f32>>,
        dout: &DevBuf<T>,
        inp: &DevBuf<T>,
        weight: View<'_, T>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let dbias = dbias.as_mut().map(|d| d as &mut dyn Dest<f32>);
        self.gpu
            .matmul_backward(dinp, dweight.as_mut(), dbias, dout, inp, &weight, n, c, oc)
    }
    fn residual_forward(&self, x: &mut DevBuf<T>, y: &DevBuf<T>) -> Result<()> {
        self.gpu.residual_forward(x, y)
    }
    fn rope_forward(&self, x: &mut DevBuf<T>, rope: &DeviceRope, heads: usize) -> Result<()> {
        self.gpu.rope_forward(x, rope, heads)
    }
    fn rope_backward(&self, dx: &mut DevBuf<T>, rope: &DeviceRope, heads: usize) -> Result<()> {
        self.gpu.rope_backward(dx, rope, heads)
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
        self.gpu
            .attention_forward(out, lse, q, k, v, &seqs.packed(), dims)
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
        let packed = seqs.packed();
        self.gpu
            .attention_backward(dq, dk, dv, dout, q, k, v, out, lse, &packed, dims)
    }
    fn cache_fill(
        &self,
        caches: &mut SlotPass<'_, T>,
        layer: usize,
        k: &DevBuf<T>,
        v: &DevBuf<T>,
    ) -> Result<()> {
        caches.fill(&self.gpu, layer, k, v)
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
        caches.fill(&self.gpu, layer, k, v)?;
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
        self.gpu.qkv_split(q, k, v, qkv, qd, kvd)
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
        self.gpu.qkv_join(qkv, q, k, v, qd, kvd)
    }
    fn scale_columns(
        &self,
        dst: &mut DevBuf<T>,
        to: Columns,
        src: &DevBuf<T>,
        from: Columns,
        rows: usize,
        width: usize,
        scale: f32,
        accumulate: bool,
    ) -> Result<()> {
        self.gpu
            .scale_columns((dst, to), (src, from), rows, width, scale, accumulate)
    }
    fn dropout(
        &self,
        dst: &mut DevBuf<T>,
        src: &DevBuf<T>,
        p: f32,
        seed: u64,
        accumulate: bool,
    ) -> Result<()> {
        self.gpu.dropout(dst, src, p, seed, accumulate)
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
        mut dweight: Option<ViewMut<'_, f32>>,
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
            dweight.as_mut(),
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
        dweight: Option<ViewMut<'_, f32>>,
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

    fn frozen_from_host(&self, host: &mut Vec<f32>) -> Result<DevBuf<T>> {
        let stored: Vec<T> = host.iter().map(|&x| T::from_f32(x)).collect();
        self.upload(&stored, "for the frozen model weights")
    }
    fn frozen_to_host(&self, _frozen: DevBuf<T>, _host: &mut Vec<f32>) -> Result<()> {
        Ok(())
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
        match copy {
            // In place: a roll-back must not need room for a second copy.
            Some(c) if c.capacity() >= host.len() => {
                self.set_len(c, host.len())?;
                if !host.is_empty() {
                    self.gpu.stream.memcpy_htod(&host, &mut c.data)?;
                }
            }
            _ => *copy = Some(self.upload(&host, "for the weights the forward reads")?),
        }
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
        let p = Self::len(params);
        let lens = [
            Self::len(previous),
            Self::len(m),
            Self::len(v),
            Self::len(grads),
        ];
        let copy_len = copy.as_ref().map_or(p, |c| Self::len(&**c));
        if lens.iter().any(|&l| l != p) || copy_len != p || r.start > r.end || r.end > p {
            bail!("adamw_update: buffers of unequal lengths, or {r:?} beyond {p}");
        }
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
