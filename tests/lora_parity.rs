//! Parity of LoRA training with PEFT and PyTorch autograd (fixtures from
//! scripts/make-lora-train-fixtures.py): over the frozen tiny llama, an adapter PEFT wrote
//! (r 4, alpha 8, every Linear) gives PEFT's DPO loss, metrics and the gradient of every A
//! and B, and three AdamW updates of the adapter alone give PEFT's losses and adapter; the
//! adapter we write then has PEFT's tensor names, shapes and config, and the base model
//! comes back unchanged.
//!
//! Tolerances (f32 both sides, only summation order differs), as in tests/train_parity.rs:
//! loss and metrics within 1e-5 relative plus 1e-5 absolute (1e-4 relative after updates);
//! gradients: every element within 1e-3 of its tensor's largest |gradient| plus 1e-6;
//! parameters after three updates: at least 99.9% within 1e-4 and all within 5e-3.

use anyhow::Result;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use tpo_engine::backend::device::Device;
use tpo_engine::engine::train;
use tpo_engine::model::graph::{Activations, LoraNet, ScoredSequence, TrainBatch};
use tpo_engine::model::lora::Adapter;
use tpo_engine::model::{peft, Model};
use tpo_engine::train::loss::{dpo_loss, DpoTotals, PairLogps};
use tpo_engine::train::trainer::{RunSink, Trained};
use tpo_engine::train::{
    DpoConfig, DpoLossType, Example, LrSchedule, Objective, OptimizerConfig, TrainConfig,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    let all = v.as_array().unwrap();
    all.iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    let all = v.as_array().unwrap();
    all.iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The DPO case the fixture trains on, its loss settings and its pairs as examples.
fn case() -> (DpoConfig, Vec<Example>) {
    let lora = json(&fixtures().join("lora-dpo/case.json"));
    let all = json(&fixtures().join("dpo/cases.json"));
    let case = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == lora["case"])
        .unwrap()
        .clone();
    assert_eq!(case["loss_type"], "sigmoid");
    let cfg = DpoConfig {
        loss_type: DpoLossType::Sigmoid,
        beta: case["beta"].as_f64().unwrap(),
        label_smoothing: case["label_smoothing"].as_f64().unwrap(),
        nll_alpha: case["nll_alpha"].as_f64().unwrap(),
    };
    let (rc, rr) = (floats(&case["ref_chosen"]), floats(&case["ref_rejected"]));
    let examples = all["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prompt = ids(&p["prompt"]);
            Example {
                seqs: vec![
                    [prompt.as_slice(), &ids(&p["chosen"])].concat(),
                    [prompt.as_slice(), &ids(&p["rejected"])].concat(),
                ],
                prompt_len: prompt.len(),
                reference: vec![rc[i], rr[i]],
            }
        })
        .collect();
    (cfg, examples)
}

/// Each tensor of an adapter file, by name: (shape, values).
fn tensors(file: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, t.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The values of A or B of each adapted Linear of `adapter`'s buffer `buf`, by PEFT's name.
fn by_name<'a>(adapter: &Adapter, buf: &'a [f32]) -> Vec<(String, &'a [f32])> {
    let mut out = vec![];
    for l in &adapter.layout.linears {
        out.push((
            peft::tensor_name(l.layer, l.target, "lora_A"),
            &buf[l.a.clone()],
        ));
        out.push((
            peft::tensor_name(l.layer, l.target, "lora_B"),
            &buf[l.b.clone()],
        ));
    }
    out
}

fn assert_scalar(got: f64, want: f64, rtol: f64, atol: f64, what: &str) {
    assert!(
        (got - want).abs() <= atol + rtol * want.abs(),
        "{what}: got {got}, want {want}"
    );
}

/// DPO metrics and the adapter's gradient of the whole batch in one pass, the base frozen.
fn loss_and_grads(
    model: &Model,
    adapter: &Adapter,
    examples: &[Example],
    cfg: &DpoConfig,
) -> (Map<String, Value>, Vec<f32>) {
    let seqs: Vec<ScoredSequence> = examples
        .iter()
        .flat_map(|e| {
            e.seqs.iter().map(|s| ScoredSequence {
                tokens: s,
                prompt_len: e.prompt_len,
            })
        })
        .collect();
    let batch = TrainBatch::new(&seqs);
    let n = |e: &Example, i: usize| e.seqs[i].len() - e.prompt_len;
    let chosen_tokens: usize = examples.iter().map(|e| n(e, 0)).sum();
    let mut totals = DpoTotals::default();
    let mut loss = |g: usize, logps: &[f64]| -> Result<Vec<f64>> {
        let e = &examples[g];
        let pair = PairLogps {
            chosen: logps[0],
            rejected: logps[1],
            ref_chosen: e.reference[0],
            ref_rejected: e.reference[1],
            n_chosen: n(e, 0),
            n_rejected: n(e, 1),
        };
        let d = dpo_loss(&[pair], cfg, examples.len(), chosen_tokens, &mut totals);
        Ok(vec![d[0].0, d[0].1])
    };
    let mut net = model.net();
    net.lora = Some(LoraNet {
        layout: &adapter.layout,
        weights: &adapter.params,
        r: adapter.config.r,
        scale: adapter.config.scale() as f32,
        dropout: None,
    });
    let mut acts = Activations::new(&net, batch.len(), true).unwrap();
    let mut grads = vec![0.0f32; adapter.layout.len];
    let groups = vec![2; examples.len()];
    net.sequence_logprobs_with_grads(
        &batch,
        &mut acts,
        &groups,
        &mut loss,
        None,
        Some(&mut grads),
    )
    .unwrap();
    (totals.metrics(cfg), grads)
}

#[test]
fn a_dpo_step_gives_pefts_loss_metrics_and_adapter_gradients() {
    let model = Model::load(&fixtures().join("llama")).unwrap();
    let adapter = peft::load(&fixtures().join("lora-dpo/start"), &model.config).unwrap();
    assert_eq!(
        adapter.layout.linears.len(),
        7 * model.config.num_hidden_layers
    );
    let (cfg, examples) = case();
    let want = json(&fixtures().join("lora-dpo/case.json"));
    let (metrics, grads) = loss_and_grads(&model, &adapter, &examples, &cfg);
    let loss = metrics["loss"].as_f64().unwrap();
    assert_scalar(loss, want["loss"].as_f64().unwrap(), 1e-5, 1e-5, "loss");
    for (k, v) in want["metrics"].as_object().unwrap() {
        let got = match k.as_str() {
            "grad_norm" => grads
                .iter()
                .map(|g| (*g as f64).powi(2))
                .sum::<f64>()
                .sqrt(),
            _ => metrics[k].as_f64().unwrap(),
        };
        assert_scalar(got, v.as_f64().unwrap(), 1e-5, 1e-5, k);
    }
    let pefts = tensors(&fixtures().join("lora-dpo/grads.safetensors"));
    let ours = by_name(&adapter, &grads);
    assert_eq!(pefts.len(), ours.len());
    for (name, _, want) in &pefts {
        let got = ours.iter().find(|(n, _)| n == name).unwrap().1;
        let max = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        assert!(max > 0.0, "{name}: PEFT's gradient is zero");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 + 1e-3 * max,
                "{name} [{i}]: got {g}, want {w} (largest {max})"
            );
        }
    }
}

#[derive(Default)]
struct Recorder {
    lines: Vec<Map<String, Value>>,
    saved: Option<PathBuf>,
}

impl RunSink for Recorder {
    fn metrics(&mut self, line: &Map<String, Value>) -> Result<()> {
        self.lines.push(line.clone());
        Ok(())
    }
    fn after_step(&mut self, trained: Trained, _: usize, last: bool) -> Result<()> {
        let Trained::Adapter(adapter) = trained else {
            panic!("a LoRA run hands its sink the adapter");
        };
        if last {
            let dir = std::env::temp_dir().join(format!("tpo-lora-parity-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            peft::save(&dir, adapter, "tests/fixtures/llama")?;
            self.saved = Some(dir);
        }
        Ok(())
    }
    fn keep_last_good(&mut self, _: Trained, _: usize) -> Result<String> {
        Ok(String::new())
    }
    fn progress(&mut self, _: usize, _: f64, _: f64) {}
}

#[test]
fn three_adamw_updates_of_the_adapter_match_pefts_and_leave_the_base_alone() {
    let mut model = Model::load(&fixtures().join("llama")).unwrap();
    let base = model.params.clone();
    let start = fixtures().join("lora-dpo/start");
    let mut adapter = peft::load(&start, &model.config).unwrap();
    let (cfg, examples) = case();
    let want = json(&fixtures().join("lora-dpo/case.json"));
    let adamw = &want["adamw"];
    let betas = floats(&adamw["betas"]);
    let train_cfg = TrainConfig {
        objective: Objective::Dpo(cfg),
        optimizer: OptimizerConfig {
            lr: adamw["lr"].as_f64().unwrap(),
            beta1: betas[0],
            beta2: betas[1],
            eps: adamw["eps"].as_f64().unwrap(),
            weight_decay: adamw["weight_decay"].as_f64().unwrap(),
            max_grad_norm: adamw["max_grad_norm"].as_f64().unwrap(),
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
        },
        // Three epochs of one batch: three updates; a small token budget splits each batch
        // into micro-batches, so the adapter's gradients accumulate.
        epochs: 3,
        batch_size: examples.len(),
        micro_batch_tokens: 24,
        seed: 7,
    };
    let mut rec = Recorder::default();
    let device = Device::CPU;
    train(
        &mut model,
        Some(&mut adapter),
        &examples,
        &train_cfg,
        &mut rec,
        &device,
    )
    .unwrap();
    assert!(model.params == base, "the frozen base came back unchanged");
    let (losses, norms) = (floats(&adamw["losses"]), floats(&adamw["grad_norms"]));
    assert_eq!(rec.lines.len(), 3);
    for (s, line) in rec.lines.iter().enumerate() {
        let loss = line["loss"].as_f64().unwrap();
        assert_scalar(loss, losses[s], 1e-4, 0.0, &format!("loss {s}"));
        let norm = line["grad_norm"].as_f64().unwrap();
        assert_scalar(norm, norms[s], 1e-4, 0.0, &format!("grad_norm {s}"));
    }
    let (after, _) = loss_and_grads(&model, &adapter, &examples, &cfg);
    let after = after["loss"].as_f64().unwrap();
    assert_scalar(after, losses[3], 1e-4, 0.0, "loss after 3 updates");

    // The adapter we wrote: PEFT's names and shapes, and PEFT's values after the updates.
    let dir = rec.saved.expect("the last update saved the adapter");
    let pefts = tensors(&fixtures().join("lora-dpo/adamw.safetensors"));
    let ours = tensors(&dir.join(peft::WEIGHTS_FILE));
    assert_eq!(
        ours.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(),
        pefts.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(),
        "tensor names and shapes"
    );
    let (mut far, mut count) = (0, 0);
    for ((name, _, got), (_, _, want)) in ours.iter().zip(&pefts) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            assert!(err <= 5e-3, "{name} [{i}]: got {g}, want {w}");
            far += usize::from(err > 1e-4);
            count += 1;
        }
    }
    assert!(
        far * 1000 <= count,
        "{far} of {count} differ by more than 1e-4"
    );
    let config = json(&dir.join(peft::CONFIG_FILE));
    let pefts_config = json(&start.join(peft::CONFIG_FILE));
    for key in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "bias",
        "lora_dropout",
    ] {
        assert_eq!(config[key], pefts_config[key], "{key}");
    }
    let mut targets = strings(&config["target_modules"]);
    let mut pefts_targets = strings(&pefts_config["target_modules"]);
    targets.sort();
    pefts_targets.sort();
    assert_eq!(targets, pefts_targets);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JSON list of strings.
fn strings(v: &Value) -> Vec<String> {
    let all = v.as_array().unwrap();
    all.iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}
