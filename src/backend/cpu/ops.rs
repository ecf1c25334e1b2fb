//! The CPU's instantiation of the op set: f32 buffers in host memory, each op the free
//! function of its file here.

use super::attention::{self, KvView, PackedSeqs};
use super::bf16::PackedRhs;
use super::kv_cache::SeqCaches;
use super::logprobs::{self, default_chunk_rows, LogitsScratch};
use super::matmul::{add_bias, check_forward};
use super::packed_f32::{self, PackedF32};
use super::packed_weights::PackedWeights;
use super::products::Products;
use super::{
    adamw, block_products, check_lens, dropout, embedding, glue, matmul_bf16, residual, rmsnorm,
    rope, swiglu,
};
use crate::backend::ops::{Ops, RowGrad};
use crate::backend::rope_table::RopeTable;
use crate::backend::settings::{AdamW, AttentionDims, Columns};
use crate::backend::storage::Elem;
use anyhow::{bail, Result};
use std::ops::Range;
use std::sync::Arc;

/// The CPU: f32 buffers, parallel with rayon; the matrix products in f32 or, with bf16
/// operands, as `products` says.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub products: Products,
    /// Over weights that do not change: their packings, kept.
    packed: Option<Kept>,
}

/// The forward products' weights, kept packed for the products' kernel.
#[derive(Clone, Debug)]
enum Kept {
    Bf16(Arc<PackedWeights<PackedRhs>>),
    /// f32 panels for the AVX-512 kernel of `packed_f32`.
    F32(Arc<PackedWeights<PackedF32>>),
}

impl Kept {
    /// An empty cache for `products`: bf16 ones always, f32 ones where the CPU has
    /// AVX-512F (the gemm crate's products otherwise, which keep nothing).
    fn for_products(products: Products) -> Option<Kept> {
        match products {
            Products::Bf16(_) => Some(Kept::Bf16(Arc::default())),
            Products::F32 if packed_f32::available() => Some(Kept::F32(Arc::default())),
            Products::F32 => None,
        }
    }

    /// Bytes a packing holds per weight.
    fn bytes(&self) -> u64 {
        match self {
            Kept::Bf16(_) => 2,
            Kept::F32(_) => 4,
        }
    }
}

impl Cpu {
    /// f32 throughout: the reference every other path is tested against.
    pub const F32: Cpu = Cpu::new(Products::F32);

    pub const fn new(products: Products) -> Cpu {
        Cpu {
            products,
            packed: None,
        }
    }

    /// This CPU keeping its forward products' weights packed, for one run over weights that
    /// stay unchanged while it lasts (see `PackedWeights`): with bf16 products, and with f32
    /// ones where the CPU has AVX-512F (the gemm crate's products otherwise).
    pub fn keeping_packed_weights(&self) -> Cpu {
        Cpu {
            products: self.products,
            packed: Kept::for_products(self.products),
        }
    }

    /// Bytes a run that keeps its weights packed (`keeping_packed_weights`) holds per
    /// weight beside the f32 one.
    pub fn kept_bytes(&self) -> u64 {
        Kept::for_products(self.products).map_or(0, |k| k.bytes())
    }

    /// out (n, oc) = inp (n, c) @ weight^T (+ bias), through the kept packings if any.
    #[allow(clippy::too_many_arguments)]
    fn forward_product(
        &self,
        out: &mut [f32],
        inp: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match (&self.packed, self.products) {
            (Some(Kept::Bf16(kept)), Products::Bf16(path)) if weight.len() == oc * c => {
                let packed = kept.forward(weight, c, oc);
                matmul_bf16::forward_packed(path, out, inp, &packed, bias, n, c, oc)
            }
            (Some(Kept::F32(kept)), Products::F32) if weight.len() == oc * c => {
                check_forward(out, inp, weight.len(), bias, n, c, oc)?;
                packed_f32::forward(out, inp, &kept.forward(weight, c, oc), n);
                add_bias(out, bias, oc);
                Ok(())
            }
            _ => self.products.forward(out, inp, weight, bias, n, c, oc),
        }
    }
}

impl PartialEq for Cpu {
    /// The same products setting. Kept packings are not compared: with bf16 products they
    /// change no result; with f32 ones they run the packed f32 kernel, whose sums differ
    /// from the gemm crate's by rounding (the same sums in another order).
    fn eq(&self, other: &Cpu) -> bool {
        self.products == other.products
    }
}

impl Ops for Cpu {
    type S = f32;
    type Buf<E: Elem> = Vec<E>;
    type W<'a> = &'a [f32];
    type G<'a> = &'a mut [f32];
    type Tokens = Vec<u32>;
    type Seqs = PackedSeqs;
    type Rope = RopeTable;
    type LogitsScratch = LogitsScratch;
    type Caches<'c> = SeqCaches<'c>;

    fn alloc<E: Elem>(&self, n: usize, _stage: &str) -> Result<Vec<E>> {
        Ok(vec![E::default(); n])
    }
    fn set_len<E: Elem>(&self, buf: &mut Vec<E>, n: usize) -> Result<()> {
        buf.resize(n, E::default());
        Ok(())
    }
    fn len<E: Elem>(buf: &Vec<E>) -> usize {
        buf.len()
    }
    fn reserve<E: Elem>(&self, buf: &mut Vec<E>, n: usize, _stage: &str) -> Result<()> {
        buf.resize(n, E::default());
        Ok(())
    }
    fn upload<E: Elem>(&self, host: &[E], _stage: &str) -> Result<Vec<E>> {
        Ok(host.to_vec())
    }
    fn download<E: Elem>(&self, buf: &Vec<E>) -> Result<Vec<E>> {
        Ok(buf.clone())
    }
    fn zero<E: Elem>(&self, buf: &mut Vec<E>) -> Result<()> {
        buf.fill(E::default());
        Ok(())
    }
    fn copy<E: Elem>(&self, dst: &mut Vec<E>, src: &Vec<E>) -> Result<()> {
        dst.clone_from(src);
        Ok(())
    }
    fn weights(buf: &Vec<f32>, r: Range<usize>) -> &[f32] {
        &buf[r]
    }
    fn grads(buf: &mut Vec<f32>, r: Range<usize>) -> &mut [f32] {
        &mut buf[r]
    }
    fn grads_pair(
        buf: &mut Vec<f32>,
        a: Range<usize>,
        b: Range<usize>,
    ) -> Result<(&mut [f32], &mut [f32])> {
        if a.end != b.start {
            bail!("grads_pair: {b:?} does not follow {a:?}");
        }
        Ok(buf[a.start..b.end].split_at_mut(a.len()))
    }
    fn tokens(&self, ids: &[u32]) -> Result<Vec<u32>> {
        Ok(ids.to_vec())
    }
    fn seqs(&self, seqs: &[Range<usize>]) -> Result<PackedSeqs> {
        Ok(PackedSeqs::new(seqs))
    }
    fn rope(&self, table: RopeTable) -> Result<RopeTable> {
        Ok(table)
    }
    fn logits_scratch(&self, v: usize, chunk_rows: Option<usize>) -> Result<LogitsScratch> {
        let mut scratch = LogitsScratch::new(chunk_rows.unwrap_or_else(|| default_chunk_rows(v)));
        scratch.products = self.products;
        Ok(scratch)
    }

    fn embedding_forward(
        &self,
        out: &mut Vec<f32>,
        tokens: &Vec<u32>,
        table: &[f32],
        c: usize,
    ) -> Result<()> {
        embedding::embedding_forward(out, tokens, table, c)
    }
    fn embedding_backward(
        &self,
        dtable: &mut [f32],
        dout: &Vec<f32>,
        tokens: &Vec<u32>,
        c: usize,
    ) -> Result<()> {
        embedding::embedding_backward(dtable, dout, tokens, c)
    }
    fn rmsnorm_forward(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &[f32],
        eps: f32,
        c: usize,
    ) -> Result<()> {
        rmsnorm::rmsnorm_forward(out, inp, weight, eps, c)
    }
    fn rmsnorm_backward(
        &self,
        dinp: &mut Vec<f32>,
        dweight: Option<&mut [f32]>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        weight: &[f32],
        eps: f32,
        c: usize,
    ) -> Result<()> {
        rmsnorm::rmsnorm_backward(dinp, dweight, dout, inp, weight, eps, c)
    }
    fn matmul_forward(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.forward_product(out, inp, weight, bias, n, c, oc)
    }
    fn matmul_backward(
        &self,
        dinp: &mut Vec<f32>,
        dweight: Option<&mut [f32]>,
        dbias: Option<&mut [f32]>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        match (dweight, dbias) {
            (Some(dweight), dbias) => self
                .products
                .backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc),
            (None, None) => self.products.backward_dx(dinp, dout, weight, n, c, oc),
            (None, Some(_)) => bail!("matmul_backward: a bias gradient without the weight's"),
        }
    }
    fn residual_forward(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        residual::residual_forward(x, y)
    }
    fn rope_forward(&self, x: &mut Vec<f32>, rope: &RopeTable, heads: usize) -> Result<()> {
        rope::rope_forward(x, rope, heads)
    }
    fn rope_backward(&self, dx: &mut Vec<f32>, rope: &RopeTable, heads: usize) -> Result<()> {
        rope::rope_backward(dx, rope, heads)
    }
    fn swiglu_forward(&self, out: &mut Vec<f32>, gate_up: &Vec<f32>, im: usize) -> Result<()> {
        swiglu::swiglu_forward(out, gate_up, im)
    }
    fn swiglu_backward(
        &self,
        dgate_up: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate_up: &Vec<f32>,
        im: usize,
    ) -> Result<()> {
        swiglu::swiglu_backward(dgate_up, dout, gate_up, im)
    }
    fn attention_forward(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        seqs: &PackedSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention_forward(out, lse, q, k, v, seqs, dims)
    }
    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        seqs: &PackedSeqs,
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, &seqs.seqs, dims)
    }
    fn cache_fill(
        &self,
        caches: &mut SeqCaches<'_>,
        layer: usize,
        k: &Vec<f32>,
        v: &Vec<f32>,
    ) -> Result<()> {
        let n = caches.row_seq.len();
        if n == 0 || k.len() != v.len() || !k.len().is_multiple_of(n) {
            bail!("cache_fill: k, v of {} elements for {n} rows", k.len());
        }
        caches.append(layer, k, v, k.len() / n);
        Ok(())
    }
    fn cached_attention(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        caches: &mut SeqCaches<'_>,
        layer: usize,
        dims: AttentionDims,
    ) -> Result<()> {
        self.cache_fill(caches, layer, k, v)?;
        let views: Vec<KvView> = caches.caches.iter().map(|c| c.view(layer)).collect();
        attention::attention_over_caches(
            out,
            lse,
            q,
            &views,
            &caches.row_seq,
            &caches.row_pos,
            dims,
        )
    }
    fn matmul_forward_f32(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.forward_product(out, inp, weight, None, n, c, oc)
    }
    fn qkv_split(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
        qkv: &Vec<f32>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        glue::qkv_split(q, k, v, qkv, qd, kvd)
    }
    fn qkv_join(
        &self,
        qkv: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        qd: usize,
        kvd: usize,
    ) -> Result<()> {
        glue::qkv_join(qkv, q, k, v, qd, kvd)
    }
    fn scale_columns(
        &self,
        dst: &mut Vec<f32>,
        to: Columns,
        src: &Vec<f32>,
        from: Columns,
        rows: usize,
        width: usize,
        scale: f32,
        accumulate: bool,
    ) -> Result<()> {
        glue::scale_columns(dst, to, src, from, rows, width, scale, accumulate)
    }
    fn dropout(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        p: f32,
        seed: u64,
        accumulate: bool,
    ) -> Result<()> {
        dropout::dropout(dst, src, p, seed, accumulate)
    }
    fn add_product(
        &self,
        out: &mut Vec<f32>,
        cols: Columns,
        inp: &Vec<f32>,
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
        scale: f32,
        _scratch: &mut Vec<f32>,
    ) -> Result<()> {
        block_products::add_product(out, cols, inp, weight, n, c, oc, scale)
    }
    fn add_product_backward(
        &self,
        dinp: &mut Vec<f32>,
        accumulate: bool,
        dweight: &mut [f32],
        dout: &Vec<f32>,
        cols: Columns,
        inp: &Vec<f32>,
        weight: &[f32],
        n: usize,
        c: usize,
        oc: usize,
        scale: f32,
        _scratch: (&mut Vec<f32>, &mut Vec<f32>),
    ) -> Result<()> {
        block_products::add_product_backward(
            dinp, accumulate, dweight, dout, cols, inp, weight, n, c, oc, scale,
        )
    }
    fn gather_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &Vec<i32>,
        c: usize,
    ) -> Result<()> {
        glue::gather_rows(dst, src, rows, c)
    }
    fn scatter_rows(
        &self,
        dst: &mut Vec<f32>,
        src: &Vec<f32>,
        rows: &Vec<i32>,
        c: usize,
    ) -> Result<()> {
        glue::scatter_rows(dst, src, rows, c)
    }
    fn logprobs_forward(
        &self,
        logp: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        hidden: &Vec<f32>,
        weight: &[f32],
        targets: &Vec<u32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        logprobs::logprobs_forward(logp, lse, hidden, weight, targets, c, v, scratch)
    }
    fn logprobs_backward(
        &self,
        dhidden: &mut Vec<f32>,
        dweight: Option<&mut [f32]>,
        dlogp: &Vec<f32>,
        hidden: &Vec<f32>,
        weight: &[f32],
        targets: &Vec<u32>,
        lse: &Vec<f32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
    ) -> Result<()> {
        logprobs::logprobs_backward(
            dhidden, dweight, dlogp, hidden, weight, targets, lse, c, v, scratch,
        )
    }
    fn logprobs_with_grad(
        &self,
        logp: &mut Vec<f32>,
        dhidden: &mut Vec<f32>,
        dweight: Option<&mut [f32]>,
        hidden: &Vec<f32>,
        weight: &[f32],
        targets: &Vec<u32>,
        c: usize,
        v: usize,
        scratch: &mut LogitsScratch,
        groups: &[Range<usize>],
        grad: &mut RowGrad,
    ) -> Result<()> {
        logprobs::logprobs_with_grad(
            logp, dhidden, dweight, hidden, weight, targets, c, v, scratch, groups, grad,
        )
    }

    fn frozen_from_host(&self, host: &mut Vec<f32>) -> Result<Vec<f32>> {
        Ok(std::mem::take(host))
    }
    fn frozen_to_host(&self, frozen: Vec<f32>, host: &mut Vec<f32>) -> Result<()> {
        if host.is_empty() {
            *host = frozen;
        }
        Ok(())
    }
    fn master_from_host(&self, host: &mut Vec<f32>) -> Result<Vec<f32>> {
        Ok(std::mem::take(host))
    }
    fn lend_to_host(&self, master: &mut Vec<f32>, host: &mut Vec<f32>) -> Result<()> {
        if master.is_empty() {
            // Lent already: the host holds them.
            return Ok(());
        }
        std::mem::swap(master, host);
        master.clear();
        Ok(())
    }
    fn return_from_host(&self, master: &mut Vec<f32>, host: &mut Vec<f32>) -> Result<()> {
        if master.is_empty() {
            *master = std::mem::take(host);
        }
        Ok(())
    }
    fn refresh_weights(&self, _copy: &mut Option<Vec<f32>>, _master: &Vec<f32>) -> Result<()> {
        Ok(())
    }
    fn forward_weights<'a>(
        master: &'a Vec<f32>,
        _copy: &'a Option<Vec<f32>>,
    ) -> Result<&'a Vec<f32>> {
        Ok(master)
    }
    fn adamw_update(
        &self,
        params: &mut Vec<f32>,
        previous: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        grads: &Vec<f32>,
        copy: Option<&mut Vec<f32>>,
        r: Range<usize>,
        h: AdamW,
    ) -> Result<()> {
        let p = params.len();
        let mut lens = vec![previous.len(), m.len(), v.len(), grads.len()];
        lens.extend(copy.as_ref().map(|c| c.len()));
        check_lens("adamw_update", &lens, p)?;
        if r.start > r.end || r.end > p {
            bail!("adamw_update: {r:?} of {p} parameters");
        }
        adamw::adamw_update(
            &mut params[r.clone()],
            &mut previous[r.clone()],
            &mut m[r.clone()],
            &mut v[r.clone()],
            &grads[r.clone()],
            copy.map(|c| &mut c[r]),
            h,
        )
    }
    fn sum_squares(&self, x: &Vec<f32>) -> Result<f64> {
        Ok(adamw::sum_squares(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::randn;

    /// The op's frozen-weight form: the same dinp, the weight's gradient never touched;
    /// a bias gradient without the weight's is refused.
    #[test]
    fn a_frozen_weights_backward_gives_dinp_alone() {
        let (n, c, oc) = (40, 33, 21);
        let (inp, weight, dout) = (randn(n * c, 5), randn(oc * c, 6), randn(n * oc, 7));
        let cpu = Cpu::F32;
        let (mut full, mut dw) = (vec![0.0; n * c], vec![0.0; oc * c]);
        cpu.matmul_backward(
            &mut full,
            Some(&mut dw),
            None,
            &dout,
            &inp,
            &weight,
            n,
            c,
            oc,
        )
        .unwrap();
        let mut alone = vec![f32::NAN; n * c];
        cpu.matmul_backward(&mut alone, None, None, &dout, &inp, &weight, n, c, oc)
            .unwrap();
        assert!(alone == full);
        assert!(dw.iter().any(|x| *x != 0.0));
        let mut db = vec![0.0; oc];
        let e = cpu
            .matmul_backward(
                &mut alone,
                None,
                Some(&mut db),
                &dout,
                &inp,
                &weight,
                n,
                c,
                oc,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("bias gradient without the weight's"),
            "{e}"
        );
    }
}
