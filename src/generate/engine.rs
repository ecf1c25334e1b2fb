//! The batched sampling loop.
//!
//! Every (prompt, sample) pair gets its own RNG stream, derived from (seed, prompt, sample),
//! so a seeded run gives the same tokens whatever the batch size or scheduling order.

use crate::backend::cpu::attention::decode_reads_pieces;
use crate::backend::cpu::kv_cache::{KvCache, SeqCaches};
use crate::backend::cpu::sampling::{sample, SamplerScratch};
use crate::backend::cpu::Cpu;
use crate::backend::rng::Rng;
use crate::backend::settings::SamplingParams;
use crate::generate::steer::{Forced, SteerState, Steering};
use crate::model::graph::Activations;
use crate::model::Model;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Completions per prompt (K).
    pub samples: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Most sequences decoded at once; a finished one's slot is refilled at once.
    pub batch_size: usize,
    /// Tokens that end a completion (not included in it).
    pub eos_ids: Vec<u32>,
    /// Steering into the thought format (None: every token as sampled).
    pub steering: Option<Steering>,
}

impl GenerateOptions {
    /// A fresh completion's steering state.
    pub(crate) fn steer_start(&self) -> SteerState {
        self.steering
            .as_ref()
            .map(Steering::start)
            .unwrap_or_default()
    }

    /// Appends the token sampled for a completion, or the forced token that takes its place.
    pub(crate) fn push(&self, state: &mut SteerState, tokens: &mut Vec<u32>, sampled: u32) {
        match &self.steering {
            Some(s) => s.push(state, tokens, sampled, &self.eos_ids),
            None => tokens.push(sampled),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    Length,
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Generated tokens (forced ones included), the EOS token left out.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The response marker's tokens fed in place of sampled ones, if any.
    pub forced: Option<Forced>,
}

#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

/// One live sequence.
struct Live {
    prompt: usize,
    sample: usize,
    cache: KvCache,
    tokens: Vec<u32>,
    /// Most tokens it may generate (max_new_tokens, or less near the context's end).
    limit: usize,
    rng: Rng,
    scratch: SamplerScratch,
    steer: SteerState,
}

/// Generates `opts.samples` completions for each prompt (token ids, each shorter than the
/// model's context). `is_stopped` says whether a completion's tokens contain a stop string;
/// `on_tokens` is told how many tokens each step produced. Fails when the model produces a
/// non-finite logit (weights that overflow f32), rather than sampling garbage. f32
/// throughout; `generate_on` takes the CPU's products.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
    on_tokens: &dyn Fn(usize),
) -> Result<(Vec<Vec<Completion>>, GenerateStats)> {
    generate_on(model, Cpu::F32, prompts, opts, is_stopped, on_tokens)
}

/// `generate` with `cpu`'s products.
pub fn generate_on(
    model: &Model,
    cpu: Cpu,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
    on_tokens: &dyn Fn(usize),
) -> Result<(Vec<Vec<Completion>>, GenerateStats)> {
    let ctx = model.config.max_context;
    assert!(
        prompts.iter().all(|p| !p.is_empty() && p.len() < ctx),
        "prompts must be checked by the caller"
    );
    let k = opts.samples;
    let total = prompts.len() * k;
    assert!(opts.batch_size > 0, "batch_size must be positive");
    let batch = opts.batch_size;
    let mut results: Vec<Vec<Option<Completion>>> = vec![vec![None; k]; prompts.len()];
    let mut stats = GenerateStats::default();
    // Prompts prefilled but not yet handed to all their samples: (cache, last logits). The
    // samples continue the prompt's cache without copying it where decode rows read a cache
    // in pieces, else copy it.
    let mut prefilled: HashMap<usize, (Arc<KvCache>, Vec<f32>)> = HashMap::new();
    let mut live: Vec<Live> = Vec::with_capacity(batch.min(total));
    let mut next = 0; // the next (prompt, sample) pair to start, prompt-major

    let finish = |seq: &mut Live| finish_reason(&mut seq.tokens, seq.limit, opts, is_stopped);
    // The weights stay as they are for the whole run: bf16 products keep them packed.
    let cpu = cpu.keeping_packed_weights();
    let net = model.net_on(&cpu);
    let mut acts = Activations::new(&net, batch, false)?;

    while next < total || !live.is_empty() {
        // Refill free slots, prefilling the prompts they need in one packed pass.
        if live.len() < batch && next < total {
            let admit = (batch - live.len()).min(total - next);
            let pairs: Vec<(usize, usize)> = (next..next + admit).map(|i| (i / k, i % k)).collect();
            next += admit;
            let mut need: Vec<usize> = pairs
                .iter()
                .map(|p| p.0)
                .filter(|p| !prefilled.contains_key(p))
                .collect();
            need.dedup();
            if !need.is_empty() {
                let started = Instant::now();
                let seqs: Vec<&[u32]> = need.iter().map(|&p| prompts[p].as_slice()).collect();
                let mut caches: Vec<KvCache> = need.iter().map(|_| model.new_cache()).collect();
                let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
                let mut pass = SeqCaches::new(caches.iter_mut().collect(), &lens);
                let logits = net.prefill(&seqs, &mut pass, &mut acts)?;
                check_finite(logits, "prefill")?;
                let v = model.config.vocab_size;
                for ((p, cache), row) in need.iter().zip(caches).zip(logits.chunks_exact(v)) {
                    prefilled.insert(*p, (Arc::new(cache), row.to_vec()));
                }
                stats.prefill_tokens += seqs.iter().map(|s| s.len()).sum::<usize>();
                stats.prefill_secs += started.elapsed().as_secs_f64();
            }
            for (p, s) in pairs {
                let limit = opts.max_new_tokens.min(ctx - prompts[p].len());
                let (prompt_cache, logits) = if s + 1 == k {
                    prefilled.remove(&p).expect("prefilled above")
                } else {
                    let (cache, logits) = &prefilled[&p];
                    (Arc::clone(cache), logits.clone())
                };
                // Continue the prompt's cache where decode rows read it in place, else copy
                // it (the last sample takes it).
                let cache = if decode_reads_pieces(model.config.head_dim) {
                    KvCache::continuing(prompt_cache, limit)
                } else {
                    Arc::try_unwrap(prompt_cache).map_or_else(
                        |shared| shared.clone_with_room(limit),
                        |mut own| {
                            own.reserve(limit);
                            own
                        },
                    )
                };
                let mut seq = Live {
                    prompt: p,
                    sample: s,
                    cache,
                    tokens: Vec::with_capacity(limit),
                    limit,
                    rng: Rng::for_stream(opts.seed, p as u64, s as u64),
                    scratch: SamplerScratch::default(),
                    steer: opts.steer_start(),
                };
                if limit > 0 {
                    let t = sample(&logits, &opts.sampling, &mut seq.rng, &mut seq.scratch);
                    opts.push(&mut seq.steer, &mut seq.tokens, t);
                    on_tokens(1);
                }
                match finish(&mut seq) {
                    Some(reason) => {
                        results[p][s] = Some(Completion {
                            token_ids: seq.tokens,
                            finish_reason: reason,
                            forced: seq.steer.forced,
                        })
                    }
                    None if limit == 0 => {
                        results[p][s] = Some(Completion {
                            token_ids: vec![],
                            finish_reason: FinishReason::Length,
                            forced: None,
                        })
                    }
                    None => live.push(seq),
                }
            }
        }
        if live.is_empty() {
            continue;
        }

        // One decode step for every live sequence.
        let started = Instant::now();
        let last: Vec<u32> = live
            .iter()
            .map(|s| *s.tokens.last().expect("live sequences have a token"))
            .collect();
        let mut pass = SeqCaches::new(
            live.iter_mut().map(|s| &mut s.cache).collect(),
            &vec![1; last.len()],
        );
        let positions = pass.positions().to_vec();
        let logits = net.decode(&last, &positions, &mut pass, &mut acts)?;
        check_finite(logits, "decoding")?;
        let v = model.config.vocab_size;
        let sampling = opts.sampling;
        let done: Vec<Option<FinishReason>> = live
            .par_iter_mut()
            .zip(logits.par_chunks(v))
            .map(|(seq, row)| {
                let t = sample(row, &sampling, &mut seq.rng, &mut seq.scratch);
                opts.push(&mut seq.steer, &mut seq.tokens, t);
                finish(seq)
            })
            .collect();
        stats.decode_tokens += live.len();
        stats.decode_secs += started.elapsed().as_secs_f64();
        on_tokens(live.len());
        // Retire finished sequences; their slots are refilled at the top of the loop.
        for i in (0..live.len()).rev() {
            if let Some(reason) = done[i] {
                let seq = live.swap_remove(i);
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

/// The completions of every (prompt, sample), once the loop has finished them all.
pub(crate) fn all_finished(results: Vec<Vec<Option<Completion>>>) -> Vec<Vec<Completion>> {
    results
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| c.expect("every sample finishes"))
                .collect()
        })
        .collect()
}

/// Whether a completion whose last token was just sampled is finished, and why: an EOS token
/// (taken off the completion), a stop string, or its length limit.
pub(crate) fn finish_reason(
    tokens: &mut Vec<u32>,
    limit: usize,
    opts: &GenerateOptions,
    is_stopped: &(dyn Fn(&[u32]) -> bool + Sync),
) -> Option<FinishReason> {
    let last = *tokens.last()?;
    if opts.eos_ids.contains(&last) {
        tokens.pop();
        Some(FinishReason::Eos)
    } else if is_stopped(tokens) {
        Some(FinishReason::Stop)
    } else if tokens.len() >= limit {
        Some(FinishReason::Length)
    } else {
        None
    }
}

fn check_finite(logits: &[f32], stage: &str) -> Result<()> {
    if logits.iter().any(|x| !x.is_finite()) {
        bail!("the model produced non-finite logits during {stage}: its weights or activations overflow f32");
    }
    Ok(())
}
