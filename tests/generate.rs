//! The sampling loop: seeded reproducibility, independence from batching, the KV cache
//! against full recomputation, and how completions end.

use std::path::Path;
use std::sync::Arc;
use tpo_engine::backend::cpu::sampling::{sample, SamplerScratch};
use tpo_engine::backend::rng::Rng;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::generate::steer::{ForceReason, Phase, Steering};
use tpo_engine::generate::{generate, Completion, FinishReason, GenerateOptions};
use tpo_engine::model::weights::StorageDtype;
use tpo_engine::model::{LogitRows, Model, ModelConfig, ParamLayout};

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
        steering: None,
    }
}

fn run(model: &Model, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<Vec<Completion>> {
    generate(model, prompts, opts, &|_| false, &|_| {})
        .unwrap()
        .0
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

/// Steering by token ids: completions start inside their thought; the marker [250, 251]
/// opens the response.
fn steering(budget: Option<usize>) -> Steering {
    Steering {
        prefilled: true,
        force_on_end: true,
        max_thought_tokens: budget,
        marker: vec![250, 251],
        phase_of: Arc::new(|ids: &[u32]| {
            if ids.windows(2).any(|w| w == [250, 251]) {
                Phase::Response
            } else {
                Phase::Thought
            }
        }),
    }
}

#[test]
fn steered_completions_carry_their_forced_marker_whatever_the_batching() {
    let m = model();
    let plain = run(&m, &prompts(), &options(8, 4));
    // An "EOS" the model samples early in some completions: the third token of the first.
    let eos = plain[0][0].token_ids[2];
    let mut opts = options(8, 4);
    opts.eos_ids = vec![eos];
    opts.steering = Some(steering(Some(6)));
    let steered = run(&m, &prompts(), &opts);
    let (mut on_end, mut on_budget) = (0, 0);
    for (cs, ps) in steered.iter().zip(&plain) {
        for (c, p) in cs.iter().zip(ps) {
            let f = c
                .forced
                .expect("every thought is forced to end: by EOS or the budget");
            assert_eq!(&c.token_ids[f.at..f.at + f.tokens], &[250, 251][..f.tokens]);
            assert!(!c.token_ids[..f.at].contains(&eos));
            match f.reason {
                ForceReason::Budget => {
                    assert_eq!(f.at, 6);
                    on_budget += 1;
                }
                ForceReason::Eos => {
                    assert!(f.at < 6);
                    on_end += 1;
                }
            }
            // Up to the forced marker, the tokens are the unsteered run's: the same draws.
            assert_eq!(c.token_ids[..f.at], p.token_ids[..f.at]);
        }
    }
    assert!(on_end > 0 && on_budget > 0, "{on_end} {on_budget}");
    for batch in [1, 3] {
        let opts = GenerateOptions {
            batch_size: batch,
            ..opts.clone()
        };
        assert_eq!(run(&m, &prompts(), &opts), steered, "batch size {batch}");
    }
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

/// A random model at the benchmark's widths (K = 688 > one 512 block of the products).
fn wide_model() -> Model {
    let config = ModelConfig::from_json(&serde_json::json!({"model_type": "llama", "hidden_size": 256,
        "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
        "vocab_size": 4096, "max_position_embeddings": 256}))
    .unwrap();
    let layout = ParamLayout::new(&config);
    let mut rng = Rng::new(5);
    let params = (0..layout.len).map(|_| 0.05 * rng.normal()).collect();
    Model::from_params(config, params, StorageDtype::F32)
}

#[test]
fn logits_of_a_sequence_are_bitwise_the_same_alone_or_batched_on_any_thread_count() {
    let m = wide_model();
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|p| (0..9 + 4 * p).map(|i| (i * 53 + p) % 4096).collect())
        .collect();
    // Prefill then one decode step for the sequences `which`, returning each one's logits.
    let logits = |threads: usize, which: &[usize]| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let seqs: Vec<&[u32]> = which.iter().map(|&i| prompts[i].as_slice()).collect();
            let mut caches: Vec<_> = which.iter().map(|_| m.new_cache()).collect();
            let mut refs: Vec<_> = caches.iter_mut().collect();
            let first = m.forward(&seqs, &mut refs, LogitRows::Last).unwrap();
            let next: Vec<[u32; 1]> = which.iter().map(|&i| [i as u32 * 7 + 1]).collect();
            let next_refs: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            let second = m.forward(&next_refs, &mut refs, LogitRows::Last).unwrap();
            let v = m.config.vocab_size;
            (0..which.len())
                .map(|j| [&first[j * v..(j + 1) * v], &second[j * v..(j + 1) * v]].concat())
                .collect()
        })
    };
    let all = logits(1, &[0, 1, 2, 3, 4]);
    for threads in [1, 2, 3] {
        for which in [vec![2], vec![4, 0], vec![1, 2, 3], vec![0, 1, 2, 3, 4]] {
            let got = logits(threads, &which);
            for (g, &i) in got.iter().zip(&which) {
                assert!(
                    *g == all[i],
                    "sequence {i} in batch {which:?} on {threads} threads"
                );
            }
        }
    }
}

#[test]
fn wide_model_tokens_do_not_depend_on_batch_size_or_threads() {
    let m = wide_model();
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|p| (0..20 + 7 * p).map(|i| (i * 37 + p * 11) % 4096).collect())
        .collect();
    let mut opts = options(1, 3);
    opts.samples = 4;
    opts.max_new_tokens = 128;
    let run_on = |threads: usize, batch: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let opts = GenerateOptions {
            batch_size: batch,
            ..opts.clone()
        };
        pool.install(|| run(&m, &prompts, &opts))
    };
    let reference = run_on(1, 1);
    for (threads, batch) in [(1, 12), (2, 5), (3, 64), (4, 7)] {
        assert_eq!(
            run_on(threads, batch),
            reference,
            "{threads} threads, batch size {batch}"
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
                let logits = m
                    .forward(&[&seq], &mut [&mut cache], LogitRows::Last)
                    .unwrap();
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
    )
    .unwrap();
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

#[test]
fn non_finite_logits_give_an_error_not_tokens() {
    let mut m = wide_model();
    // Stands in for activations that overflowed somewhere in the stack.
    let r = m.layout.norm.clone();
    m.params[r].fill(f32::NAN);
    let err = generate(&m, &[vec![1, 2, 3]], &options(4, 0), &|_| false, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("non-finite logits"), "{err}");
}
