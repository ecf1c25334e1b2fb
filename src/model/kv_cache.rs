//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, each (T, Hkv, D).

use crate::backend::cpu::attention::KvView;

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
