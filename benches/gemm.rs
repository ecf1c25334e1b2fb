//! Our matrix products at the 135m shape's real product shapes (hidden 576, 3 KV heads of
//! 64, intermediate 1536, vocab 49152; a training batch of 2,048 rows): each layer product's
//! forward and backward (dinp = dout W and dweight += dout^T inp, timed together), and one
//! chunk of the LM head as the log-prob pass computes it. One JSON line per product: median
//! ms of 7 runs after 2 warm-ups and the GFLOP/s it gives, for the f32 products and the bf16
//! ones on every path this CPU runs (impl "tpo-engine-bf16-<path>"); then the forward
//! products of one generation decode step (`decode_products`).
//! scripts/bench-gemm.sh runs it beside torch.matmul in f32 and bf16 (scripts/gemm_torch.py).

use std::hint::black_box;
use std::time::Instant;
use tpo_engine::backend::cpu::bf16::Bf16Path;
use tpo_engine::backend::cpu::logprobs::default_chunk_rows;
use tpo_engine::backend::cpu::matmul::{matmul_backward, matmul_forward};
use tpo_engine::backend::cpu::matmul_bf16::{matmul_backward_bf16, matmul_forward_bf16};
use tpo_engine::backend::cpu::packed_f32::{self, PackedF32};
use tpo_engine::backend::rng::Rng;

const N: usize = 2048;
const C: usize = 576;
const KV: usize = 192;
const I: usize = 1536;
const V: usize = 49152;
/// Rows of a decode step of scripts/bench-generate.sh at the 135m shape: 8 prompts x 8 samples.
const DECODE: usize = 64;

fn randn(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| scale * rng.normal()).collect()
}

/// Median seconds of `f` over 7 runs after 2 warm-ups.
fn time(mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[3]
}

fn report(
    imp: &str,
    name: &str,
    pass: &str,
    (n, c, oc): (usize, usize, usize),
    flops: f64,
    secs: f64,
) {
    println!(
        "{{\"impl\":\"{imp}\",\"name\":\"{name}\",\"pass\":\"{pass}\",\"n\":{n},\"c\":{c},\"oc\":{oc},\"ms\":{:.3},\"gflops\":{:.1}}}",
        secs * 1e3,
        flops / secs / 1e9
    );
}

fn main() {
    // criterion's own flags (`--bench`) are passed to every bench binary: ignored here.
    let head_rows = default_chunk_rows(V);
    let shapes = [
        ("qkv_proj", N, C, C + 2 * KV),
        ("o_proj", N, C, C),
        ("gate_up_proj", N, C, 2 * I),
        ("down_proj", N, I, C),
        ("lm_head_chunk", head_rows, C, V),
    ];
    let mut paths: Vec<Option<Bf16Path>> = vec![None];
    paths.extend(
        Bf16Path::ALL
            .into_iter()
            .filter(|p| p.available())
            .map(Some),
    );
    decode_products();
    for (name, n, c, oc) in shapes {
        let inp = randn(n * c, 1.0, 1);
        let weight = randn(oc * c, 0.02, 2);
        let dout = randn(n * oc, 1.0, 3);
        let mut out = vec![0.0f32; n * oc];
        let flops = 2.0 * (n * c * oc) as f64;
        for path in &paths {
            let imp = match path {
                None => "tpo-engine".to_string(),
                Some(p) => format!("tpo-engine-bf16-{}", p.name()),
            };
            let secs = time(|| match *path {
                None => matmul_forward(black_box(&mut out), &inp, &weight, None, n, c, oc).unwrap(),
                Some(p) => {
                    matmul_forward_bf16(p, black_box(&mut out), &inp, &weight, None, n, c, oc)
                        .unwrap()
                }
            });
            report(&imp, name, "forward", (n, c, oc), flops, secs);
            let mut dinp = vec![0.0f32; n * c];
            let mut dweight = vec![0.0f32; oc * c];
            let (di, dw) = (black_box(&mut dinp), black_box(&mut dweight));
            let secs = time(|| match *path {
                None => matmul_backward(di, dw, None, &dout, &inp, &weight, n, c, oc).unwrap(),
                Some(p) => {
                    matmul_backward_bf16(p, di, dw, None, &dout, &inp, &weight, n, c, oc).unwrap()
                }
            });
            report(&imp, name, "backward", (n, c, oc), 2.0 * flops, secs);
        }
    }
}

/// The forward products of one decode step (`DECODE` rows), named "decode_<product>": the
/// gemm crate's (impl "tpo-engine", packing the weight on each call) and the packed f32
/// kernel's (impl "tpo-engine-kept-f32", the weight packed once, as generation keeps it).
/// Each times the product with each of 30 layers' weights in turn (the LM head: one), as a
/// decode step reads them: out of cache, as in a run.
fn decode_products() {
    let shapes = [
        ("qkv_proj", C, C + 2 * KV),
        ("o_proj", C, C),
        ("gate_up_proj", C, 2 * I),
        ("down_proj", I, C),
        ("lm_head", C, V),
    ];
    const LAYERS: usize = 30;
    for (name, c, oc) in shapes {
        let n = DECODE;
        let layers = if name == "lm_head" { 1 } else { LAYERS };
        let inp = randn(n * c, 1.0, 1);
        let weights: Vec<Vec<f32>> = (0..layers)
            .map(|l| randn(oc * c, 0.02, 2 + l as u64))
            .collect();
        let mut out = vec![0.0f32; n * oc];
        let flops = 2.0 * (n * c * oc * layers) as f64;
        let secs = time(|| {
            for w in &weights {
                matmul_forward(black_box(&mut out), &inp, w, None, n, c, oc).unwrap();
            }
        });
        let name = format!("decode_{name}");
        report("tpo-engine", &name, "forward", (n, c, oc), flops, secs);
        if packed_f32::available() {
            let packed: Vec<PackedF32> = weights.iter().map(|w| PackedF32::new(w, c, oc)).collect();
            let secs = time(|| {
                for w in &packed {
                    packed_f32::forward(black_box(&mut out), &inp, w, n);
                }
            });
            report(
                "tpo-engine-kept-f32",
                &name,
                "forward",
                (n, c, oc),
                flops,
                secs,
            );
        }
    }
}
