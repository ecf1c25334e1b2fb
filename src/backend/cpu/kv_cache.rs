//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, each (T, Hkv, D).

use super::attention_rows::KvView;
use std::ops::Range;

#[derive(Clone, Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize) -> Self {
        KvCache {
            k: vec![vec![]; n_layers],
            v: vec![vec![]; n_layers],
            kv_dim,
        }
    }

    /// Positions held (those of the last layer, which is written last).
    pub fn len(&self) -> usize {
        self.k.last().map_or(0, |k| k.len() / self.kv_dim)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends rows k, v: (n, Hkv*D) to one layer.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    pub fn view(&self, layer: usize) -> KvView<'_> {
        KvView {
            k: &self.k[layer],
            v: &self.v[layer],
        }
    }

    /// Reserves room for `extra` more positions in every layer.
    pub fn reserve(&mut self, extra: usize) {
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.reserve(extra * self.kv_dim);
            v.reserve(extra * self.kv_dim);
        }
    }

    /// A copy with room for `extra` more positions, allocated once.
    pub fn clone_with_room(&self, extra: usize) -> KvCache {
        let copy = |layers: &[Vec<f32>]| -> Vec<Vec<f32>> {
            layers
                .iter()
                .map(|l| {
                    let mut c = Vec::with_capacity(l.len() + extra * self.kv_dim);
                    c.extend_from_slice(l);
                    c
                })
                .collect()
        };
        KvCache {
            k: copy(&self.k),
            v: copy(&self.v),
            kv_dim: self.kv_dim,
        }
    }
}

/// The caches one pass continues (a decode step) or fills (a prefill): one per sequence,
/// with the rows of the packed pass that belong to each.
pub struct SeqCaches<'c> {
    pub(crate) caches: Vec<&'c mut KvCache>,
    /// Rows of each sequence in the pass.
    pub(crate) rows: Vec<Range<usize>>,
    /// The sequence and position of each row: (N) each.
    pub(crate) row_seq: Vec<usize>,
    pub(crate) row_pos: Vec<usize>,
}

impl<'c> SeqCaches<'c> {
    /// `new_rows[s]` new tokens continue `caches[s]`, packed in order.
    pub fn new(caches: Vec<&'c mut KvCache>, new_rows: &[usize]) -> SeqCaches<'c> {
        assert_eq!(caches.len(), new_rows.len(), "one cache per sequence");
        let mut out = SeqCaches {
            caches,
            rows: vec![],
            row_seq: vec![],
            row_pos: vec![],
        };
        let mut row = 0;
        for (s, &n) in new_rows.iter().enumerate() {
            let start = out.caches[s].len();
            out.rows.push(row..row + n);
            out.row_seq.extend(std::iter::repeat_n(s, n));
            out.row_pos.extend(start..start + n);
            row += n;
        }
        out
    }

    /// The positions of the pass's rows.
    pub fn positions(&self) -> &[usize] {
        &self.row_pos
    }

    /// Appends each sequence's rows of k, v: (N, Hkv*D) to its cache's `layer`.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32], kvd: usize) {
        for (cache, r) in self.caches.iter_mut().zip(&self.rows) {
            let r = r.start * kvd..r.end * kvd;
            cache.append(layer, &k[r.clone()], &v[r]);
        }
    }
}
