//! No command writes over one of its inputs or into the model directory it reads, by any
//! name of the path; every command creates the missing parents of its output.

mod common;

use common::{chat_fixture, run_on_threads, s, write, Run};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A writable copy of the small checkpoint, so that a write into it would show.
fn model_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in std::fs::read_dir(chat_fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    all.sort();
    all
}

/// The run failed with exit 1 and an error naming every needle, and nothing under `tmp`
/// changed.
fn refused(run: Run, needles: &[&str], tmp: &Path, before: &[(PathBuf, Vec<u8>)]) {
    assert_eq!(run.code, Some(1), "expected a refusal:\n{}", run.stderr);
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "error should mention {n:?}:\n{}",
            run.stderr
        );
    }
    assert_eq!(snapshot(tmp), before, "a refused run changed the inputs");
    assert_eq!(
        snapshot(&tmp.join("model")),
        snapshot_of_model(tmp),
        "a refused run changed the model"
    );
}

fn snapshot_of_model(tmp: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let copy = tmp.join("model");
    snapshot(&chat_fixture())
        .into_iter()
        .map(|(p, b)| (copy.join(p.file_name().unwrap()), b))
        .collect()
}

const PROMPTS: &str = "{\"prompt\": \"hi\"}\n";
const PAIRS: &str = "{\"prompt\": \"Say hello.\", \"chosen\": \"Hello!\", \"rejected\": \"No.\"}\n";
const DATA: &str = "{\"prompt\": \"Say hello.\", \"completion\": \"Hello!\"}\n";

#[test]
fn generate_and_logprobs_never_write_over_their_inputs_or_into_the_model() {
    let tmp = TempDir::new().unwrap();
    let t = tmp.path();
    let model = model_copy(t);
    let prompts = write(&t.join("p.jsonl"), PROMPTS);
    let data = write(&t.join("d.jsonl"), DATA);
    let link = t.join("link.jsonl");
    std::os::unix::fs::symlink(&prompts, &link).unwrap();
    let before = snapshot(t);
    let generate = |out: &Path| {
        run_on_threads(
            "2",
            [
                "generate",
                "--model",
                s(&model),
                "--prompts",
                s(&prompts),
                "--max-new-tokens",
                "2",
                "--out",
                s(out),
            ],
        )
    };
    refused(generate(&prompts), &["--out", "also --prompts"], t, &before);
    refused(
        generate(&link),
        &["link.jsonl", "also --prompts"],
        t,
        &before,
    );
    let config = model.join("config.json");
    refused(
        generate(&config),
        &["config.json", "inside --model"],
        t,
        &before,
    );
    let logprobs = |out: &Path| {
        run_on_threads(
            "2",
            [
                "logprobs",
                "--model",
                s(&model),
                "--input",
                s(&data),
                "--out",
                s(out),
            ],
        )
    };
    refused(logprobs(&data), &["also --input"], t, &before);
    let nested = model.join("scores").join("out.jsonl");
    refused(logprobs(&nested), &["inside --model"], t, &before);
    assert!(!model.join("scores").exists());

    // The one rule for parents: created when the output is written.
    let deep = t.join("new").join("deeper").join("out.jsonl");
    let run = generate(&deep);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&deep).unwrap().lines().count(), 1);
    let deep = t.join("more").join("scores.jsonl");
    let run = logprobs(&deep);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&deep).unwrap().lines().count(), 1);
}

#[test]
fn training_never_writes_into_the_model_it_reads() {
    let tmp = TempDir::new().unwrap();
    let t = tmp.path();
    let model = model_copy(t);
    let pairs = write(&t.join("pairs.jsonl"), PAIRS);
    let data = write(&t.join("d.jsonl"), DATA);
    let prompts = write(&t.join("p.jsonl"), &PROMPTS.repeat(4));
    let before = snapshot(t);
    let run_dir = model.join("run");
    let dpo = run_on_threads(
        "2",
        [
            "dpo",
            "--model",
            s(&model),
            "--pairs",
            s(&pairs),
            "--out",
            s(&run_dir),
        ],
    );
    refused(dpo, &["--out", "inside --model"], t, &before);
    let sft = run_on_threads(
        "2",
        [
            "sft",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&run_dir),
        ],
    );
    refused(sft, &["--out", "inside --model"], t, &before);
    let train = run_on_threads(
        "2",
        [
            "train",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--heldout-prompts",
            "1",
            "--judge",
            "builtin",
            "--out",
            s(&run_dir),
        ],
    );
    refused(train, &["--out", "inside --model"], t, &before);
    assert!(!run_dir.exists());
}
