use super::convert::to_bf16;
use super::*;
use crate::backend::cpu::testutil::randn;

fn rounded(x: f32) -> f64 {
    f64::from(f32::from_bits(u32::from(to_bf16(x)) << 16))
}

/// The three operand layouts of the Linear products: forward (lhs rows contiguous, rhs a
/// weight read transposed), dinp (both row-major) and dweight (lhs read transposed).
#[derive(Clone, Copy, Debug)]
enum Layout {
    Forward,
    Dinp,
    Dweight,
}

struct Case {
    lhs: Vec<f32>,
    rhs: Vec<f32>,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
}

impl Case {
    fn new(layout: Layout, m: usize, n: usize, k: usize, seed: u64) -> Case {
        Case {
            lhs: randn(m * k, seed),
            rhs: randn(k * n, seed + 1),
            layout,
            m,
            n,
            k,
        }
    }

    /// lhs stored (m, k) or, for dweight, (k, m); rhs stored (n, k) for forward, else (k, n).
    fn operands(&self) -> (Strided, Strided) {
        let (m, n, k) = (self.m, self.n, self.k);
        match self.layout {
            Layout::Forward => (Strided::new(&self.lhs, k, 1), Strided::new(&self.rhs, 1, k)),
            Layout::Dinp => (Strided::new(&self.lhs, k, 1), Strided::new(&self.rhs, n, 1)),
            Layout::Dweight => (Strided::new(&self.lhs, 1, m), Strided::new(&self.rhs, n, 1)),
        }
    }

    fn at(s: Strided, data: &[f32], i: usize, j: usize) -> f32 {
        data[i * s.rs + j * s.cs]
    }

    /// (sum of bf16-rounded products in f64, sum of |products| of the f32 values, exact
    /// f32 product) of element (i, j).
    fn reference(&self, i: usize, j: usize) -> (f64, f64, f64) {
        let (a, b) = self.operands();
        let (mut bf, mut mag, mut exact) = (0.0, 0.0, 0.0);
        for l in 0..self.k {
            let x = Case::at(a, &self.lhs, i, l);
            let y = Case::at(b, &self.rhs, l, j);
            bf += rounded(x) * rounded(y);
            mag += f64::from(x).abs() * f64::from(y).abs();
            exact += f64::from(x) * f64::from(y);
        }
        (bf, mag, exact)
    }

    /// The product into a buffer with row stride n + 3 prefilled with `start`.
    fn run(&self, path: Bf16Path, accumulate: bool, start: f32) -> Vec<f32> {
        let rs = self.n + 3;
        let mut dst = vec![start; self.m * rs];
        let (a, b) = self.operands();
        // SAFETY: the operands are sized by the layout above; dst is (m, rs), n < rs.
        unsafe {
            gemm_bf16(
                path,
                dst.as_mut_ptr(),
                rs,
                accumulate,
                a,
                b,
                self.m,
                self.n,
                self.k,
            )
        };
        dst
    }
}

fn runnable() -> Vec<Bf16Path> {
    let paths: Vec<Bf16Path> = Bf16Path::ALL
        .into_iter()
        .filter(|p| p.available())
        .collect();
    for p in Bf16Path::ALL {
        if !paths.contains(&p) {
            eprintln!("bf16 path {} not tested: this CPU cannot run it", p.name());
        }
    }
    paths
}

const SHAPES: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (3, 17, 5),
    (7, 33, 64),
    (33, 70, 129),
    (16, 16, 32),
    (40, 300, 100),
    (70, 65, 577),
];

#[test]
fn every_path_sums_bf16_rounded_operands_in_f32_on_odd_shapes() {
    for path in runnable() {
        for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
            for layout in [Layout::Forward, Layout::Dinp, Layout::Dweight] {
                let case = Case::new(layout, m, n, k, 10 * s as u64);
                for accumulate in [false, true] {
                    let start = 0.25;
                    let got = case.run(path, accumulate, start);
                    for i in 0..m {
                        for j in 0..n + 3 {
                            let g = f64::from(got[i * (n + 3) + j]);
                            if j >= n {
                                assert_eq!(g, f64::from(start), "{path:?} wrote past column n");
                                continue;
                            }
                            let (bf, mag, exact) = case.reference(i, j);
                            let base = if accumulate { f64::from(start) } else { 0.0 };
                            // f32 sums of exact bf16 products: a few f32 ulps of the terms.
                            let tol = 1e-6 * (mag + 1.0) * (k as f64).sqrt();
                            let what = format!("{path:?} {layout:?} ({m},{n},{k}) [{i},{j}]");
                            assert!((g - base - bf).abs() <= tol, "{what}: {g} vs {}", base + bf);
                            // And against f32 operands: bf16 rounding, 2^-9 relative each.
                            assert!(
                                (g - base - exact).abs() <= 2.0 * mag / 256.0 + 1e-6,
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_row_does_not_depend_on_the_others_nor_on_the_thread_count() {
    for path in runnable() {
        let case = Case::new(Layout::Forward, 45, 300, 200, 7);
        let all = case.run(path, false, 0.0);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let serial = one_thread.install(|| case.run(path, false, 0.0));
        assert_eq!(all, serial, "{path:?}: threads changed the result");
        let rs = case.n + 3;
        for i in [0, 17, 44] {
            let single = Case {
                lhs: case.lhs[i * case.k..(i + 1) * case.k].to_vec(),
                rhs: case.rhs.clone(),
                layout: Layout::Forward,
                m: 1,
                n: case.n,
                k: case.k,
            };
            let got = single.run(path, false, 0.0);
            assert_eq!(
                got[..case.n],
                all[i * rs..i * rs + case.n],
                "{path:?} row {i}"
            );
        }
    }
}

#[test]
fn the_paths_agree() {
    let paths = runnable();
    let case = Case::new(Layout::Dinp, 37, 50, 300, 3);
    let want = case.run(Bf16Path::Portable, false, 0.0);
    for path in paths {
        let got = case.run(path, false, 0.0);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{path:?}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn an_empty_inner_dimension_gives_zeros_or_leaves_the_sum() {
    for path in runnable() {
        let case = Case::new(Layout::Forward, 3, 4, 0, 1);
        assert!(case
            .run(path, false, 5.0)
            .chunks(7)
            .all(|r| r[..4] == [0.0; 4]));
        assert!(case.run(path, true, 5.0).iter().all(|&x| x == 5.0));
    }
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
    assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert!(f32::from_bits(u32::from(to_bf16(f32::NAN)) << 16).is_nan());
}

#[test]
fn a_packed_rhs_gives_the_same_products_bit_for_bit() {
    for path in runnable() {
        for &(m, n, k) in &[(3, 17, 5), (40, 300, 100), (70, 65, 577)] {
            for layout in [Layout::Forward, Layout::Dinp] {
                let case = Case::new(layout, m, n, k, 5);
                let want = case.run(path, true, 0.5);
                let (a, b) = case.operands();
                let rs = n + 3;
                let mut got = vec![0.5; m * rs];
                // SAFETY: as in Case::run.
                unsafe {
                    let packed = PackedRhs::new(b, k, n);
                    gemm_bf16_packed(path, got.as_mut_ptr(), rs, true, a, &packed, m);
                }
                assert_eq!(got, want, "{path:?} {layout:?} ({m},{n},{k})");
            }
        }
    }
}
