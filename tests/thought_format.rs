//! A model that never writes the thought format (tests/fixtures/direct-seed, made by
//! scripts/make-direct-seed.sh: the demo's seed fine-tuned to answer the thought prompt
//! directly), trained by `tpo-engine train` with the built-in task's judge: without the
//! format options the run stops with advice; with them every candidate parses, and the
//! forced tokens are in the candidates and their pairs.

mod common;

use common::{jsonl, run_on_threads, s, Run};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

fn direct_seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/direct-seed")
}

fn tpo(args: &[&str]) -> Run {
    run_on_threads("2", args)
}

/// 8 training prompts of the built-in task and 4 held out; one iteration of K = 4.
fn train(tmp: &Path, name: &str, extra: &[&str]) -> (Run, PathBuf) {
    train_model(&direct_seed(), tmp, name, extra)
}

fn train_model(model: &Path, tmp: &Path, name: &str, extra: &[&str]) -> (Run, PathBuf) {
    let prompts = tmp.join("prompts.jsonl");
    if !prompts.exists() {
        let r = tpo(&[
            "task-data",
            "--what",
            "prompts",
            "--count",
            "12",
            "--seed",
            "7",
            "--out",
            s(&prompts),
        ]);
        assert!(r.ok, "{}", r.stderr);
    }
    let out = tmp.join(name);
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--prompts",
        s(&prompts),
        "--heldout-prompts",
        "4",
        "--judge",
        "builtin:last-digit",
        "--iterations",
        "1",
        "--samples",
        "4",
        "--max-new-tokens",
        "40",
        "--batch-size",
        "2",
        "--out",
        s(&out),
    ];
    args.extend(extra);
    (tpo(&args), out)
}

/// Every candidate of the run's first iteration.
fn candidates(out: &Path) -> Vec<Map<String, Value>> {
    jsonl(&out.join("iter-1/candidates.jsonl"))
        .into_iter()
        .flat_map(|p| {
            p["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_object().unwrap().clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn without_the_options_the_run_stops_and_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, out) = train(
        tmp.path(),
        "plain",
        &["--no-prefill-thought", "--no-force-response"],
    );
    assert!(!r.ok && r.code == Some(1), "{}", r.stderr);
    for part in [
        "no pair can be made",
        "32 of 32 candidates (100%) are malformed",
        "\"no thought marker\" (32)",
        "--prefill-thought",
        "--force-response",
    ] {
        assert!(r.stderr.contains(part), "{part}: {}", r.stderr);
    }
    // The model answered directly: "The answer is N.", no marker.
    assert!(candidates(&out)
        .iter()
        .all(|c| c["text"].as_str().unwrap().contains("The answer is")));
    // Prefilled but not forced, it ends inside its thought: the advice is the rest.
    let (r, _) = train(tmp.path(), "prefilled", &["--no-force-response"]);
    assert!(!r.ok && r.code == Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("\"no response marker\" (32)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force-response") && !r.stderr.contains("--prefill-thought"));
}

#[test]
fn by_default_every_candidate_parses_and_pairs_train_on_the_forced_tokens() {
    // Prefilled and forced: train's defaults.
    let tmp = tempfile::tempdir().unwrap();
    let (r, out) = train(tmp.path(), "steered", &[]);
    assert!(r.ok, "{}", r.stderr);
    let cands = candidates(&out);
    let mut forced_ids: Option<Vec<Value>> = None;
    for c in &cands {
        assert!(c["malformed"].is_null(), "{c:?}");
        // The model ends after its thought: the response marker is forced there.
        let f = c["forced"].as_object().unwrap_or_else(|| panic!("{c:?}"));
        assert_eq!(f["reason"], "eos");
        let (at, n) = (
            f["at"].as_u64().unwrap() as usize,
            f["tokens"].as_u64().unwrap() as usize,
        );
        let ids = c["token_ids"].as_array().unwrap();
        let forced = ids[at..at + n].to_vec();
        assert_eq!(forced_ids.get_or_insert_with(|| forced.clone()), &forced);
        assert!(
            c["text"].as_str().unwrap().contains("\nMy response:"),
            "{c:?}"
        );
    }
    // The pairs are the candidates' whole completions, forced marker included, after a
    // prompt that ends with the prefilled thought marker.
    let pairs = jsonl(&out.join("iter-1/pairs.jsonl"));
    assert!(!pairs.is_empty());
    for p in &pairs {
        assert_eq!(p["prefill"], "My private thoughts:");
        let chosen = &cands[..]
            .iter()
            .find(|c| c["text"] == p["chosen"])
            .expect("the chosen side is a candidate");
        assert!(chosen["forced"].is_object());
    }
    // The held-out answers of the trained model are steered the same way.
    let eval = jsonl(&out.join("iter-1/eval.jsonl"));
    assert!(eval.iter().all(|l| l["malformed"].is_null()), "{eval:?}");
    // And written for AlpacaEval: the responses alone.
    let alpaca: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(out.join("iter-1/alpaca-eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(alpaca.len(), eval.len());
    for (a, l) in alpaca.iter().zip(&eval) {
        assert_eq!(a["instruction"], l["instruction"]);
        assert_eq!(a["output"], l["response"]);
        assert!(!a["output"].as_str().unwrap().contains("My response"));
        assert_eq!(a["generator"], "direct-seed-tpo-iter-1");
    }
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(table.contains("| 100.0% / 100.0% |"), "{table}");
}

#[test]
fn a_thought_budget_caps_every_thought() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, out) = train(
        tmp.path(),
        "budget",
        &[
            "--prefill-thought",
            "--force-response",
            "--max-thought-tokens",
            "3",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    let mut by_budget = 0;
    for c in candidates(&out) {
        assert!(c["malformed"].is_null(), "{c:?}");
        assert!(c["thought_tokens"].as_u64().unwrap() <= 3, "{c:?}");
        let f = &c["forced"];
        if f["reason"] == "budget" {
            assert_eq!(f["at"], 3, "{c:?}");
            by_budget += 1;
        }
    }
    assert!(by_budget > 0);
}

#[test]
fn most_candidates_malformed_in_the_first_iteration_is_a_warning() {
    // The demonstration's seed with the generic prompt, but "I know this one." as the
    // response marker: only its "confident" thoughts write it, so most candidates are
    // malformed, not all; the run warns with the advice and goes on.
    let tmp = tempfile::tempdir().unwrap();
    let generic = tpo_engine::tpo::thought::ThoughtPrompt::resolve("generic").unwrap();
    let template = tmp.path().join("t.json");
    let text = serde_json::json!({"template": generic.template, "thought_marker": generic.thought_marker,
        "response_marker": "I know this one."});
    std::fs::write(&template, text.to_string()).unwrap();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/seed");
    let (r, out) = train_model(
        &seed,
        tmp.path(),
        "warned",
        &[
            "--thought-prompt",
            s(&template),
            "--no-force-response",
            "--max-new-tokens",
            "96",
            "--samples",
            "8",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    let cands = candidates(&out);
    let malformed = cands.iter().filter(|c| c["malformed"].is_string()).count();
    assert!(
        2 * malformed > cands.len() && malformed < cands.len(),
        "{malformed}"
    );
    let warning = format!(
        "warning: iteration 1: {malformed} of {} candidates",
        cands.len()
    );
    assert!(r.stderr.contains(&warning), "{}", r.stderr);
    assert!(r.stderr.contains("--force-response"), "{}", r.stderr);
    assert!(out.join("iter-1/eval.jsonl").exists());
}
