//! What the row-by-row and the tiled attention paths share: a sequence's key/value cache
//! view, the output block of one row's query heads, and the scores' scale.

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
