//! The sampling loop: seeded reproducibility, independence from batching, the KV cache
//! against full recomputation, and how completions end.

use std::path::Path;
use tpo_engine::backend::cpu::sampling::{sample, Rng, SamplerScratch, SamplingParams};
use tpo_engine::generate::{generate, Completion, FinishReason, GenerateOptions};
use tpo_engine::model::{LogitRows, Model};

fn model() -> Model {
    Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistral")).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 99, 3],
        vec![200, 1],
        vec![42; 9],
        vec![7, 8, 9, 10, 11, 12],
    ]
}

fn options(batch_size: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        samples: 5,
        max_new_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
        },
        seed,
        batch_size,
        eos_ids: vec![],
    }
}

fn run(model: &Model, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<Vec<Completion>> {
    generate(model, prompts, opts, &|_| false, &|_| {}).0
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let m = model();
    let a = run(&m, &prompts(), &options(8, 1));
    assert_eq!(a, run(&m, &prompts(), &options(8, 1)));
    assert_ne!(a, run(&m, &prompts(), &options(8, 2)));
    // The K samples of one prompt differ from each other.
    assert!(a[0].windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn tokens_do_not_depend_on_batch_size_or_prefix_sharing() {
    let m = model();
    let alone = run(&m, &prompts(), &options(1, 9));
    for batch in [3, 7, 64] {
        assert_eq!(
            run(&m, &prompts(), &options(batch, 9)),
            alone,
            "batch size {batch}"
        );
    }
}

#[test]
fn cached_decoding_matches_full_recomputation_with_the_same_rng_stream() {
    let m = model();
    let opts = options(16, 4);
    let out = run(&m, &prompts(), &opts);
    for (p, prompt) in prompts().iter().enumerate() {
        for s in [0, opts.samples - 1] {
            let mut rng = Rng::for_stream(opts.seed, p as u64, s as u64);
            let mut scratch = SamplerScratch::default();
            let mut seq = prompt.clone();
            let mut tokens = vec![];
            for _ in 0..opts.max_new_tokens {
                let mut cache = m.new_cache();
                let logits = m.forward(&[&seq], &mut [&mut cache], LogitRows::Last);
                let t = sample(&logits, &opts.sampling, &mut rng, &mut scratch);
                tokens.push(t);
                seq.push(t);
            }
            assert_eq!(out[p][s].token_ids, tokens, "prompt {p}, sample {s}");
            assert_eq!(out[p][s].finish_reason, FinishReason::Length);
        }
    }
}

#[test]
fn eos_and_stop_end_completions_and_the_context_caps_length() {
    let m = model();
    let mut opts = options(4, 0);
    opts.sampling = SamplingParams::GREEDY;
    opts.samples = 1;
    let prompt = vec![vec![5u32, 17, 99, 3]];
    let free = run(&m, &prompt, &opts)[0][0].token_ids.clone();
    assert_eq!(free.len(), opts.max_new_tokens);

    let eos = free[3];
    let cut = free.iter().position(|&t| t == eos).unwrap();
    opts.eos_ids = vec![eos];
    let c = &run(&m, &prompt, &opts)[0][0];
    assert_eq!(
        (c.token_ids.as_slice(), c.finish_reason),
        (&free[..cut], FinishReason::Eos)
    );

    opts.eos_ids = vec![];
    let stop_token = free[2];
    let (out, _) = generate(
        &m,
        &prompt,
        &opts,
        &|toks: &[u32]| toks.contains(&stop_token),
        &|_| {},
    );
    let upto = free.iter().position(|&t| t == stop_token).unwrap() + 1;
    assert_eq!(
        (out[0][0].token_ids.as_slice(), out[0][0].finish_reason),
        (&free[..upto], FinishReason::Stop)
    );

    let ctx = m.config.max_context;
    let long = vec![vec![3u32; ctx - 5]];
    let c = &run(&m, &long, &opts)[0][0];
    assert_eq!(
        (c.token_ids.len(), c.finish_reason),
        (5, FinishReason::Length)
    );
}
