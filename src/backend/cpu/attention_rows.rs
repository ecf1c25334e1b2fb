//! What the row-by-row and the tiled attention paths share: a sequence's key/value cache
//! view, the output block of one row's query heads, the scores' scale and a head's softmax.

use super::math::exp;

/// The key/value cache of one sequence in one layer: each (T, Hkv, D).
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
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
