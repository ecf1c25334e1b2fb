//! Copies of a model's Linear weights packed once for the forward products, for a run whose
//! weights do not change (a generation): each decode step would otherwise pack every weight
//! again, and for a few rows that packing costs as much as the products or more.
//!
//! A weight is found by its place in memory: the cache belongs to one `Cpu` value, made
//! for one run over a model borrowed unchanged for all of it (`generate_on`). It costs
//! 2 bytes per weight with bf16 products (`PackedRhs`), 4 with f32 ones (`PackedF32`).

use super::bf16::{PackedRhs, Strided};
use super::packed_f32::PackedF32;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// (address, length) of a weight slice to its forward packing, of type P.
pub struct PackedWeights<P = PackedRhs> {
    packed: Mutex<HashMap<(usize, usize), Arc<P>>>,
}

impl<P> Default for PackedWeights<P> {
    fn default() -> Self {
        PackedWeights {
            packed: Mutex::default(),
        }
    }
}

impl<P> std::fmt::Debug for PackedWeights<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let n = self.packed.lock().map_or(0, |m| m.len());
        write!(f, "PackedWeights({n} weights)")
    }
}

impl PackedWeights<PackedRhs> {
    /// weight (oc, c), packed in bf16 as the forward's rhs (its transpose, (c, oc)): from
    /// the cache, or packed now and kept.
    pub fn forward(&self, weight: &[f32], c: usize, oc: usize) -> Arc<PackedRhs> {
        // SAFETY: weight is (oc, c) (checked by `kept`), read as its transpose.
        self.kept(weight, c, oc, || unsafe {
            PackedRhs::new(Strided::new(weight, 1, c), c, oc)
        })
    }
}

impl PackedWeights<PackedF32> {
    /// weight (oc, c), packed in f32 panels: from the cache, or packed now and kept.
    pub fn forward(&self, weight: &[f32], c: usize, oc: usize) -> Arc<PackedF32> {
        self.kept(weight, c, oc, || PackedF32::new(weight, c, oc))
    }
}

impl<P> PackedWeights<P> {
    fn kept(&self, weight: &[f32], c: usize, oc: usize, pack: impl FnOnce() -> P) -> Arc<P> {
        assert_eq!(weight.len(), c * oc, "weight is (oc, c)");
        let key = (weight.as_ptr() as usize, weight.len());
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        let packed = Arc::new(pack());
        self.lock().insert(key, packed.clone());
        packed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, usize), Arc<P>>> {
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

    /// With f32 products on an AVX-512 CPU, kept packings run the packed f32 kernel: the
    /// gemm crate's products within f32 rounding (another order of the same sums), the
    /// same on every call, with the bias added.
    #[test]
    fn kept_f32_packings_give_the_products_within_rounding() {
        let (n, c, oc) = (5, 70, 45);
        let (inp, weight, bias) = (randn(n * c, 1), randn(oc * c, 2), randn(oc, 3));
        let kept = Cpu::F32.keeping_packed_weights();
        let cached = format!("{:?}", kept);
        if !crate::backend::cpu::packed_f32::available() {
            assert!(cached.contains("packed: None"), "{cached}");
            return;
        }
        let mut want = vec![0.0; n * oc];
        Cpu::F32
            .matmul_forward(&mut want, &inp, &weight, Some(&bias), n, c, oc)
            .unwrap();
        let mut first = vec![f32::NAN; n * oc];
        kept.matmul_forward(&mut first, &inp, &weight, Some(&bias), n, c, oc)
            .unwrap();
        let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
        crate::backend::cpu::testutil::assert_close(&first, &want64, 1e-4, 1e-4);
        let mut again = vec![f32::NAN; n * oc];
        kept.matmul_forward(&mut again, &inp, &weight, Some(&bias), n, c, oc)
            .unwrap();
        assert_eq!(again, first);
        let cached = format!("{:?}", kept);
        assert!(cached.contains("F32(PackedWeights(1 weights))"), "{cached}");
    }
}
