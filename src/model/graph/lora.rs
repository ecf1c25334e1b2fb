//! A LoRA adapter in the layer graph: each adapted Linear W of a layer adds s * (x A^T) B^T
//! to its output (or to its block of a fused q/k/v or gate/up output), as PEFT does, with
//! t = x A^T kept for the backward, and the backward: with dy the Linear's output gradient,
//! dt = s dy B, dB += s dy^T t, dA += dt^T x, and dx += dt A. The products that meet a
//! block of the output (`Ops::add_product` and its backward) read and write it in place
//! where the device can (the CPU).

use super::{LoraNet, Net};
use crate::backend::ops::{Ops, Scratch2};
use crate::backend::settings::Columns;
use crate::model::lora::{AdaptedLinear, Target};
use anyhow::Result;

/// The net's adapter and its Linear `target` of layer `l`, where it adapts that Linear.
fn adapted<'n, O: Ops>(
    net: &'n Net<O>,
    l: usize,
    target: Target,
) -> Option<(&'n LoraNet<'n, O>, &'n AdaptedLinear)> {
    let lora = net.lora.as_ref()?;
    Some((lora, lora.layout.find(l, target)?))
}

/// Adds the adapter's s * (dropout(x) A^T) B^T of Linear `target` of layer `l` to the block
/// `cols` of `out`: x (N, in), t (N, r) receives dropout(x) A^T; `work` is scratch: t B^T
/// (N, out) where the device cannot add it in place, and the dropped x (N, in). Does
/// nothing where the net has no adapter or the adapter leaves that Linear alone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_forward<O: Ops>(
    net: &Net<O>,
    l: usize,
    target: Target,
    x: &O::Buf<O::S>,
    out: &mut O::Buf<O::S>,
    cols: Columns,
    t: &mut O::Buf<O::S>,
    work: Scratch2<'_, O>,
    n: usize,
) -> Result<()> {
    let Some((lora, linear)) = adapted(net, l, target) else {
        return Ok(());
    };
    let ops = net.ops;
    let (u, dropped) = work;
    let (r, out_dim) = (lora.r, linear.out_dim);
    let x = dropped_input(net, l, target, x, dropped, n * linear.in_dim)?;
    let a = O::weights(lora.weights, linear.a.clone());
    let b = O::weights(lora.weights, linear.b.clone());
    ops.matmul_forward(t, x, a, None, n, linear.in_dim, r)?;
    ops.add_product(out, cols, t, b, n, r, out_dim, lora.scale, u)
}

/// The input the adapter of Linear `target` of layer `l` reads: x itself, or with dropout,
/// x dropped out into `dropped` (`len` elements), its mask drawn from the pass's seed and
/// the Linear (the same in the forward and the backward).
fn dropped_input<'x, O: Ops>(
    net: &Net<O>,
    l: usize,
    target: Target,
    x: &'x O::Buf<O::S>,
    dropped: &'x mut O::Buf<O::S>,
    len: usize,
) -> Result<&'x O::Buf<O::S>> {
    let Some(d) = net.lora.as_ref().and_then(|lora| lora.dropout) else {
        return Ok(x);
    };
    net.ops.set_len(dropped, len)?;
    net.ops
        .dropout(dropped, x, d.p, d.seed_of(l, target), false)?;
    Ok(dropped)
}

/// The scratch of one adapted Linear's backward: what the default block products use (dy,
/// dx), t's gradient (dt), and the dropped input (x).
pub(crate) struct LoraScratch<'s, O: Ops> {
    pub dy: &'s mut O::Buf<O::S>,
    pub dt: &'s mut O::Buf<O::S>,
    pub dx: &'s mut O::Buf<O::S>,
    pub x: &'s mut O::Buf<O::S>,
}

/// The backward of the adapter's share of Linear `target` of layer `l`: from `dy`, the
/// gradient of the output (its block `cols`), accumulates dA and dB into `grads` (the
/// adapter's layout) and adds the input's share to `dx`. `x` and `t` are the Linear's input
/// and x A^T from the forward.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_backward<O: Ops>(
    net: &Net<O>,
    l: usize,
    target: Target,
    dy: &O::Buf<O::S>,
    cols: Columns,
    x: &O::Buf<O::S>,
    t: &O::Buf<O::S>,
    dx: &mut O::Buf<O::S>,
    scratch: LoraScratch<O>,
    grads: &mut O::Buf<f32>,
    n: usize,
) -> Result<()> {
    let Some((lora, linear)) = adapted(net, l, target) else {
        return Ok(());
    };
    let ops = net.ops;
    let (r, out_dim, in_dim) = (lora.r, linear.out_dim, linear.in_dim);
    // dt = s dy B and dB += s dy^T t: the backward of out[:, cols] += s t B^T.
    let b = O::weights(lora.weights, linear.b.clone());
    let db = O::grads(grads, linear.b.clone());
    let (dy_scratch, dx_scratch) = (scratch.dy, scratch.dx);
    ops.set_len(scratch.dt, n * r)?;
    let s = lora.scale;
    let sc = (&mut *dy_scratch, &mut *dx_scratch);
    ops.add_product_backward(scratch.dt, false, db, dy, cols, t, b, n, r, out_dim, s, sc)?;
    // dx += dt A and dA += dt^T x: the backward of t = x A^T.
    let a = O::weights(lora.weights, linear.a.clone());
    let da = O::grads(grads, linear.a.clone());
    let Some(d) = lora.dropout else {
        let (dense, sc) = (Columns::dense(r), (dy_scratch, dx_scratch));
        return ops
            .add_product_backward(dx, true, da, scratch.dt, dense, x, a, n, in_dim, r, 1.0, sc);
    };
    // With dropout, t = dropout(x) A^T: dA += dt^T dropout(x), and x's share is
    // dropout(dt A) under the same mask, drawn again.
    let xd = dropped_input(net, l, target, x, scratch.x, n * in_dim)?;
    ops.set_len(dx_scratch, n * in_dim)?;
    let dt = &*scratch.dt;
    ops.matmul_backward(dx_scratch, Some(da), None, dt, xd, a, n, in_dim, r)?;
    ops.dropout(dx, dx_scratch, d.p, d.seed_of(l, target), true)
}

#[cfg(test)]
mod tests {
    use crate::backend::rng::Rng;
    use crate::model::graph::{Activations, LoraDropout, LoraNet, ScoredSequence, TrainBatch};
    use crate::model::lora::{Adapter, LoraConfig, Target};
    use crate::model::Model;
    use crate::train::trainer::tests::tiny_model;

    /// (summed log-probs, parameter gradients, adapter gradients) of `model` (with
    /// `adapter` in its graph, if any) on two sequences, d(loss)/d(sum) = (1, -0.5).
    fn grads(model: &Model, adapter: Option<&Adapter>) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
        grads_of(model, adapter, false)
    }

    /// `grads` with the model's weights frozen (no gradient of theirs formed) if `frozen`.
    fn grads_of(
        model: &Model,
        adapter: Option<&Adapter>,
        frozen: bool,
    ) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
        grads_dropped(model, adapter, frozen, None)
    }

    /// `grads_of` with LoRA dropout.
    fn grads_dropped(
        model: &Model,
        adapter: Option<&Adapter>,
        frozen: bool,
        dropout: Option<LoraDropout>,
    ) -> (Vec<f64>, Vec<f32>, Vec<f32>) {
        let mut net = model.net();
        net.lora = adapter.map(|a| LoraNet {
            layout: &a.layout,
            weights: &a.params,
            r: a.config.r,
            scale: a.config.scale() as f32,
            dropout,
        });
        let seqs: Vec<Vec<u32>> = vec![
            (0..9).map(|t| (t * 7 + 3) % 40).collect(),
            vec![5, 9, 2, 30, 11, 7],
        ];
        let scored: Vec<ScoredSequence> = seqs
            .iter()
            .map(|s| ScoredSequence {
                tokens: s,
                prompt_len: 2,
            })
            .collect();
        let batch = TrainBatch::new(&scored);
        let mut acts = Activations::new(&net, batch.tokens.len(), true).unwrap();
        let mut g = vec![0.0f32; model.layout.len];
        let mut lg = vec![0.0f32; adapter.map_or(0, |a| a.layout.len)];
        let lora_grads = adapter.is_some().then_some(&mut lg);
        let sums = net
            .sequence_logprobs_with_grads(
                &batch,
                &mut acts,
                &[2],
                &mut |_, _| Ok(vec![1.0, -0.5]),
                (!frozen).then_some(&mut g),
                lora_grads,
            )
            .unwrap();
        (sums, g, lg)
    }

    /// The adapter's gradients are the merged model's weight gradient dW carried through
    /// W' = W + s B A: dA = s B^T dW and dB = s dW A^T (the full backward they are read off
    /// is checked against PyTorch's autograd in tests/train_parity.rs). Leaving out the
    /// scale s in the backward makes this fail (worst error 0.27 of 0.51).
    #[test]
    fn adapter_gradients_are_the_merged_weights_gradient_through_s_b_a() {
        let base = tiny_model();
        let lora = LoraConfig::new(3, 6.0, false, 0.0, Target::ALL.to_vec()).unwrap();
        let mut adapter = Adapter::init(&base.config, lora, 4);
        let mut rng = Rng::new(5);
        for l in adapter.layout.linears.clone() {
            for x in &mut adapter.params[l.b.clone()] {
                *x = 0.2 * rng.normal();
            }
        }
        let mut merged = tiny_model();
        adapter
            .merge_into(&merged.layout, &mut merged.params)
            .unwrap();
        let (sums, _, lora_grads) = grads(&base, Some(&adapter));
        // Frozen base weights: the same adapter gradients, bit for bit, and none of theirs.
        let (frozen_sums, untouched, frozen_grads) = grads_of(&base, Some(&adapter), true);
        assert_eq!(frozen_sums, sums);
        assert!(frozen_grads == lora_grads);
        assert!(untouched.iter().all(|g| *g == 0.0));
        let (merged_sums, dw_all, _) = grads(&merged, None);
        for (a, b) in sums.iter().zip(&merged_sums) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "log-probs {a} vs {b}"
            );
        }
        let (s, r) = (adapter.config.scale(), adapter.config.r);
        let mut worst = 0.0f64;
        let mut largest = 0.0f64;
        for l in &adapter.layout.linears {
            let dw = &dw_all[l.target.base_range(&merged.layout, l.layer)];
            let (a, b) = (&adapter.params[l.a.clone()], &adapter.params[l.b.clone()]);
            let (da, db) = (&lora_grads[l.a.clone()], &lora_grads[l.b.clone()]);
            for k in 0..r {
                for i in 0..l.in_dim {
                    let want: f64 = (0..l.out_dim)
                        .map(|o| s * b[o * r + k] as f64 * dw[o * l.in_dim + i] as f64)
                        .sum();
                    worst = worst.max((da[k * l.in_dim + i] as f64 - want).abs());
                    largest = largest.max(want.abs());
                }
            }
            for o in 0..l.out_dim {
                for k in 0..r {
                    let want: f64 = (0..l.in_dim)
                        .map(|i| s * dw[o * l.in_dim + i] as f64 * a[k * l.in_dim + i] as f64)
                        .sum();
                    worst = worst.max((db[o * r + k] as f64 - want).abs());
                    largest = largest.max(want.abs());
                }
            }
        }
        assert!(
            largest > 1e-3,
            "the gradients are not trivially zero: {largest}"
        );
        assert!(
            worst <= 2e-4 * largest,
            "worst error {worst}, largest gradient {largest}"
        );
    }

    /// A fresh adapter (B = 0) changes nothing: the base's log-probs and parameter
    /// gradients, bit for bit; B has gradients from the first step, A none yet.
    #[test]
    fn a_fresh_adapter_changes_nothing_but_has_gradients() {
        let base = tiny_model();
        let lora = LoraConfig::new(2, 4.0, false, 0.0, vec![Target::Q, Target::Down]).unwrap();
        let adapter = Adapter::init(&base.config, lora, 8);
        let (sums, g, lg) = grads(&base, Some(&adapter));
        let (base_sums, base_g, _) = grads(&base, None);
        assert_eq!(sums, base_sums);
        assert_eq!(g, base_g);
        let sum_abs = |pick: fn(&crate::model::lora::AdaptedLinear) -> std::ops::Range<usize>| {
            adapter
                .layout
                .linears
                .iter()
                .map(|l| lg[pick(l)].iter().map(|x| x.abs()).sum::<f32>())
                .sum::<f32>()
        };
        assert!(
            sum_abs(|l| l.b.clone()) > 0.0,
            "B learns from the first step"
        );
        assert_eq!(
            sum_abs(|l| l.a.clone()),
            0.0,
            "with B = 0, A has no gradient yet"
        );
    }

    /// With dropout, the adapter's gradients are those of the loss under its masks: a
    /// central finite difference along a random direction of every A and B matches their
    /// directional derivative. The masks matter (no dropout gives other gradients), the same
    /// seed gives the same ones, another seed others.
    #[test]
    fn gradients_under_dropout_match_a_finite_difference() {
        let base = tiny_model();
        let lora = LoraConfig::new(3, 6.0, false, 0.3, Target::ALL.to_vec()).unwrap();
        let mut adapter = Adapter::init(&base.config, lora, 4);
        let mut rng = Rng::new(6);
        for l in adapter.layout.linears.clone() {
            for x in &mut adapter.params[l.b.clone()] {
                *x = 0.2 * rng.normal();
            }
        }
        let d = LoraDropout { p: 0.3, seed: 11 };
        let run = |a: &Adapter, d: Option<LoraDropout>| grads_dropped(&base, Some(a), true, d);
        let (_, _, g) = run(&adapter, Some(d));
        let loss = |sums: &[f64]| sums[0] - 0.5 * sums[1];
        // Mostly along the gradient (a slope well above the rounding), and not only.
        let rms = (g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / g.len() as f64).sqrt();
        let dir: Vec<f64> = g
            .iter()
            .map(|x| *x as f64 + 0.5 * rms * rng.normal() as f64)
            .collect();
        let norm = dir.iter().map(|x| x * x).sum::<f64>().sqrt();
        let analytic: f64 = g.iter().zip(&dir).map(|(g, d)| *g as f64 * d / norm).sum();
        let h = 2e-2;
        let shifted = |sign: f64| {
            let mut a = adapter.clone();
            for (p, d) in a.params.iter_mut().zip(&dir) {
                *p += (sign * h * d / norm) as f32;
            }
            loss(&run(&a, Some(d)).0)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
        assert!(analytic.abs() > 0.1, "a direction with a slope: {analytic}");
        assert!(
            (numeric - analytic).abs() <= 2e-3 * analytic.abs().max(1.0),
            "finite difference {numeric}, gradient {analytic}"
        );
        assert!(run(&adapter, None).2 != g, "the masks change the gradients");
        assert!(
            run(&adapter, Some(d)).2 == g,
            "the same seed, the same masks"
        );
        let other = LoraDropout { seed: 12, ..d };
        assert!(
            run(&adapter, Some(other)).2 != g,
            "another seed, other masks"
        );
    }
}
