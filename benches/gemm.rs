//! Our matrix products at the 135m shape's real product shapes (hidden 576, 3 KV heads of
//! 64, intermediate 1536, vocab 49152; a training batch of 2,048 rows): each layer product's
//! forward and backward (dinp = dout W and dweight += dout^T inp, timed together), and one
//! chunk of the LM head as the log-prob pass computes it. One JSON line per product: median
//! ms of 7 runs after 2 warm-ups and the GFLOP/s it gives, for the f32 products and the bf16
//! ones on every path this CPU runs (impl "tpo-engine-bf16-<path>").
//! scripts/bench-gemm.sh runs it beside torch.matmul in f32 and bf16 (scripts/gemm_torch.py).

use std::hint::black_box;
use std::time::Instant;
use tpo_engine::backend::cpu::bf16::Bf16Path;
use tpo_engine::backend::cpu::logprobs::default_chunk_rows;
use tpo_engine::backend::cpu::matmul::{matmul_backward, matmul_forward};
use tpo_engine::backend::cpu::matmul_bf16::{matmul_backward_bf16, matmul_forward_bf16};
use tpo_engine::backend::rng::Rng;

const N: usize = 2048;
const C: usize = 576;
const KV: usize = 192;
const I: usize = 1536;
const V: usize = 49152;

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
