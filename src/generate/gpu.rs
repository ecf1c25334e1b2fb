//! The batched sampling loop on a CUDA device, twin of `engine::generate`: the same
//! admission order, RNG streams, stop rules and outputs, with the model, the KV caches and
//! the sampler on the device; only token ids (and one uniform draw per row) cross.
//!
//! Each of the `batch_size` slots holds one live (prompt, sample) sequence and its KV cache
//! of Tmax = longest prompt + max_new_tokens positions (at most the context). A decode step
//! runs every slot, idle ones included (they run a dummy token and their output is
//! ignored), so the shapes stay fixed; finished slots are refilled at once, and the
//! prompts of newly admitted sequences are prefilled in one packed pass (a prompt whose
//! samples are admitted over several refills is prefilled again each time).

use super::engine::{
    all_finished, finish_reason, Completion, FinishReason, GenerateOptions, GenerateStats,
};
use crate::backend::cuda::{DecodeDims, Gpu, SlotCaches, SlotPass};
use crate::backend::rng::Rng;
use crate::backend::storage::Storage;
use crate::generate::steer::SteerState;
use crate::model::cuda::GpuModel;
use crate::model::graph::Activations;
use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::Instant;

struct Live {
    prompt: usize,
    sample: usize,
    tokens: Vec<u32>,
    limit: usize,
    rng: Rng,
    /// Positions in the slot's cache: the prompt, then the generated tokens fed back.
    len: usize,
    steer: SteerState,
}

/// `engine::generate` with `gm`'s weights and activations (stored as T: bf16, or f32 for
/// the parity tests) on its GPU.
pub fn generate_gpu<T: Storage>(
    gm: &GpuModel<T>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
    on_tokens: &dyn Fn(usize),
) -> Result<(Vec<Vec<Completion>>, GenerateStats)> {
    let gpu: &Arc<Gpu> = gm.gpu();
    let ctx = gm.config.max_context;
    if prompts.iter().any(|p| p.is_empty() || p.len() >= ctx) {
        bail!("prompts must be non-empty and shorter than the context");
    }
    if opts.batch_size == 0 {
        bail!("batch_size must be positive");
    }
    let net = gm.net();
    let k = opts.samples;
    let total = prompts.len() * k;
    let slots = opts.batch_size.min(total.max(1));
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let t_max = longest.saturating_add(opts.max_new_tokens).min(ctx);
    let dims = DecodeDims {
        batch: slots,
        n_head: gm.config.num_attention_heads,
        n_kv_head: gm.config.num_key_value_heads,
        head_dim: gm.config.head_dim,
        t_max,
    };
    let layers = gm.layout.layers.len();
    let mut caches = SlotCaches::<T>::new(gpu, layers, slots, t_max, dims)?;
    // A prefill packs the distinct prompts of the pairs it admits: at most one more than
    // the slots' worth of prompts of K samples each.
    let prefill_prompts = prompts.len().min(slots.div_ceil(k.max(1)) + 1);
    let rows = longest.saturating_mul(prefill_prompts).max(slots);
    let mut acts = Activations::new(&net, rows, false)?;
    let v = gm.config.vocab_size;
    let mut results: Vec<Vec<Option<Completion>>> = vec![vec![None; k]; prompts.len()];
    let mut stats = GenerateStats::default();
    let mut live: Vec<Option<Live>> = (0..slots).map(|_| None).collect();
    let mut next = 0;
    let greedy = opts.sampling.temperature <= 0.0;

    let finish = |seq: &mut Live| finish_reason(&mut seq.tokens, seq.limit, opts, is_stopped);
    // Samples one token for each (slot, row of logits) from the device's logits, which must
    // be finite (as the CPU engine requires).
    let sample = |logits: &cudarc::driver::CudaSlice<f32>,
                  rows: usize,
                  seqs: &mut [&mut Live],
                  stage: &str|
     -> Result<Vec<u32>> {
        if !gpu.sum_squares(logits)?.is_finite() {
            bail!("the model produced non-finite logits during {stage}: its weights or activations overflow");
        }
        let uniforms: Vec<f32> = seqs
            .iter_mut()
            .map(|s| if greedy { 0.0 } else { s.rng.uniform() })
            .chain(std::iter::repeat(0.5))
            .take(rows)
            .collect();
        let u = gpu.stream.clone_htod(&uniforms)?;
        let mut out = gpu.alloc::<u32>(rows, "for the sampled tokens")?;
        gpu.sample_rows(&mut out, logits, &u, &opts.sampling, v)?;
        Ok(gpu.stream.clone_dtoh(&out)?)
    };

    loop {
        // Refill free slots, prefilling their prompts in one packed pass.
        let free: Vec<usize> = (0..slots).filter(|&s| live[s].is_none()).collect();
        if !free.is_empty() && next < total {
            let started = Instant::now();
            let admit = free.len().min(total - next);
            let pairs: Vec<(usize, usize)> = (next..next + admit).map(|i| (i / k, i % k)).collect();
            next += admit;
            // The distinct prompts, each with the slots that continue it.
            let mut need: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            need.dedup();
            let mut targets: Vec<Vec<usize>> = vec![vec![]; need.len()];
            let mut slot_of = vec![];
            for (i, &(p, _)) in pairs.iter().enumerate() {
                let at = need.iter().position(|&q| q == p).expect("listed above");
                targets[at].push(free[i]);
                slot_of.push((free[i], at));
            }
            let seqs: Vec<&[u32]> = need.iter().map(|&p| prompts[p].as_slice()).collect();
            let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
            let mut pass = SlotPass::prefill(gpu, &mut caches, &lens, &targets)?;
            let logits = net.prefill(&seqs, &mut pass, &mut acts)?; // (P, V)
            stats.prefill_tokens += seqs.iter().map(|s| s.len()).sum::<usize>();
            // One first token per admitted pair, from its prompt's logits row.
            let mut admitted: Vec<Live> = pairs
                .iter()
                .map(|&(p, s)| Live {
                    prompt: p,
                    sample: s,
                    tokens: vec![],
                    limit: opts.max_new_tokens.min(ctx - prompts[p].len()),
                    rng: Rng::for_stream(opts.seed, p as u64, s as u64),
                    len: prompts[p].len(),
                    steer: opts.steer_start(),
                })
                .collect();
            let rows: Vec<i32> = slot_of.iter().map(|&(_, at)| at as i32).collect();
            let rows_dev = gpu.stream.clone_htod(&rows)?;
            let mut per_pair = gpu.alloc::<f32>(rows.len() * v, "for the prefill logits")?;
            gpu.gather_rows(&mut per_pair, logits, &rows_dev, v)?;
            let mut refs: Vec<&mut Live> = admitted.iter_mut().collect();
            let firsts = sample(&per_pair, rows.len(), &mut refs, "prefill")?;
            stats.prefill_secs += started.elapsed().as_secs_f64();
            for ((mut seq, t), &(slot, _)) in admitted.into_iter().zip(firsts).zip(&slot_of) {
                if seq.limit == 0 {
                    results[seq.prompt][seq.sample] = Some(Completion {
                        token_ids: vec![],
                        finish_reason: FinishReason::Length,
                        forced: None,
                    });
                    continue;
                }
                opts.push(&mut seq.steer, &mut seq.tokens, t);
                on_tokens(1);
                match finish(&mut seq) {
                    Some(reason) => {
                        results[seq.prompt][seq.sample] = Some(Completion {
                            token_ids: seq.tokens,
                            finish_reason: reason,
                            forced: seq.steer.forced,
                        })
                    }
                    None => live[slot] = Some(seq),
                }
            }
            continue;
        }
        let running = live.iter().filter(|s| s.is_some()).count();
        if running == 0 {
            if next >= total {
                break;
            }
            continue;
        }

        // One decode step for every slot.
        let started = Instant::now();
        let tokens: Vec<u32> = live
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| *s.tokens.last().expect("a token")))
            .collect();
        let positions: Vec<usize> = live
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.len))
            .collect();
        let mut pass = SlotPass::decode(gpu, &mut caches, &positions)?;
        let logits = net.decode(&tokens, &positions, &mut pass, &mut acts)?; // (B, V)
                                                                             // Idle slots draw nothing: their rows take a dummy uniform after the live ones, so
                                                                             // order the live rows first.
        let order: Vec<usize> = (0..slots).filter(|&s| live[s].is_some()).collect();
        let idle: Vec<usize> = (0..slots).filter(|&s| live[s].is_none()).collect();
        let perm: Vec<i32> = order.iter().chain(&idle).map(|&s| s as i32).collect();
        let perm_dev = gpu.stream.clone_htod(&perm)?;
        let mut ordered = gpu.alloc::<f32>(slots * v, "for the decode logits")?;
        gpu.gather_rows(&mut ordered, logits, &perm_dev, v)?;
        let mut refs: Vec<&mut Live> = live.iter_mut().flatten().collect();
        let chosen = sample(&ordered, slots, &mut refs, "decoding")?;
        stats.decode_tokens += running;
        stats.decode_secs += started.elapsed().as_secs_f64();
        on_tokens(running);
        for (&slot, &t) in order.iter().zip(&chosen) {
            let seq = live[slot].as_mut().expect("live");
            seq.len += 1;
            opts.push(&mut seq.steer, &mut seq.tokens, t);
            if let Some(reason) = finish(seq) {
                let seq = live[slot].take().expect("live");
                results[seq.prompt][seq.sample] = Some(Completion {
                    token_ids: seq.tokens,
                    finish_reason: reason,
                    forced: seq.steer.forced,
                });
            }
        }
    }
    Ok((all_finished(results), stats))
}
