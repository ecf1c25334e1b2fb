//! LoRA training end to end on the chat fixture: `dpo` and `sft` with `--lora-r` write PEFT
//! adapters (OUT/adapter, checkpoint-STEP) and leave the base alone; `--adapter` continues
//! an adapter, its DPO reference being the adapted model; bad LoRA flags are refused before
//! anything is written.

mod common;

use common::{chat_fixture, run_on_threads, s, write, Run};
use serde_json::Value;
use std::path::Path;
use tempfile::TempDir;
use tpo_engine::model::lora::Target;
use tpo_engine::model::{peft, Model};

fn tpo(args: &[&str]) -> Run {
    run_on_threads("2", args)
}

const PAIRS: &str = r#"{"prompt": "Name a color.", "chosen": "Blue, like the sky.", "rejected": "I do not know."}
{"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five, I think."}
{"prompt": "Say hello.", "chosen": "Hello there!", "rejected": "No."}
{"prompt": "Name an animal.", "chosen": "A cat.", "rejected": "A rock is an animal."}
"#;

fn metric(out: &Path, step: usize, key: &str) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let line: Value = serde_json::from_str(text.lines().nth(step).unwrap()).unwrap();
    line[key].as_f64().unwrap()
}

fn lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn dpo_trains_an_adapter_in_pefts_format_and_continues_it() {
    let tmp = TempDir::new().unwrap();
    let pairs = write(&tmp.path().join("pairs.jsonl"), PAIRS);
    let model = chat_fixture();
    let out = tmp.path().join("run");
    let base_before = std::fs::read(model.join("model.safetensors")).unwrap();
    let run = tpo(&[
        "dpo",
        "--model",
        s(&model),
        "--pairs",
        s(&pairs),
        "--out",
        s(&out),
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--lr",
        "2e-2",
        "--lr-schedule",
        "constant",
        "--epochs",
        "12",
        "--batch-size",
        "4",
        "--save-steps",
        "5",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("LoRA r 8 (scale 2)"), "{}", run.stderr);
    assert_eq!(lines(&out), 12);
    // A fresh adapter is the base model: the first update starts at the reference.
    assert!((metric(&out, 0, "loss") - std::f64::consts::LN_2).abs() < 1e-4);
    assert_eq!(metric(&out, 11, "rewards/accuracies"), 1.0);
    assert!(metric(&out, 11, "rewards/margins") > 0.4);
    assert!(
        !out.join("model").exists(),
        "a LoRA run writes no full model"
    );
    let config = Model::load_config(&model).unwrap();
    for dir in ["checkpoint-5", "checkpoint-10", "adapter"] {
        let adapter = peft::load(&out.join(dir), &config).unwrap();
        assert_eq!((adapter.config.r, adapter.config.alpha), (8, 16.0));
        assert_eq!(adapter.config.targets, Target::ALL.to_vec());
        assert!(!adapter.is_identity(), "{dir} has learnt");
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(dir).join(peft::CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["base_model_name_or_path"], s(&model));
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
    }
    assert!(std::fs::read(model.join("model.safetensors")).unwrap() == base_before);

    // Continuing: the reference is the adapted model, so the first update starts at ln 2
    // again, and its rewards start where the first run's ended.
    let next = tmp.path().join("next");
    let run = tpo(&[
        "dpo",
        "--model",
        s(&model),
        "--pairs",
        s(&pairs),
        "--out",
        s(&next),
        "--adapter",
        s(&out.join("adapter")),
        "--lr",
        "1e-2",
        "--epochs",
        "2",
        "--batch-size",
        "4",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!((metric(&next, 0, "loss") - std::f64::consts::LN_2).abs() < 1e-4);
    assert!(metric(&next, 0, "rewards/margins").abs() < 1e-4);
    let ref_chosen = |dir: &Path| -> f64 {
        let text = std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        first["ref_chosen_logps"].as_f64().unwrap()
    };
    assert!(
        ref_chosen(&next) > ref_chosen(&out) + 1.0,
        "the adapted model prefers its chosen answers: {} vs {}",
        ref_chosen(&next),
        ref_chosen(&out)
    );
    let continued = peft::load(&next.join("adapter"), &config).unwrap();
    assert_eq!(continued.config.r, 8);

    // generate reads the adapter.
    let prompts = write(
        &tmp.path().join("prompts.jsonl"),
        "{\"prompt\": \"Say hello.\"}\n",
    );
    let gen = tmp.path().join("gen.jsonl");
    let run = tpo(&[
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&out.join("adapter")),
        "--prompts",
        s(&prompts),
        "--out",
        s(&gen),
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(run.ok, "{}", run.stderr);
}

#[test]
fn sft_trains_the_targets_it_is_given() {
    let tmp = TempDir::new().unwrap();
    let data = write(
        &tmp.path().join("sft.jsonl"),
        r#"{"prompt": "Name a color.", "completion": "Blue, like the sky."}
{"prompt": "Say hello.", "completion": "Hello there, friend!"}
"#,
    );
    let out = tmp.path().join("sft");
    let run = tpo(&[
        "sft",
        "--model",
        s(&chat_fixture()),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--lora-r",
        "4",
        "--lora-targets",
        "q_proj,v_proj",
        "--lora-rslora",
        "--lr",
        "1e-1",
        "--lr-schedule",
        "constant",
        "--epochs",
        "20",
        "--batch-size",
        "2",
    ]);
    assert!(run.ok, "{}", run.stderr);
    // Two of seven Linears of a small model: the loss falls, slowly.
    assert!(metric(&out, 19, "loss") < metric(&out, 0, "loss") - 0.2);
    let config = Model::load_config(&chat_fixture()).unwrap();
    let adapter = peft::load(&out.join("adapter"), &config).unwrap();
    assert_eq!(adapter.config.targets, vec![Target::Q, Target::V]);
    assert!(adapter.config.rslora);
    assert_eq!(adapter.config.scale(), 8.0 / 2.0);
}

#[test]
fn bad_lora_flags_are_refused_before_anything_is_written() {
    let tmp = TempDir::new().unwrap();
    let pairs = write(&tmp.path().join("pairs.jsonl"), PAIRS);
    let model = chat_fixture();
    let out = tmp.path().join("run");
    for (flags, needle) in [
        (vec!["--lora-alpha", "4"], "--lora-alpha needs --lora-r"),
        (vec!["--lora-r", "4", "--adapter", "x"], "give one of them"),
        (vec!["--lora-r", "0"], "rank 0"),
        (
            vec!["--lora-r", "4", "--lora-dropout", "1"],
            "dropout 1: expected at least 0",
        ),
        (
            vec!["--lora-r", "4", "--lora-targets", "qkv"],
            "no module \"qkv\"",
        ),
        (
            vec!["--adapter", "/nonexistent/adapter"],
            "/nonexistent/adapter",
        ),
    ] {
        let mut args = vec![
            "dpo",
            "--model",
            s(&model),
            "--pairs",
            s(&pairs),
            "--out",
            s(&out),
        ];
        args.extend(flags.iter());
        let run = tpo(&args);
        assert!(!run.ok, "{flags:?} was accepted");
        assert!(run.stderr.contains(needle), "{flags:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(!out.exists(), "{flags:?} left {}", out.display());
    }
}

#[test]
fn lora_dropout_is_recorded_and_a_run_with_it_is_the_same_on_any_thread_count() {
    let tmp = TempDir::new().unwrap();
    let data = write(
        &tmp.path().join("sft.jsonl"),
        r#"{"prompt": "Name a color.", "completion": "Blue, like the sky."}
{"prompt": "Say hello.", "completion": "Hello there, friend!"}
"#,
    );
    let train = |name: &str, threads: &str, dropout: &str| {
        let out = tmp.path().join(name);
        let run = run_on_threads(
            threads,
            [
                "sft",
                "--model",
                s(&chat_fixture()),
                "--data",
                s(&data),
                "--out",
                s(&out),
                "--lora-r",
                "4",
                "--lora-dropout",
                dropout,
                "--lr",
                "3e-2",
                "--epochs",
                "4",
                "--batch-size",
                "1",
            ],
        );
        assert!(run.ok, "{}", run.stderr);
        std::fs::read(out.join("adapter").join(peft::WEIGHTS_FILE)).unwrap()
    };
    let one = train("one", "1", "0.2");
    assert!(
        train("two", "2", "0.2") == one,
        "the masks depend on the thread count"
    );
    assert!(
        train("none", "2", "0") != one,
        "dropout changes the training"
    );
    let config = Model::load_config(&chat_fixture()).unwrap();
    let adapter = peft::load(&tmp.path().join("one/adapter"), &config).unwrap();
    assert_eq!(adapter.config.dropout, 0.2);
}

#[test]
fn a_diverging_lora_run_keeps_the_last_good_adapter() {
    let tmp = TempDir::new().unwrap();
    let pairs = write(&tmp.path().join("pairs.jsonl"), PAIRS);
    let model = chat_fixture();
    let dpo = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "dpo",
            "--model",
            s(&model),
            "--pairs",
            s(&pairs),
            "--out",
            s(&out),
            "--lora-r",
            "4",
            "--lr",
            "1e30",
            "--lr-schedule",
            "constant",
            "--batch-size",
            "1",
        ];
        args.extend_from_slice(extra);
        (tpo(&args), out)
    };
    // Warmup gives update 1 a learning rate of 0 and update 2 one of 5e29: B moves by
    // about that, and the adapter's share of the next forward overflows f32 (the norms keep
    // a moderate blow-up finite).
    let (run, out) = dpo(
        "diverge",
        &["--warmup-steps", "2", "--epochs", "2", "--save-steps", "2"],
    );
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    for needle in [
        "training stopped at step 3",
        "after update 1",
        "checkpoint-1",
        "checkpoint-2 holds the weights that gave it",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
    let config = Model::load_config(&model).unwrap();
    let kept = peft::load(&out.join("checkpoint-1"), &config).unwrap();
    assert!(kept.is_identity(), "update 1 had a learning rate of 0");
    assert!(
        !out.join("adapter").exists(),
        "no final adapter from a failed run"
    );

    let (run, out) = dpo("diverge-at-once", &[]);
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("the starting adapter's"),
        "{}",
        run.stderr
    );
    assert!(!out.join("checkpoint-1").exists());
}
