//! `tpo-engine dpo`, `sft` and `logprobs` end to end on the small init-model checkpoint:
//! training moves the metrics the right way, runs are deterministic, checkpoints load, and
//! bad input or a diverging run ends in a clear error that loses nothing.

mod common;

use common::{chat_fixture, run_on_threads, s, write, Run};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tpo_engine::model::Model;

fn tpo(args: &[&str]) -> Run {
    run_on_threads("2", args)
}

const PAIRS: &str = r#"{"prompt": "Name a color.", "chosen": "Blue, like the sky.", "rejected": "I do not know."}
{"prompt": "What is two plus two?", "chosen": "Four.", "rejected": "Five, I think."}
{"prompt": "Say hello.", "chosen": "Hello there!", "rejected": "No."}
{"prompt": "Name an animal.", "chosen": "A cat.", "rejected": "A rock is an animal."}
"#;

fn metrics(out: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        })
        .collect()
}

fn f(line: &serde_json::Map<String, Value>, key: &str) -> f64 {
    line.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no metric {key} in {line:?}"))
}

fn dpo(tmp: &Path, out: &str, extra: &[&str]) -> (Run, PathBuf) {
    let pairs = write(&tmp.join("pairs.jsonl"), PAIRS);
    let out = tmp.join(out);
    let model = chat_fixture();
    let mut args = vec![
        "dpo",
        "--model",
        s(&model),
        "--pairs",
        s(&pairs),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    (tpo(&args), out)
}

/// The points drawn in the report's chart `id` (each marked by a circle).
fn markers(report: &str, id: &str) -> usize {
    let start = report
        .find(&format!("<figure id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id} in the report"));
    let end = start + report[start..].find("</figure>").unwrap();
    report[start..end].matches("<circle").count()
}

#[test]
fn dpo_drives_accuracy_to_one_and_margins_up() {
    let tmp = TempDir::new().unwrap();
    let (run, out) = dpo(
        tmp.path(),
        "run",
        &[
            "--lr",
            "3e-3",
            "--epochs",
            "12",
            "--batch-size",
            "4",
            "--save-steps",
            "5",
        ],
    );
    assert!(run.ok, "{}", run.stderr);
    let lines = metrics(&out);
    assert_eq!(lines.len(), 12);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
    ] {
        assert!(f(&lines[0], key).is_finite(), "{key}");
    }
    // The first update starts from the reference itself: zero margins, loss ln 2.
    assert!(f(&lines[0], "rewards/margins").abs() < 1e-4);
    assert!((f(&lines[0], "loss") - std::f64::consts::LN_2).abs() < 1e-4);
    let last = lines.last().unwrap();
    assert_eq!(f(last, "rewards/accuracies"), 1.0, "{last:?}");
    assert!(f(last, "rewards/margins") > 0.5, "{last:?}");
    assert!(f(last, "loss") < 0.5, "{last:?}");
    // Linear decay to zero over the run.
    assert!(f(&lines[0], "learning_rate") > f(last, "learning_rate"));
    // The report draws every update's loss, reward accuracy and margin.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    for id in [
        "loss",
        "reward-accuracy",
        "reward-margin",
        "grad-norm",
        "learning-rate",
    ] {
        assert_eq!(markers(&report, id), 12, "{id}");
    }

    // The pairs with their reference log-probs, and checkpoints that load.
    let pairs = std::fs::read_to_string(out.join("pairs.jsonl")).unwrap();
    for line in pairs.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["ref_chosen_logps"].as_f64().unwrap() < 0.0);
        assert!(v["ref_rejected_logps"].as_f64().unwrap() < 0.0);
    }
    for dir in ["checkpoint-5", "checkpoint-10", "model"] {
        let m = Model::load(&out.join(dir)).unwrap();
        assert!(out.join(dir).join("tokenizer.json").exists());
        assert!(m.params.iter().all(|x| x.is_finite()));
    }
    let start = Model::load(&chat_fixture()).unwrap();
    let end = Model::load(&out.join("model")).unwrap();
    assert_ne!(start.params, end.params);
    // Nothing temporary is left behind (the run's lock file stays, as documented).
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.starts_with('.') || name == ".tpo-engine.lock",
            "left {name}"
        );
    }
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let tmp = TempDir::new().unwrap();
    let args = [
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--micro-batch-tokens",
        "40",
    ];
    let strip = |out: &Path| -> Vec<String> {
        metrics(out)
            .into_iter()
            .map(|mut l| {
                l.remove("tokens_per_s");
                serde_json::to_string(&l).unwrap()
            })
            .collect()
    };
    let (a, out_a) = dpo(tmp.path(), "a", &[&args[..], &["--seed", "5"]].concat());
    let (b, out_b) = dpo(tmp.path(), "b", &[&args[..], &["--seed", "5"]].concat());
    let (c, out_c) = dpo(tmp.path(), "c", &[&args[..], &["--seed", "6"]].concat());
    assert!(a.ok && b.ok && c.ok, "{}{}{}", a.stderr, b.stderr, c.stderr);
    assert_eq!(strip(&out_a), strip(&out_b));
    let weights = |out: &Path| std::fs::read(out.join("model/model.safetensors")).unwrap();
    assert_eq!(weights(&out_a), weights(&out_b));
    assert_ne!(
        strip(&out_a),
        strip(&out_c),
        "another seed orders the pairs otherwise"
    );

    // The pairs a run writes carry their reference log-probs: training from them again
    // skips the reference pass and gives the same run.
    let out_d = tmp.path().join("d");
    let (model, pairs) = (chat_fixture(), out_a.join("pairs.jsonl"));
    let d = tpo(&[
        &[
            "dpo",
            "--model",
            s(&model),
            "--pairs",
            s(&pairs),
            "--out",
            s(&out_d),
        ],
        &args[..],
        &["--seed", "5"],
    ]
    .concat());
    assert!(d.ok, "{}", d.stderr);
    assert_eq!(strip(&out_a), strip(&out_d));

    // Other thread counts split the work otherwise and give the same bits.
    for threads in ["1", "3"] {
        let out_t = tmp.path().join(format!("threads-{threads}"));
        let pairs = tmp.path().join("pairs.jsonl");
        let t = run_on_threads(
            threads,
            [
                &[
                    "dpo",
                    "--model",
                    s(&model),
                    "--pairs",
                    s(&pairs),
                    "--out",
                    s(&out_t),
                ],
                &args[..],
                &["--seed", "5"],
            ]
            .concat(),
        );
        assert!(t.ok, "{}", t.stderr);
        assert_eq!(strip(&out_a), strip(&out_t), "{threads} threads");
        assert_eq!(weights(&out_a), weights(&out_t), "{threads} threads");
    }
}

#[test]
fn sft_lowers_the_completion_loss_and_logprobs_see_it() {
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
        "--lr",
        "1e-2",
        "--epochs",
        "20",
        "--batch-size",
        "2",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let lines = metrics(&out);
    assert_eq!(lines.len(), 20);
    assert!(
        f(&lines[19], "loss") < 0.5 * f(&lines[0], "loss"),
        "{lines:?}"
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(markers(&report, "loss"), 20);
    assert!(
        !report.contains("id=\"reward-accuracy\""),
        "no DPO rewards in an sft report"
    );

    let score = |model: &Path, name: &str| -> Vec<(f64, u64)> {
        let o = tmp.path().join(name);
        let run = tpo(&[
            "logprobs",
            "--model",
            s(model),
            "--input",
            s(&data),
            "--out",
            s(&o),
        ]);
        assert!(run.ok, "{}", run.stderr);
        std::fs::read_to_string(&o)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(v["prompt"].is_string(), "input fields are kept");
                (
                    v["sum_logprob"].as_f64().unwrap(),
                    v["n_tokens"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let before = score(&chat_fixture(), "before.jsonl");
    let after = score(&out.join("model"), "after.jsonl");
    // The SFT loss at step 1 is the token-mean NLL of the untrained model.
    let tokens: u64 = before.iter().map(|x| x.1).sum();
    let nll: f64 = -before.iter().map(|x| x.0).sum::<f64>() / tokens as f64;
    assert!(
        (nll - f(&lines[0], "loss")).abs() < 1e-4 * nll,
        "{nll} vs {:?}",
        lines[0]
    );
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.1, a.1);
        assert!(a.0 > b.0 + 1.0, "log-prob {} -> {}", b.0, a.0);
    }
}

/// Runs dpo on `pairs` expecting failure naming every needle, with no run directory made.
fn expect_dpo_error(tmp: &Path, pairs: &str, needles: &[&str]) {
    let file = write(&tmp.join("bad.jsonl"), pairs);
    let out = tmp.join("bad-run");
    let run = tpo(&[
        "dpo",
        "--model",
        s(&chat_fixture()),
        "--pairs",
        s(&file),
        "--out",
        s(&out),
    ]);
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "error should mention {n:?}:\n{}",
            run.stderr
        );
    }
    assert!(!out.exists(), "a refused run created {}", out.display());
}

#[test]
fn bad_pairs_are_refused_with_file_and_line() {
    let tmp = TempDir::new().unwrap();
    let good = r#"{"prompt": "Hi.", "chosen": "Hello.", "rejected": "Go away."}"#;
    expect_dpo_error(
        tmp.path(),
        &format!("{good}\n{{\"prompt\": \"Hi.\", \"chosen\": \"\", \"rejected\": \"No.\"}}\n"),
        &["bad.jsonl:2", "empty \"chosen\""],
    );
    expect_dpo_error(
        tmp.path(),
        r#"{"prompt": "Hi.", "chosen": "Hello.", "rejected": "  "}"#,
        &["bad.jsonl:1", "empty \"rejected\""],
    );
    expect_dpo_error(
        tmp.path(),
        &format!(
            "{good}\n\n{{\"prompt\": \"Hi.\", \"chosen\": \"Same.\", \"rejected\": \"Same.\"}}\n"
        ),
        &["bad.jsonl:3", "same text"],
    );
    let long = "word ".repeat(400);
    expect_dpo_error(
        tmp.path(),
        &format!("{{\"prompt\": \"Hi.\", \"chosen\": \"{long}\", \"rejected\": \"No.\"}}\n"),
        &["bad.jsonl:1", "context is 128"],
    );
    expect_dpo_error(
        tmp.path(),
        "{\"prompt\": \"Hi.\",\n",
        &["bad.jsonl:1", "not valid JSON"],
    );
    expect_dpo_error(
        tmp.path(),
        r#"{"prompt": "Hi.", "rejected": "No."}"#,
        &["bad.jsonl:1", "missing field \"chosen\""],
    );
    expect_dpo_error(
        tmp.path(),
        &format!("{good}\n{{\"prompt\": \"Hi.\", \"chosen\": \"A.\", \"rejected\": \"B.\", \"ref_chosen_logps\": -3.0, \"ref_rejected_logps\": -4.0}}\n"),
        &["bad.jsonl:1", "reference log-probs"],
    );
    expect_dpo_error(tmp.path(), "\n\n", &["bad.jsonl", "no pairs"]);
    for (above_zero, shown) in [("0.5", "0.5"), ("1e308", "1e+308")] {
        expect_dpo_error(
            tmp.path(),
            &format!("{{\"prompt\": \"Hi.\", \"chosen\": \"A.\", \"rejected\": \"B.\", \"ref_chosen_logps\": {above_zero}, \"ref_rejected_logps\": -4.0}}\n"),
            &["bad.jsonl:1", "a log-probability", shown],
        );
    }
}

#[test]
fn bad_flags_and_an_existing_run_directory_are_refused() {
    let tmp = TempDir::new().unwrap();
    for (flag, value, needle) in [
        ("--beta", "0", "--beta"),
        ("--lr", "nan", "--lr"),
        ("--label-smoothing", "0.7", "--label-smoothing"),
        ("--batch-size", "0", "--batch-size"),
        ("--adam-beta2", "1", "--adam-beta2"),
    ] {
        let (run, out) = dpo(tmp.path(), "flags", &[flag, value]);
        assert!(
            !run.ok && run.code == Some(1) && run.stderr.contains(needle),
            "{flag}: {}",
            run.stderr
        );
        assert!(!out.exists());
    }
    let taken = tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    write(&taken.join("keep.txt"), "mine");
    let (run, _) = dpo(tmp.path(), "taken", &[]);
    assert!(
        !run.ok && run.stderr.contains("not empty"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_diverging_run_stops_on_the_non_finite_loss_and_keeps_the_last_good_weights() {
    let tmp = TempDir::new().unwrap();
    // Warmup gives update 1 a learning rate of 0 and update 2 one of 5e11; Adam moves every
    // weight by about the learning rate, so the forward of step 3 overflows.
    let (run, out) = dpo(
        tmp.path(),
        "diverge",
        &[
            "--lr",
            "1e12",
            "--warmup-steps",
            "2",
            "--lr-schedule",
            "constant",
            "--batch-size",
            "1",
            "--epochs",
            "2",
            "--save-steps",
            "2",
        ],
    );
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    for needle in [
        "training stopped at step 3: the loss is NaN",
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
    assert_eq!(
        metrics(&out).len(),
        2,
        "only the applied updates are logged"
    );
    let kept = Model::load(&out.join("checkpoint-1")).unwrap();
    let start = Model::load(&chat_fixture()).unwrap();
    assert_eq!(
        kept.params, start.params,
        "update 1 had a learning rate of 0"
    );
    assert!(
        !out.join("model").exists(),
        "no final model from a failed run"
    );

    // Without warmup the first update already diverges: the last good weights are the
    // starting model's, and no checkpoint is written.
    let (run, out) = dpo(
        tmp.path(),
        "diverge-at-once",
        &["--lr", "1e12", "--batch-size", "1"],
    );
    assert!(!run.ok && run.code == Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("training stopped at step 2"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the starting model's"),
        "{}",
        run.stderr
    );
    assert!(!out.join("checkpoint-1").exists());
}

/// `--precision bf16` end to end: the run names its kernel, learns as the f32 run does, and
/// its losses stay within 2e-3 of the f32 run's (measured here: at most 1.6e-4; the first
/// update's loss is ln 2 in both, as both start from their own reference log-probs).
#[test]
fn dpo_with_bf16_products_learns_like_f32() {
    let tmp = TempDir::new().unwrap();
    let flags = [
        "--lr",
        "3e-3",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ];
    let (f32_run, f32_out) = dpo(tmp.path(), "f32", &flags);
    assert!(f32_run.ok, "{}", f32_run.stderr);
    let mut bf16_flags = flags.to_vec();
    bf16_flags.extend(["--precision", "bf16"]);
    let (run, out) = dpo(tmp.path(), "bf16", &bf16_flags);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("device: cpu; bf16 products on ")),
        "{}",
        run.stderr
    );
    let (want, got) = (metrics(&f32_out), metrics(&out));
    assert_eq!(got.len(), 6);
    assert!((f(&got[0], "loss") - std::f64::consts::LN_2).abs() < 1e-4);
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (f(g, "loss"), f(w, "loss"));
        assert!(
            (g - w).abs() <= 0.02 + 0.05 * w,
            "update {s}: bf16 loss {g}, f32 {w}"
        );
    }
    assert!(
        f(&got[5], "loss") < f(&got[0], "loss") - 0.1,
        "{:?}",
        got[5]
    );
}

/// A second dpo cannot take a path inside a running dpo's output: the first keeps its
/// directory and finishes where it was told to (two real processes).
#[test]
fn a_running_dpo_owns_its_output_directory() {
    let tmp = TempDir::new().unwrap();
    let pairs = write(&tmp.path().join("pairs.jsonl"), PAIRS);
    let out = tmp.path().join("run");
    let model = chat_fixture();
    let args = ["dpo", "--model", s(&model), "--pairs", s(&pairs)];
    let mut first = common::start_holding(
        args.iter()
            .copied()
            .chain(["--out", s(&out), "--epochs", "10000"]),
        &out,
    );
    let second = tpo(&[
        "dpo",
        "--model",
        s(&chat_fixture()),
        "--pairs",
        s(&pairs),
        "--out",
        s(&out.join("model")),
    ]);
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        still_running,
        "the first dpo ended too soon to test anything"
    );
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("of a running tpo-engine"),
        "{}",
        second.stderr
    );
    assert!(!out.join("model").exists());
}

/// What a dpo killed before its first update leaves (its released lock and an empty metrics
/// file) does not block the rerun into the same --out.
#[test]
fn a_dpo_killed_before_its_first_update_can_be_rerun_in_place() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir(&out).unwrap();
    write(&out.join(".tpo-engine.lock"), "12345\n");
    write(&out.join("metrics.jsonl"), "");
    let (run, out) = dpo(tmp.path(), "run", &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(out.join("model").join("config.json").exists());
    // A metrics file with content is a real run's: refused.
    let (again, _) = dpo(tmp.path(), "run", &[]);
    assert_eq!(again.code, Some(1), "{}", again.stderr);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
}
