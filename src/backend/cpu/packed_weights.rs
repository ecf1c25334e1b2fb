//! bf16 copies of a model's Linear weights, packed once for the forward products, for a
//! run whose weights do not change (a generation): each decode step would otherwise pack
//! every weight again, and for a few rows that packing costs more than the products.
//!
//! A weight is found by its place in memory: the cache belongs to one `Cpu` value, made
//! for one run over a model borrowed unchanged for all of it (`generate_on`). It costs
//! 2 bytes per Linear weight.

use super::bf16::{PackedRhs, Strided};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// (address, length) of a weight slice to its forward packing.
#[derive(Default)]
pub struct PackedWeights {
    packed: Mutex<HashMap<(usize, usize), Arc<PackedRhs>>>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let n = self.packed.lock().map_or(0, |m| m.len());
        write!(f, "PackedWeights({n} weights)")
    }
}

impl PackedWeights {
    /// weight (oc, c), packed as the forward's rhs (its transpose, (c, oc)): from the cache,
    /// or packed now and kept.
    pub fn forward(&self, weight: &[f32], c: usize, oc: usize) -> Arc<PackedRhs> {
        debug_assert_eq!(weight.len(), c * oc);
        let key = (weight.as_ptr() as usize, weight.len());
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        // SAFETY: weight is (oc, c), read as its transpose.
        let packed = Arc::new(unsafe { PackedRhs::new(Strided::new(weight, 1, c), c, oc) });
        self.lock().insert(key, packed.clone());
        packed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, usize), Arc<PackedRhs>>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.packed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::bf16::Bf16Path;
    use crate::backend::cpu::testutil::randn;
    use crate::backend::cpu::{Cpu, Products};
    use crate::backend::ops::Ops;

    /// Kept packings give the products of packing on every call, bit for bit, on the first
    /// call (packing) and the next ones (from the cache), with and without a bias.
    #[test]
    fn kept_packings_give_the_same_products() {
        let (n, c, oc) = (5, 70, 45);
        let (inp, weight, bias) = (randn(n * c, 1), randn(oc * c, 2), randn(oc, 3));
        for path in Bf16Path::ALL.into_iter().filter(|p| p.available()) {
            let plain = Cpu::new(Products::Bf16(path));
            let kept = plain.keeping_packed_weights();
            for b in [None, Some(bias.as_slice())] {
                let mut want = vec![0.0; n * oc];
                plain
                    .matmul_forward(&mut want, &inp, &weight, b, n, c, oc)
                    .unwrap();
                for call in 0..2 {
                    let mut got = vec![f32::NAN; n * oc];
                    kept.matmul_forward(&mut got, &inp, &weight, b, n, c, oc)
                        .unwrap();
                    assert_eq!(got, want, "{path:?} call {call}");
                }
            }
            let cached = format!("{:?}", kept);
            assert!(cached.contains("PackedWeights(1 weights)"), "{cached}");
        }
    }
}
