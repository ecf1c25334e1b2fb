//! The op set as one interface, so the model's graph is written once (`model::graph`) and
//! run on either device: `cpu::Cpu` (f32, the oracle) and `cuda::CudaOps<T>` (bf16 or f32
//! storage on a GPU). An implementation is only kernels and buffer management; which op runs
//! when, on which buffer and with which shape is the graph's business.
//!
//! Conventions, llm.c's: outputs first, then saved state, inputs, weights, then dimensions;
//! parameter gradients accumulate (`+=`), activation gradients are assigned. Activations
//! and weights are kept in the storage type `S`; reductions (lse, log-probs) and gradients
//! of parameters are f32. Every op checks its shapes and returns an error, never panics.
//! Shape letters as in `backend`.

use super::rope_table::RopeTable;
use super::settings::{AdamW, AttentionDims, Columns};
use super::storage::{Elem, Storage};
use anyhow::Result;
use std::ops::Range;

/// d(loss)/d(logp) of a loss group's rows, from their log-probs (on the host):
/// `grad(group, logp)`.
pub type RowGrad<'a> = dyn FnMut(usize, &[f32]) -> Result<Vec<f32>> + 'a;

/// Two scratch buffers of the storage type.
pub type Scratch2<'a, O> = (
    &'a mut <O as Ops>::Buf<<O as Ops>::S>,
    &'a mut <O as Ops>::Buf<<O as Ops>::S>,
);

pub trait Ops {
    /// The storage type of weights and activations.
    type S: Storage;
    /// An owned buffer of the device with a length that can change within what it was
    /// given (`set_len`): the graph's activations live in such buffers from pass to pass.
    type Buf<E: Elem>;
    /// A read-only view of part of the weights.
    type W<'a>: Copy;
    /// A writable view of part of the f32 parameter gradients.
    type G<'a>;
    /// A packed batch's token ids, as the embedding's forward and backward read them.
    type Tokens;
    /// Where each sequence of a packed batch starts and ends, as attention reads it.
    type Seqs;
    /// The rotary tables of a batch's rows.
    type Rope;
    /// The working memory of the chunked LM-head log-probs.
    type LogitsScratch;
    /// The KV caches one inference pass fills (a prefill) or continues (a decode step),
    /// with where each of the pass's rows goes.
    type Caches<'c>;

    // Memory.

    /// A zeroed buffer of n elements, for `stage` (named by an out-of-memory error).
    fn alloc<E: Elem>(&self, n: usize, stage: &str) -> Result<Self::Buf<E>>;
    /// Sets a buffer's length (its contents are then unspecified): the CPU grows it; a
    /// device buffer must have been allocated with room for it.
    fn set_len<E: Elem>(&self, buf: &mut Self::Buf<E>, n: usize) -> Result<()>;
    fn len<E: Elem>(buf: &Self::Buf<E>) -> usize;
    /// Sets a buffer's length as `set_len`, first growing a device buffer that is too small
    /// (for buffers whose largest size is not known up front, such as a head's logits).
    fn reserve<E: Elem>(&self, buf: &mut Self::Buf<E>, n: usize, stage: &str) -> Result<()>;
    fn upload<E: Elem>(&self, host: &[E], stage: &str) -> Result<Self::Buf<E>>;
    fn download<E: Elem>(&self, buf: &Self::Buf<E>) -> Result<Vec<E>>;
    fn zero<E: Elem>(&self, buf: &mut Self::Buf<E>) -> Result<()>;
    fn copy<E: Elem>(&self, dst: &mut Self::Buf<E>, src: &Self::Buf<E>) -> Result<()>;
    /// The weights `r` of a flat parameter buffer.
    fn weights<'a>(buf: &'a Self::Buf<Self::S>, r: Range<usize>) -> Self::W<'a>;
    /// The gradients `r` of a flat gradient buffer.
    fn grads<'a>(buf: &'a mut Self::Buf<f32>, r: Range<usize>) -> Self::G<'a>;
    /// The gradients of two adjacent ranges (`b` starts where `a` ends): a fused weight and
    /// the bias that follows it.
    fn grads_pair<'a>(
        buf: &'a mut Self::Buf<f32>,
        a: Range<usize>,
        b: Range<usize>,
    ) -> Result<(Self::G<'a>, Self::G<'a>)>;
    fn tokens(&self, ids: &[u32]) -> Result<Self::Tokens>;
    /// seqs: the rows of each sequence, consecutive from row 0.
    fn seqs(&self, seqs: &[Range<usize>]) -> Result<Self::Seqs>;
    /// The rotary tables of a batch's rows, made on the host (the CPU keeps them as they are).
    fn rope(&self, table: RopeTable) -> Result<Self::Rope>;
    /// Working memory for the log-probs over a vocabulary of v, `chunk_rows` rows of logits
    /// at a time (None: the device's default, about what fits its memory well).
    fn logits_scratch(&self, v: usize, chunk_rows: Option<usize>) -> Result<Self::LogitsScratch>;

    // The ops.

    /// out: (N, C) the rows of `table`: (V, C) for tokens: (N).
    fn embedding_forward(
        &self,
        out: &mut Self::Buf<Self::S>,
        tokens: &Self::Tokens,
        table: Self::W<'_>,
        c: usize,
    ) -> Result<()>;
    fn embedding_backward(
        &self,
        dtable: Self::G<'_>,
        dout: &Self::Buf<Self::S>,
        tokens: &Self::Tokens,
        c: usize,
    ) -> Result<()>;
    /// out, inp: (N, C); weight: (C). The backward: dinp assigned, dweight accumulated
    /// (None: the weight is frozen, its gradient is not formed).
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf<Self::S>,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        eps: f32,
        c: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dinp: &mut Self::Buf<Self::S>,
        dweight: Option<Self::G<'_>>,
        dout: &Self::Buf<Self::S>,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        eps: f32,
        c: usize,
    ) -> Result<()>;
    /// out: (N, OC) = inp: (N, C) times weight: (OC, C) transposed, plus bias: (OC).
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &self,
        out: &mut Self::Buf<Self::S>,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        bias: Option<Self::W<'_>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    /// dinp: (N, C) = dout @ weight, assigned; dweight (OC, C) += dout^T @ inp and dbias
    /// (OC) += dout's column sums. `dweight` None: the weight is frozen, its gradient is
    /// never formed (nor the bias's: `dbias` must be None too).
    fn matmul_backward(
        &self,
        dinp: &mut Self::Buf<Self::S>,
        dweight: Option<Self::G<'_>>,
        dbias: Option<Self::G<'_>>,
        dout: &Self::Buf<Self::S>,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// x += y, both (N, C).
    fn residual_forward(&self, x: &mut Self::Buf<Self::S>, y: &Self::Buf<Self::S>) -> Result<()>;
    /// Rotates x: (N, heads, D) in place by the angles of its rows.
    fn rope_forward(
        &self,
        x: &mut Self::Buf<Self::S>,
        rope: &Self::Rope,
        heads: usize,
    ) -> Result<()>;
    fn rope_backward(
        &self,
        dx: &mut Self::Buf<Self::S>,
        rope: &Self::Rope,
        heads: usize,
    ) -> Result<()>;
    /// out: (N, I) = silu(gate) * up from gate_up: (N, 2I), each row gate then up.
    fn swiglu_forward(
        &self,
        out: &mut Self::Buf<Self::S>,
        gate_up: &Self::Buf<Self::S>,
        im: usize,
    ) -> Result<()>;
    fn swiglu_backward(
        &self,
        dgate_up: &mut Self::Buf<Self::S>,
        dout: &Self::Buf<Self::S>,
        gate_up: &Self::Buf<Self::S>,
        im: usize,
    ) -> Result<()>;
    /// Causal attention of packed sequences over their own keys: out: (N, H*D), lse: (N, H);
    /// q: (N, H*D), k, v: (N, Hkv*D).
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf<Self::S>,
        lse: &mut Self::Buf<f32>,
        q: &Self::Buf<Self::S>,
        k: &Self::Buf<Self::S>,
        v: &Self::Buf<Self::S>,
        seqs: &Self::Seqs,
        dims: AttentionDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf<Self::S>,
        dk: &mut Self::Buf<Self::S>,
        dv: &mut Self::Buf<Self::S>,
        dout: &Self::Buf<Self::S>,
        q: &Self::Buf<Self::S>,
        k: &Self::Buf<Self::S>,
        v: &Self::Buf<Self::S>,
        out: &Self::Buf<Self::S>,
        lse: &Self::Buf<f32>,
        seqs: &Self::Seqs,
        dims: AttentionDims,
    ) -> Result<()>;
    /// Writes the pass's keys and values k, v: (N, Hkv*D) into `layer` of the caches.
    fn cache_fill(
        &self,
        caches: &mut Self::Caches<'_>,
        layer: usize,
        k: &Self::Buf<Self::S>,
        v: &Self::Buf<Self::S>,
    ) -> Result<()>;
    /// New rows continuing the caches: their keys and values k, v: (N, Hkv*D) are written
    /// into `layer` of the caches, then q: (N, H*D) attends over each row's cache up to its
    /// position. out: (N, H*D), lse: (N, H).
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        out: &mut Self::Buf<Self::S>,
        lse: &mut Self::Buf<f32>,
        q: &Self::Buf<Self::S>,
        k: &Self::Buf<Self::S>,
        v: &Self::Buf<Self::S>,
        caches: &mut Self::Caches<'_>,
        layer: usize,
        dims: AttentionDims,
    ) -> Result<()>;
    /// As `matmul_forward` without a bias, the output in f32: the logits of a head.
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward_f32(
        &self,
        out: &mut Self::Buf<f32>,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// Splits the rows of qkv: (N, QD + 2 KVD) into q: (N, QD), k and v: (N, KVD).
    fn qkv_split(
        &self,
        q: &mut Self::Buf<Self::S>,
        k: &mut Self::Buf<Self::S>,
        v: &mut Self::Buf<Self::S>,
        qkv: &Self::Buf<Self::S>,
        qd: usize,
        kvd: usize,
    ) -> Result<()>;
    /// The inverse of `qkv_split`.
    fn qkv_join(
        &self,
        qkv: &mut Self::Buf<Self::S>,
        q: &Self::Buf<Self::S>,
        k: &Self::Buf<Self::S>,
        v: &Self::Buf<Self::S>,
        qd: usize,
        kvd: usize,
    ) -> Result<()>;
    /// dst's block (+)= scale * src's block: `width` columns at `to` of each of `rows` rows
    /// of dst, from those at `from` of src; added when `accumulate`, else assigned (LoRA's
    /// scaled update of one projection's block of a fused product, and that block of its
    /// gradient).
    #[allow(clippy::too_many_arguments)]
    fn scale_columns(
        &self,
        dst: &mut Self::Buf<Self::S>,
        to: Columns,
        src: &Self::Buf<Self::S>,
        from: Columns,
        rows: usize,
        width: usize,
        scale: f32,
        accumulate: bool,
    ) -> Result<()>;
    /// dst (+)= dropout(src): inverted dropout with probability p, its mask a function of
    /// (seed, element index) alone (so a backward draws it again); added when
    /// `accumulate`, else assigned. dst and src hold the same number of elements.
    fn dropout(
        &self,
        dst: &mut Self::Buf<Self::S>,
        src: &Self::Buf<Self::S>,
        p: f32,
        seed: u64,
        accumulate: bool,
    ) -> Result<()>;
    /// out[:, cols] += scale * inp (N, C) @ weight (OC, C)^T: a product added into a block of
    /// OC columns of a wider output (a LoRA adapter's share of a fused projection).
    /// `scratch` may hold the product on its way: the default goes through
    /// `matmul_forward` and `scale_columns`; the CPU adds in place.
    #[allow(clippy::too_many_arguments)]
    fn add_product(
        &self,
        out: &mut Self::Buf<Self::S>,
        cols: Columns,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        n: usize,
        c: usize,
        oc: usize,
        scale: f32,
        scratch: &mut Self::Buf<Self::S>,
    ) -> Result<()> {
        self.set_len(scratch, n * oc)?;
        self.matmul_forward(scratch, inp, weight, None, n, c, oc)?;
        let dense = Columns::dense(oc);
        self.scale_columns(out, cols, scratch, dense, n, oc, scale, true)
    }
    /// The backward of `add_product`: dinp (N, C) = scale * dout[:, cols] @ weight, added
    /// when `accumulate` (else assigned); dweight (OC, C) += scale * dout[:, cols]^T @ inp.
    /// The default goes through a scaled copy of the block (`scratch.0`) and, when it
    /// accumulates, the input gradient's (`scratch.1`).
    #[allow(clippy::too_many_arguments)]
    fn add_product_backward(
        &self,
        dinp: &mut Self::Buf<Self::S>,
        accumulate: bool,
        dweight: Self::G<'_>,
        dout: &Self::Buf<Self::S>,
        cols: Columns,
        inp: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        n: usize,
        c: usize,
        oc: usize,
        scale: f32,
        scratch: Scratch2<'_, Self>,
    ) -> Result<()> {
        let (dy, dx) = scratch;
        self.set_len(dy, n * oc)?;
        let dense = Columns::dense(oc);
        self.scale_columns(dy, dense, dout, cols, n, oc, scale, false)?;
        if !accumulate {
            return self.matmul_backward(dinp, Some(dweight), None, dy, inp, weight, n, c, oc);
        }
        self.set_len(dx, n * c)?;
        self.matmul_backward(dx, Some(dweight), None, dy, inp, weight, n, c, oc)?;
        self.residual_forward(dinp, dx)
    }
    /// dst row i = src row rows[i]; dst: (R, C).
    fn gather_rows(
        &self,
        dst: &mut Self::Buf<Self::S>,
        src: &Self::Buf<Self::S>,
        rows: &Self::Buf<i32>,
        c: usize,
    ) -> Result<()>;
    /// dst row rows[i] = src row i; the other rows of dst are left as they are.
    fn scatter_rows(
        &self,
        dst: &mut Self::Buf<Self::S>,
        src: &Self::Buf<Self::S>,
        rows: &Self::Buf<i32>,
        c: usize,
    ) -> Result<()>;
    /// logp: (M) log-softmax(hidden: (M, C) times weight: (V, C) transposed) at targets:
    /// (M); lse: (M) the log of each row's normaliser. Logits are made a chunk at a time.
    #[allow(clippy::too_many_arguments)]
    fn logprobs_forward(
        &self,
        logp: &mut Self::Buf<f32>,
        lse: &mut Self::Buf<f32>,
        hidden: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        targets: &Self::Buf<u32>,
        c: usize,
        v: usize,
        scratch: &mut Self::LogitsScratch,
    ) -> Result<()>;
    /// dhidden: (M, C) assigned and dweight: (V, C) accumulated (None: a frozen head) from
    /// dlogp: (M), the logits recomputed from hidden.
    #[allow(clippy::too_many_arguments)]
    fn logprobs_backward(
        &self,
        dhidden: &mut Self::Buf<Self::S>,
        dweight: Option<Self::G<'_>>,
        dlogp: &Self::Buf<f32>,
        hidden: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        targets: &Self::Buf<u32>,
        lse: &Self::Buf<f32>,
        c: usize,
        v: usize,
        scratch: &mut Self::LogitsScratch,
    ) -> Result<()>;
    /// Forward and backward over loss groups: `groups` are consecutive row ranges covering
    /// 0..M, and `grad(g, logp)` turns the log-probs of group g's rows (on the host) into
    /// d(loss)/d(logp) of those rows. logp: (M) written; dhidden: (M, C) assigned; dweight
    /// accumulated (None: a frozen head). The CPU runs groups that fit a chunk of logits in one pass (logits
    /// kept between the two halves); a device computes every log-prob, asks `grad` of each
    /// group, then recomputes the logits for the backward.
    #[allow(clippy::too_many_arguments)]
    fn logprobs_with_grad(
        &self,
        logp: &mut Self::Buf<f32>,
        dhidden: &mut Self::Buf<Self::S>,
        dweight: Option<Self::G<'_>>,
        hidden: &Self::Buf<Self::S>,
        weight: Self::W<'_>,
        targets: &Self::Buf<u32>,
        c: usize,
        v: usize,
        scratch: &mut Self::LogitsScratch,
        groups: &[Range<usize>],
        grad: &mut RowGrad,
    ) -> Result<()>;

    // The optimizer's state and the weights' way to and from the host model.

    /// A LoRA run's frozen model weights, in the storage type, from the host model's f32
    /// ones: the CPU takes them (`host` is left empty until `frozen_to_host`); a device
    /// converts and copies them (the host keeps its own).
    fn frozen_from_host(&self, host: &mut Vec<f32>) -> Result<Self::Buf<Self::S>>;
    /// Gives the frozen weights back at the end of the run (the CPU moves them back where
    /// `host` is empty; a device frees its copy).
    fn frozen_to_host(&self, frozen: Self::Buf<Self::S>, host: &mut Vec<f32>) -> Result<()>;
    /// The f32 master weights from the host model's: the CPU takes them (`host` is left
    /// empty until `lend_to_host`); a device copies them.
    fn master_from_host(&self, host: &mut Vec<f32>) -> Result<Self::Buf<f32>>;
    /// Puts the master weights where the host model reads them (a checkpoint, the end of
    /// training): the CPU moves them there, a device copies them.
    fn lend_to_host(&self, master: &mut Self::Buf<f32>, host: &mut Vec<f32>) -> Result<()>;
    /// Undoes `lend_to_host` before training goes on (the CPU moves them back).
    fn return_from_host(&self, master: &mut Self::Buf<f32>, host: &mut Vec<f32>) -> Result<()>;
    /// Writes the storage-type copy of the master weights the forward reads, where the
    /// device keeps one (`copy` stays None on the CPU, whose master serves as it is).
    fn refresh_weights(
        &self,
        copy: &mut Option<Self::Buf<Self::S>>,
        master: &Self::Buf<f32>,
    ) -> Result<()>;
    /// The weights the forward reads: the copy where there is one, else the master.
    fn forward_weights<'a>(
        master: &'a Self::Buf<f32>,
        copy: &'a Option<Self::Buf<Self::S>>,
    ) -> Result<&'a Self::Buf<Self::S>>;
    /// One AdamW update of params[r] (f32) in place: `previous` receives the weights before
    /// it, m and v are the moments, and `copy` (where the device keeps one) the new weights
    /// in the storage type.
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        &self,
        params: &mut Self::Buf<f32>,
        previous: &mut Self::Buf<f32>,
        m: &mut Self::Buf<f32>,
        v: &mut Self::Buf<f32>,
        grads: &Self::Buf<f32>,
        copy: Option<&mut Self::Buf<Self::S>>,
        r: Range<usize>,
        h: AdamW,
    ) -> Result<()>;
    /// The sum of squares of x, in f64 (the gradient norm's).
    fn sum_squares(&self, x: &Self::Buf<f32>) -> Result<f64>;
}
