//! The whole model on every device against the CPU on the tiny fixtures: the training
//! graph's log-probs and every parameter gradient, AdamW updates through the one trainer
//! and its roll-back, a reward model's scores (each one test body run on the CPU, CUDA f32
//! and CUDA bf16 by `on_every_device!`), and greedy and sampled generation by the GPU
//! engine. In f32 storage the results differ only by summation order, so the tolerances are
//! tight; bf16 storage (what runs in production) is checked loosely. The CUDA tests skip,
//! with the reason printed, where there is no GPU; scripts/gpu-check.sh runs them on a GPU,
//! where a skip fails.

mod common;

use common::devices::Tolerance;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tpo_engine::backend::cpu::Cpu;
use tpo_engine::backend::cuda::Gpu;
use tpo_engine::backend::ops::Ops;
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::generate::gpu::generate_gpu;
use tpo_engine::generate::steer::{Phase, Steering};
use tpo_engine::generate::{generate, GenerateOptions};
use tpo_engine::model::cuda::GpuModel;
use tpo_engine::model::graph::{Activations, ModelOn, ScoredSequence, TrainBatch};
use tpo_engine::model::lora::{Adapter, LoraConfig, Target};
use tpo_engine::model::Model;
use tpo_engine::train::loss::{dpo_loss, DpoTotals, PairLogps};
use tpo_engine::train::trainer::{micro_batch_rows, Trainer};
use tpo_engine::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

fn gpu() -> Option<Arc<Gpu>> {
    common::gpu::gpu().map(Arc::new)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The DPO fixture's pairs as examples, with reference log-probs a little below the
/// policy's so the loss is not at its minimum.
fn examples() -> Vec<Example> {
    let path = fixture("dpo/cases.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    all["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt = ids(&p["prompt"]);
            Example {
                seqs: vec![
                    [prompt.clone(), ids(&p["chosen"])].concat(),
                    [prompt.clone(), ids(&p["rejected"])].concat(),
                ],
                prompt_len: prompt.len(),
                reference: vec![-40.0 - i as f64, -38.0 + i as f64],
            }
        })
        .collect()
}

fn dpo() -> DpoConfig {
    DpoConfig {
        loss_type: DpoLossType::Sigmoid,
        beta: 0.1,
        label_smoothing: 0.0,
        nll_alpha: 0.0,
    }
}

/// Each sequence's summed log-prob, and the gradient of every parameter.
type SumsAndGrads = (Vec<f64>, Vec<f32>);

/// Forward + backward of one DPO micro-batch through the graph on `m`'s device, the LM head
/// `chunk` rows at a time; also checks that the forward alone gives the same sums.
fn sums_and_grads<O: Ops>(m: &ModelOn<O>, examples: &[Example], chunk: usize) -> SumsAndGrads {
    let scored: Vec<ScoredSequence> = examples
        .iter()
        .flat_map(|e| {
            e.seqs.iter().map(|s| ScoredSequence {
                tokens: s,
                prompt_len: e.prompt_len,
            })
        })
        .collect();
    let tb = TrainBatch::new(&scored);
    let groups = vec![2; examples.len()];
    let cfg = dpo();
    let chosen_tokens: usize = examples
        .iter()
        .map(|e| e.seqs[0].len() - e.prompt_len)
        .sum();
    let mut loss = |g: usize, logps: &[f64]| -> anyhow::Result<Vec<f64>> {
        let e = &examples[g];
        let pair = PairLogps {
            chosen: logps[0],
            rejected: logps[1],
            ref_chosen: e.reference[0],
            ref_rejected: e.reference[1],
            n_chosen: e.seqs[0].len() - e.prompt_len,
            n_rejected: e.seqs[1].len() - e.prompt_len,
        };
        let d = dpo_loss(
            &[pair],
            &cfg,
            examples.len(),
            chosen_tokens,
            &mut DpoTotals::default(),
        );
        Ok(vec![d[0].0, d[0].1])
    };
    let net = m.net();
    let mut acts = Activations::new(&net, tb.len(), true).unwrap();
    acts.set_chunk_rows(&net, chunk).unwrap();
    let mut grads = m.ops.alloc::<f32>(m.layout.len, "test").unwrap();
    let sums = net
        .sequence_logprobs_with_grad(&tb, &mut acts, &groups, &mut loss, &mut grads)
        .unwrap();
    let mut fwd = Activations::new(&net, tb.len(), false).unwrap();
    let again = net.sequence_logprobs(&tb, &mut fwd).unwrap();
    for (a, b) in again.iter().zip(&sums) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    (sums, m.ops.download(&grads).unwrap())
}

/// Per tensor: every element within `tol` of the tensor's largest |gradient|.
fn assert_grads_close(model: &Model, got: &[f32], want: &[f32], tol: f32) {
    for t in model.layout.tensors(&model.config) {
        let (g, w) = (&got[t.range.clone()], &want[t.range.clone()]);
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale + 1e-6,
                "{}[{i}]: GPU {a}, CPU {b} (largest |grad| {scale})",
                t.name
            );
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

on_every_device!(the_training_graph_follows_the_cpu, training_graph_case);

/// The training graph's sums and gradients on `ops` against the CPU's: within summation
/// order in f32, loosely in bf16. On the CPU itself the two runs must agree exactly.
fn training_graph_case<O: Ops + Clone>(ops: O, tol: Tolerance) {
    let examples = examples();
    let models = [
        ("llama", Model::load(&fixture("llama")).unwrap()),
        ("qwen2", Model::load(&fixture("qwen2")).unwrap()),
        // Head dims 64 and 128, where bf16 attention runs on tensor cores.
        ("D=64", random_model(64)),
        ("D=128", random_model(128)),
    ];
    for (name, model) in &models {
        // A chunk of 5 rows: the LM head runs over several chunks, one split mid-sequence.
        let chunk = if tol == Tolerance::F32 { 5 } else { 64 };
        let (cs, cg) = sums_and_grads(&ModelOn::new(Cpu::F32, model).unwrap(), &examples, chunk);
        let on_device = ModelOn::new(ops.clone(), model).unwrap();
        let (gs, gg) = sums_and_grads(&on_device, &examples, chunk);
        for (a, b) in gs.iter().zip(&cs) {
            assert!(
                (a - b).abs() <= tol.value() * b.abs().max(1.0),
                "{name} {tol:?}: sum {a} vs {b}"
            );
        }
        match tol {
            Tolerance::F32 => assert_grads_close(model, &gg, &cg, 1e-3),
            Tolerance::Bf16 => {
                let c = cosine(&gg, &cg);
                assert!(c > 0.99, "{name} bf16: gradient cosine {c}");
            }
        }
    }
}

/// A random Llama with 2 query heads and 1 KV head of `head_dim`, the fixtures' vocabulary.
fn random_model(head_dim: usize) -> Model {
    let vocab = Model::load(&fixture("llama")).unwrap().config.vocab_size;
    let config = tpo_engine::model::ModelConfig::from_json(&serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 2 * head_dim,
        "intermediate_size": 3 * head_dim, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": vocab,
        "max_position_embeddings": 256,
    }))
    .unwrap();
    let mut rng = tpo_engine::backend::rng::Rng::new(head_dim as u64);
    let n = tpo_engine::model::ParamLayout::new(&config).len;
    let params = (0..n).map(|_| 0.05 * rng.normal()).collect();
    Model::from_params(
        config,
        params,
        tpo_engine::model::weights::StorageDtype::F32,
    )
}

fn train_config() -> TrainConfig {
    TrainConfig {
        objective: Objective::Dpo(dpo()),
        optimizer: OptimizerConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
        },
        epochs: 1,
        batch_size: 1,
        micro_batch_tokens: 40,
        seed: 3,
    }
}

on_every_device!(three_updates_track_the_cpu_trainer, trainer_case);
on_every_device!(three_lora_updates_track_the_cpu_trainer, lora_trainer_case);

fn trainer_case<O: Ops>(ops: O, tol: Tolerance) {
    trainer_case_with(ops, tol, None);
}

/// A LoRA adapter (rank 4, every Linear, B nonzero so that A trains from the first step)
/// trained over the frozen model, on `ops` against the CPU.
fn lora_trainer_case<O: Ops>(ops: O, tol: Tolerance) {
    let config = Model::load_config(&fixture("qwen2")).unwrap();
    let lora = LoraConfig::new(4, 8.0, false, 0.0, Target::ALL.to_vec()).unwrap();
    let mut adapter = Adapter::init(&config, lora, 5);
    for (i, l) in adapter.layout.linears.clone().iter().enumerate() {
        for (j, x) in adapter.params[l.b.clone()].iter_mut().enumerate() {
            *x = 0.01 * (((i * 31 + j * 7) % 13) as f32 - 6.0);
        }
    }
    trainer_case_with(ops, tol, Some(adapter));
}

/// Three AdamW updates by the one trainer on `ops` against the same on the CPU, then a
/// roll-back, which restores exactly the weights from before the last update. With
/// `adapter`, the trainer trains it over the frozen model, which it gives back unchanged.
fn trainer_case_with<O: Ops>(ops: O, tol: Tolerance, adapter: Option<Adapter>) {
    let examples = examples();
    let cfg = train_config();
    let mut cpu_model = Model::load(&fixture("qwen2")).unwrap();
    let mut dev_model = Model::load(&fixture("qwen2")).unwrap();
    let base = cpu_model.params.clone();
    let (mut cpu_adapter, mut dev_adapter) = (adapter.clone(), adapter);
    let rows = micro_batch_rows(&examples, &cfg);
    let mut cpu = Trainer::new(Cpu::F32, &mut cpu_model, cpu_adapter.as_mut(), &cfg, rows).unwrap();
    let mut dev = Trainer::new(ops, &mut dev_model, dev_adapter.as_mut(), &cfg, rows).unwrap();
    // The weights each trains: the model's or the adapter's.
    fn host<'a>(model: &'a mut Model, adapter: &'a mut Option<Adapter>) -> &'a mut Vec<f32> {
        match adapter {
            Some(a) => &mut a.params,
            None => &mut model.params,
        }
    }
    // One pair per update: three updates, each at the full learning rate.
    let batches: Vec<Vec<usize>> = (0..examples.len()).map(|i| vec![i]).collect();
    assert_eq!(batches.len(), 3);
    let total = batches.len();
    let mut before_last = vec![];
    for (step, b) in batches.iter().enumerate() {
        if step + 1 == total {
            dev.lend_weights(host(&mut dev_model, &mut dev_adapter))
                .unwrap();
            before_last = host(&mut dev_model, &mut dev_adapter).clone();
            dev.take_back_weights(host(&mut dev_model, &mut dev_adapter))
                .unwrap();
        }
        let want = cpu
            .step(&examples, b, step, total)
            .unwrap()
            .unwrap_or_else(|e| panic!("CPU step {step}: {e:?}"));
        let got = dev
            .step(&examples, b, step, total)
            .unwrap()
            .unwrap_or_else(|e| panic!("{tol:?} step {step}: {e:?}"));
        let (gl, wl) = (
            got.metrics["loss"].as_f64().unwrap(),
            want.metrics["loss"].as_f64().unwrap(),
        );
        assert!(
            (gl - wl).abs() <= tol.value() * wl.abs().max(1.0),
            "{tol:?} step {step}: loss {gl} vs {wl}"
        );
        assert!(
            (got.grad_norm - want.grad_norm).abs() <= 10.0 * tol.value() * want.grad_norm,
            "{tol:?} step {step}: grad norm {} vs {}",
            got.grad_norm,
            want.grad_norm
        );
        assert_eq!(got.tokens, want.tokens);
    }
    cpu.lend_weights(host(&mut cpu_model, &mut cpu_adapter))
        .unwrap();
    dev.lend_weights(host(&mut dev_model, &mut dev_adapter))
        .unwrap();
    if tol == Tolerance::F32 {
        assert_params_close(
            host(&mut dev_model, &mut dev_adapter),
            host(&mut cpu_model, &mut cpu_adapter),
        );
    }
    // Rolling back restores the weights from before the last update, exactly.
    dev.take_back_weights(host(&mut dev_model, &mut dev_adapter))
        .unwrap();
    dev.roll_back().unwrap();
    dev.lend_weights(host(&mut dev_model, &mut dev_adapter))
        .unwrap();
    assert!(
        *host(&mut dev_model, &mut dev_adapter) == before_last,
        "{tol:?}: roll-back"
    );
    if dev_adapter.is_some() {
        // The frozen model comes back as it was.
        cpu.release(&mut cpu_model).unwrap();
        dev.release(&mut dev_model).unwrap();
        assert!(cpu_model.params == base && dev_model.params == base);
    }
}

/// Adam divides by the gradient's root mean square, so an element whose gradient is near
/// zero moves by about lr in the direction of its rounding noise (see tests/train_parity.rs):
/// at least 99.9% within 1e-4, and every one within 1e-3 after three updates of lr 1e-2.
fn assert_params_close(got: &[f32], want: &[f32]) {
    let mut far = 0;
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a - b).abs() <= 1e-3,
            "a parameter differs by {}",
            (a - b).abs()
        );
        far += usize::from((a - b).abs() > 1e-4);
    }
    assert!(
        far * 1000 <= want.len(),
        "{far} of {} parameters differ by more than 1e-4",
        want.len()
    );
}

fn prompts(model: &Model) -> Vec<Vec<u32>> {
    let v = model.config.vocab_size as u32;
    (0..5u32)
        .map(|p| (0..3 + 4 * p).map(|t| (t * 13 + p * 7 + 1) % v).collect())
        .collect()
}

fn options(sampling: SamplingParams, batch_size: usize) -> GenerateOptions {
    GenerateOptions {
        samples: 3,
        max_new_tokens: 12,
        sampling,
        seed: 11,
        batch_size,
        eos_ids: vec![],
        steering: None,
    }
}

#[test]
fn greedy_generation_on_the_gpu_gives_the_cpu_tokens() {
    let Some(gpu) = gpu() else { return };
    for name in ["llama", "qwen2"] {
        let model = Model::load(&fixture(name)).unwrap();
        let ps = prompts(&model);
        // 4 slots for 15 sequences: slots are refilled, prompts prefilled several times.
        let opts = options(SamplingParams::GREEDY, 4);
        let (want, _) = generate(&model, &ps, &opts, &|_| false, &|_| {}).unwrap();
        let (got, stats) = generate_gpu(
            &GpuModel::<f32>::upload(gpu.clone(), &model).unwrap(),
            &ps,
            &opts,
            &|_| false,
            &|_| {},
        )
        .unwrap();
        assert_eq!(got, want, "{name}: greedy tokens");
        assert_eq!(stats.decode_tokens, 15 * 11);
        // bf16 runs the same loop: whole, well-formed completions.
        let (got, _) = generate_gpu(
            &GpuModel::<half::bf16>::upload(gpu.clone(), &model).unwrap(),
            &ps,
            &opts,
            &|_| false,
            &|_| {},
        )
        .unwrap();
        for c in got.iter().flatten() {
            assert_eq!(c.token_ids.len(), 12);
            assert!(c
                .token_ids
                .iter()
                .all(|&t| (t as usize) < model.config.vocab_size));
        }
    }
}

#[test]
fn steered_generation_on_the_gpu_forces_the_cpu_tokens() {
    let Some(gpu) = gpu() else { return };
    let model = Model::load(&fixture("llama")).unwrap();
    let ps = prompts(&model);
    let plain = options(SamplingParams::GREEDY, 4);
    let (first, _) = generate(&model, &ps, &plain, &|_| false, &|_| {}).unwrap();
    // An early "EOS", and a budget: both ways of forcing the marker [1, 2].
    let mut opts = options(SamplingParams::GREEDY, 4);
    opts.eos_ids = vec![first[0][0].token_ids[2]];
    opts.steering = Some(Steering {
        prefilled: true,
        force_on_end: true,
        max_thought_tokens: Some(5),
        marker: vec![1, 2],
        phase_of: Arc::new(|ids: &[u32]| {
            if ids.contains(&1) {
                Phase::Response
            } else {
                Phase::Thought
            }
        }),
    });
    let (want, _) = generate(&model, &ps, &opts, &|_| false, &|_| {}).unwrap();
    assert!(want.iter().flatten().any(|c| c.forced.is_some()));
    let (got, _) = generate_gpu(
        &GpuModel::<f32>::upload(gpu.clone(), &model).unwrap(),
        &ps,
        &opts,
        &|_| false,
        &|_| {},
    )
    .unwrap();
    assert_eq!(got, want, "steered greedy tokens");
}

#[test]
fn seeded_sampling_on_the_gpu_follows_the_cpu_streams() {
    let Some(gpu) = gpu() else { return };
    let model = Model::load(&fixture("llama")).unwrap();
    let ps = prompts(&model);
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        top_k: 0,
    };
    let opts = options(sampling, 16);
    let (want, _) = generate(&model, &ps, &opts, &|_| false, &|_| {}).unwrap();
    let (got, _) = generate_gpu(
        &GpuModel::<f32>::upload(gpu.clone(), &model).unwrap(),
        &ps,
        &opts,
        &|_| false,
        &|_| {},
    )
    .unwrap();
    // The same uniform draws; only a draw within float rounding of a boundary between two
    // tokens may go the other way (and change the rest of that completion).
    let same = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .filter(|(a, b)| a == b)
        .count();
    assert!(same >= 13, "{same} of 15 completions are the CPU's");
}

on_every_device!(a_reward_model_scores_as_on_the_cpu, reward_model_case);

fn reward_model_case<O: Ops + Clone>(ops: O, tol: Tolerance) {
    for name in ["rm-llama", "rm-qwen2"] {
        let dir = fixture(name);
        let config = tpo_engine::model::ModelConfig::load(&dir.join("config.json")).unwrap();
        let model = Model::load_with_config(&dir, config).unwrap();
        let v = model.config.vocab_size as u32;
        let pad = model.config.pad_token_id;
        // Sequences of several lengths, one ending in pad tokens where the model has one
        // (the score is read before them).
        let mut seqs: Vec<Vec<u32>> = (0..6u32)
            .map(|s| (0..2 + 5 * s).map(|t| (t * 11 + s * 3 + 1) % v).collect())
            .collect();
        if let Some(p) = pad {
            seqs[2].extend([p, p]);
        }
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = model.classify(&refs).unwrap();
        let on_device = ModelOn::new(ops.clone(), &model).unwrap();
        let net = on_device.net();
        let n = refs.iter().map(|s| s.len()).sum();
        let mut acts = Activations::new(&net, n, false).unwrap();
        let got = net.classify(&refs, &mut acts).unwrap();
        assert_eq!(got.len(), want.len());
        // A bf16 score is a dot product of rounded activations: a few percent.
        let rel = if tol == Tolerance::F32 { 1e-4 } else { 0.05 };
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() as f64 <= rel * b.abs().max(1.0) as f64,
                "{name} {tol:?}: {a} vs {b}"
            );
        }
    }
}
