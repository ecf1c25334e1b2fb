//! The key/value cache of one sequence: per layer, the rotated keys and the values of every
//! position so far, each (T, Hkv, D). A sample can continue its prompt's cache without a
//! copy: the prompt's positions stay in the shared prompt cache, the sample's own after it.

use super::attention_rows::KvView;
use std::ops::Range;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct KvCache {
    /// Positions 0..P, shared with the other samples of a prompt (read only).
    prefix: Option<Arc<KvCache>>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize) -> Self {
        KvCache {
            prefix: None,
            k: vec![vec![]; n_layers],
            v: vec![vec![]; n_layers],
            kv_dim,
        }
    }

    /// A cache that continues `prompt` without copying it, with room for `extra` positions
    /// of its own. A prompt that itself continues another is copied into one piece first.
    pub fn continuing(prompt: Arc<KvCache>, extra: usize) -> KvCache {
        let prompt = if prompt.prefix.is_some() {
            Arc::new(prompt.clone_with_room(0))
        } else {
            prompt
        };
        let layers = prompt.k.len();
        let room = || vec![Vec::with_capacity(extra * prompt.kv_dim); layers];
        KvCache {
            k: room(),
            v: room(),
            kv_dim: prompt.kv_dim,
            prefix: Some(prompt),
        }
    }

    /// Positions held (those of the last layer, which is written last).
    pub fn len(&self) -> usize {
        let own = self.k.last().map_or(0, |k| k.len() / self.kv_dim);
        own + self.prefix.as_ref().map_or(0, |p| p.len())
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
        let mut view = KvView::new(&self.k[layer], &self.v[layer]);
        if let Some(p) = &self.prefix {
            (view.prefix_k, view.prefix_v) = (&p.k[layer], &p.v[layer]);
        }
        view
    }

    /// Reserves room for `extra` more positions in every layer.
    pub fn reserve(&mut self, extra: usize) {
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.reserve(extra * self.kv_dim);
            v.reserve(extra * self.kv_dim);
        }
    }

    /// A copy in one piece (a shared prefix copied in) with room for `extra` more
    /// positions, allocated once.
    pub fn clone_with_room(&self, extra: usize) -> KvCache {
        let copy = |own: &[Vec<f32>], prefix: Option<&[Vec<f32>]>| -> Vec<Vec<f32>> {
            own.iter()
                .enumerate()
                .map(|(layer, l)| {
                    let before = prefix.map_or(&[][..], |p| &p[layer]);
                    let mut c = Vec::with_capacity(before.len() + l.len() + extra * self.kv_dim);
                    c.extend_from_slice(before);
                    c.extend_from_slice(l);
                    c
                })
                .collect()
        };
        let prefix = self.prefix.as_deref();
        KvCache {
            prefix: None,
            k: copy(&self.k, prefix.map(|p| &p.k[..])),
            v: copy(&self.v, prefix.map(|p| &p.v[..])),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(layers: usize, kvd: usize, positions: usize, salt: f32) -> KvCache {
        let mut c = KvCache::new(layers, kvd);
        for layer in 0..layers {
            let k: Vec<f32> = (0..positions * kvd).map(|i| salt + i as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            c.append(layer, &k, &v);
        }
        c
    }

    #[test]
    fn a_continuing_cache_holds_the_prompt_then_its_own_rows() {
        let (layers, kvd) = (2, 3);
        let prompt = Arc::new(filled(layers, kvd, 4, 0.0));
        let mut a = KvCache::continuing(Arc::clone(&prompt), 8);
        let mut b = KvCache::continuing(Arc::clone(&prompt), 8);
        assert_eq!((a.len(), b.len()), (4, 4));
        a.append(0, &[7.0; 3], &[8.0; 3]);
        a.append(1, &[7.0; 3], &[8.0; 3]);
        b.append(0, &[9.0; 6], &[1.0; 6]);
        b.append(1, &[9.0; 6], &[1.0; 6]);
        assert_eq!((a.len(), b.len(), prompt.len()), (5, 6, 4));
        // In one piece: the prompt's rows, then the sample's; the prompt is untouched.
        let joined = a.clone_with_room(0);
        let whole = joined.view(1);
        assert_eq!(whole.positions(kvd), 5);
        assert!(whole.prefix_k.is_empty());
        assert_eq!(&whole.k[..12], prompt.view(1).k);
        assert_eq!(&whole.k[12..], &[7.0; 3]);
        assert_eq!(a.view(1).joined(), (whole.k.to_vec(), whole.v.to_vec()));
        assert_eq!(b.view(0).positions(kvd), 6);
        assert_eq!(b.view(0).prefix_v, prompt.view(0).v);
        // A cache continuing a continuing one is flattened first.
        let c = KvCache::continuing(Arc::new(a), 1);
        assert_eq!(c.len(), 5);
        assert_eq!(c.view(1).prefix_k, whole.k);
    }
}
