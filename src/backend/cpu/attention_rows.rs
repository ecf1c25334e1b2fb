//! What the row-by-row and the tiled attention paths share: a sequence's key/value cache
//! view, the output block of one row's query heads, the scores' scale and a head's softmax.

use super::math::exp;

/// Keys, values and positions of one piece of a cache: rows t < n at t * Hkv * D.
pub(super) type Piece<'a> = (&'a [f32], &'a [f32], usize);

/// The key/value cache of one sequence in one layer, (T, Hkv, D) each: positions 0..P in
/// `prefix_k`/`prefix_v` (a prompt's cache that the prompt's samples share; empty when the
/// cache is the sequence's alone), positions P.. in `k`/`v`.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub prefix_k: &'a [f32],
    pub prefix_v: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl<'a> KvView<'a> {
    /// A cache held in one piece.
    pub fn new(k: &'a [f32], v: &'a [f32]) -> KvView<'a> {
        KvView {
            prefix_k: &[],
            prefix_v: &[],
            k,
            v,
        }
    }

    /// Positions held, for rows of `kvd` = Hkv * D.
    pub fn positions(&self, kvd: usize) -> usize {
        let rows = |k: &[f32], v: &[f32]| k.len().min(v.len()) / kvd;
        rows(self.prefix_k, self.prefix_v) + rows(self.k, self.v)
    }

    /// The two pieces in position order.
    pub(super) fn pieces(&self, kvd: usize) -> [Piece<'a>; 2] {
        let p = self.prefix_k.len().min(self.prefix_v.len()) / kvd;
        let own = self.k.len().min(self.v.len()) / kvd;
        [(self.prefix_k, self.prefix_v, p), (self.k, self.v, own)]
    }

    /// Whether positions come from a shared prefix.
    pub(super) fn has_prefix(&self) -> bool {
        !self.prefix_k.is_empty()
    }

    /// The keys and values in one piece each: (T * Hkv * D).
    pub(super) fn joined(&self) -> (Vec<f32>, Vec<f32>) {
        (
            [self.prefix_k, self.k].concat(),
            [self.prefix_v, self.v].concat(),
        )
    }
}

/// The outputs of one row's query heads that share a kv head: out (group, D), lse (group).
pub(super) struct GroupOut<'a> {
    pub out: &'a mut [f32],
    pub lse: &'a mut [f32],
}

/// The scores' scale, 1/sqrt(D).
pub(super) fn scale(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

/// Scores s of one head in place to their softmax weights, in key order (max, exp, sum,
/// divide); returns the log of the normaliser, max + ln(sum of exp(s - max)).
pub(super) fn softmax_in_place(s: &mut [f32]) -> f32 {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in s.iter_mut() {
        *x = exp(*x - max);
    }
    let sum: f32 = s.iter().sum();
    for x in s.iter_mut() {
        *x /= sum;
    }
    max + sum.ln()
}
