//! The reward-model judge (`--judge rm:DIR`) against transformers on tiny random
//! sequence-classification checkpoints (fixtures from scripts/make-rm-fixtures.py), and its
//! errors for checkpoints that are not one-label reward models.
//!
//! Tolerance: each score within 1e-4 of the reference relative to its magnitude, plus 1e-6
//! absolute for scores near zero (f32 both sides; only summation order differs).

use serde_json::{Map, Value};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tpo_engine::model::Model;
use tpo_engine::tokenizer::Tokenizer;
use tpo_engine::tpo::judge::{open_judge, JudgeGroup, JudgeOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A copy of a fixture directory to break.
fn copy_fixture(tmp: &TempDir, name: &str) -> PathBuf {
    let out = tmp.path().join(name);
    std::fs::create_dir(&out).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    out
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let mut value = read_json(path);
    edit(value.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

fn opts(micro_batch_tokens: usize) -> JudgeOptions {
    JudgeOptions {
        micro_batch_tokens,
        ..JudgeOptions::default()
    }
}

struct Case {
    instruction: String,
    response: String,
    ids: Vec<u32>,
    score: f64,
    score_no_pad_id: f64,
}

fn cases(name: &str) -> Vec<Case> {
    read_json(&fixture(name).join("expected.json"))["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            instruction: c["instruction"].as_str().unwrap().to_string(),
            response: c["response"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            score: c["score"].as_f64().unwrap(),
            score_no_pad_id: c["score_no_pad_id"].as_f64().unwrap(),
        })
        .collect()
}

/// The cases as judge groups, one per instruction (cases of one instruction are adjacent),
/// and each group's indices into `cases`.
fn groups<'a>(
    cases: &'a [Case],
    source: &'a Map<String, Value>,
) -> Vec<(JudgeGroup<'a>, Vec<usize>)> {
    let mut out: Vec<(JudgeGroup, Vec<usize>)> = vec![];
    for (i, c) in cases.iter().enumerate() {
        match out.last_mut() {
            Some((g, idx)) if g.instruction == c.instruction => {
                g.responses.push(&c.response);
                idx.push(i);
            }
            _ => out.push((
                JudgeGroup {
                    source,
                    instruction: &c.instruction,
                    responses: vec![&c.response],
                },
                vec![i],
            )),
        }
    }
    out
}

fn assert_score_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs() + 1e-6,
        "{what}: got {got}, want {want}"
    );
}

/// Scores every case through `open_judge("rm:DIR")`, in one pass and in passes of a few
/// tokens, and compares with `want` of each case.
fn check_scores(dir: &Path, cases: &[Case], want: impl Fn(&Case) -> f64) {
    let source = Map::new();
    let grouped = groups(cases, &source);
    assert!(grouped.len() >= 3 && grouped.iter().any(|(g, _)| g.responses.len() >= 3));
    let judge_groups: Vec<JudgeGroup> = grouped.iter().map(|(g, _)| g.clone()).collect();
    let shortest = cases.iter().map(|c| c.ids.len()).min().unwrap();
    // The whole set in one pass; two or three short sequences per pass, the longest alone.
    for (budget, min_passes) in [(8192, 1), (2 * shortest + 5, 4)] {
        let spec = format!("rm:{}", dir.display());
        let mut judge = open_judge(&spec, &opts(budget)).unwrap();
        assert!(judge.describe().contains("reward model"));
        let (passes, scored) = (Cell::new(0), Cell::new(0));
        let scores = judge
            .score(&judge_groups, &|n| {
                passes.set(passes.get() + 1);
                scored.set(scored.get() + n);
            })
            .unwrap();
        assert_eq!(scored.get(), cases.len(), "progress counts every response");
        assert!(
            passes.get() >= min_passes,
            "budget {budget}: {} passes",
            passes.get()
        );
        assert_eq!(scores.len(), grouped.len());
        for ((_, idx), got) in grouped.iter().zip(&scores) {
            assert_eq!(got.len(), idx.len());
            for (&i, &g) in idx.iter().zip(got) {
                let what = format!("{}: budget {budget}, case {i}", dir.display());
                eprintln!(
                    "DBG {what} rel {:e}",
                    (g - want(&cases[i])).abs() / want(&cases[i]).abs()
                );
                assert_score_close(g, want(&cases[i]), &what);
            }
        }
    }
}

/// The chat template without a generation prompt, encoded without added special tokens,
/// gives transformers' ids.
fn check_tokens(dir: &Path, cases: &[Case]) {
    let tok = Tokenizer::load(dir).unwrap();
    for c in cases {
        let messages = serde_json::json!([
            {"role": "user", "content": c.instruction},
            {"role": "assistant", "content": c.response},
        ]);
        let text = tok.render_messages(&messages, false).unwrap();
        assert_eq!(tok.encode(&text, false).unwrap(), c.ids, "{text:?}");
    }
}

#[test]
fn llama_gqa_scores_match_transformers() {
    let (dir, cases) = (fixture("rm-llama"), cases("rm-llama"));
    check_tokens(&dir, &cases);
    check_scores(&dir, &cases, |c| c.score);
}

#[test]
fn qwen2_bias_bf16_scores_are_read_before_the_trailing_pad_token_as_transformers_does() {
    let (dir, cases) = (fixture("rm-qwen2"), cases("rm-qwen2"));
    check_tokens(&dir, &cases);
    // Every text ends in pad_token_id, so the score is read one token earlier.
    assert!(cases.iter().all(|c| c.ids.last() == Some(&2)));
    assert!(cases
        .iter()
        .all(|c| (c.score - c.score_no_pad_id).abs() > 1e-2));
    check_scores(&dir, &cases, |c| c.score);
}

#[test]
fn without_pad_token_id_the_last_token_is_read() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-qwen2");
    edit_json(&dir.join("config.json"), |cfg| {
        cfg.remove("pad_token_id");
    });
    check_scores(&dir, &cases("rm-qwen2"), |c| c.score_no_pad_id);
}

fn open_error(dir: &Path) -> String {
    match open_judge(&format!("rm:{}", dir.display()), &opts(8192)) {
        Ok(_) => panic!("{}: loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn a_causal_lm_is_not_a_reward_model() {
    let err = open_error(&fixture("chat"));
    assert_mentions(
        &err,
        &["config.json", "LlamaForCausalLM", "not a reward model"],
    );
    // And a reward model is not a causal LM for generation or training.
    let err = format!("{:#}", Model::load(&fixture("rm-llama")).err().unwrap());
    assert_mentions(
        &err,
        &[
            "config.json",
            "LlamaForSequenceClassification",
            "not a causal",
        ],
    );
}

#[test]
fn two_labels_are_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-llama");
    edit_json(&dir.join("config.json"), |cfg| {
        cfg.insert(
            "id2label".into(),
            serde_json::json!({"0": "bad", "1": "good"}),
        );
    });
    assert_mentions(
        &open_error(&dir),
        &["config.json", "2 labels", "num_labels 1"],
    );
    // Without id2label, transformers' default is two labels.
    edit_json(&dir.join("config.json"), |cfg| {
        cfg.remove("id2label");
        cfg.remove("label2id");
    });
    assert_mentions(&open_error(&dir), &["config.json", "2 labels"]);
    // num_labels 1 given plainly is a reward model again.
    edit_json(&dir.join("config.json"), |cfg| {
        cfg.insert("num_labels".into(), 1.into());
    });
    open_judge(&format!("rm:{}", dir.display()), &opts(8192)).unwrap();
}

#[test]
fn unsupported_classifiers_are_refused() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-llama");
    edit_json(&dir.join("config.json"), |cfg| {
        cfg.insert(
            "architectures".into(),
            serde_json::json!(["MistralForSequenceClassification"]),
        );
    });
    assert_mentions(
        &open_error(&dir),
        &[
            "config.json",
            "MistralForSequenceClassification",
            "LlamaForSequenceClassification",
        ],
    );
}

#[test]
fn broken_weights_error_without_panicking() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-llama");
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&open_error(&dir), &["model.safetensors", "truncated"]);
    std::fs::write(&weights, b"").unwrap();
    assert_mentions(&open_error(&dir), &["model.safetensors", "truncated"]);
}

#[test]
fn a_reward_model_needs_a_chat_template() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-llama");
    edit_json(&dir.join("tokenizer_config.json"), |cfg| {
        cfg.remove("chat_template");
    });
    assert_mentions(&open_error(&dir), &["rm-llama", "no chat template"]);
}

#[test]
fn a_conversation_longer_than_the_context_is_an_error_naming_it() {
    let dir = fixture("rm-llama");
    let mut judge = open_judge(&format!("rm:{}", dir.display()), &opts(8192)).unwrap();
    let source = Map::new();
    let long = "word ".repeat(300);
    let groups = [
        JudgeGroup {
            source: &source,
            instruction: "Short question?",
            responses: vec!["Yes."],
        },
        JudgeGroup {
            source: &source,
            instruction: "Say many words.",
            responses: vec!["Fine.", &long],
        },
    ];
    let err = format!("{:#}", judge.score(&groups, &|_| {}).unwrap_err());
    assert_mentions(
        &err,
        &[
            "response 2 of prompt 2",
            "Say many words.",
            "context is 256",
        ],
    );
}

/// Overwrites the f32 tensor `name` of a safetensors file with `value`, in place.
fn fill_tensor(weights: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[name]["dtype"], "F32");
    let span = header[name]["data_offsets"].as_array().unwrap();
    let start = 8 + header_len + span[0].as_u64().unwrap() as usize;
    let end = 8 + header_len + span[1].as_u64().unwrap() as usize;
    for word in bytes[start..end].chunks_exact_mut(4) {
        word.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(weights, bytes).unwrap();
}

#[test]
fn a_score_that_is_not_finite_is_an_error_naming_the_response() {
    let tmp = TempDir::new().unwrap();
    let dir = copy_fixture(&tmp, "rm-llama");
    // Finite weights (non-finite ones are refused at load) whose products overflow.
    fill_tensor(&dir.join("model.safetensors"), "score.weight", f32::MAX);
    // A budget of one response per pass: every pass runs before the scores are checked.
    let mut judge = open_judge(&format!("rm:{}", dir.display()), &opts(1)).unwrap();
    let source = Map::new();
    let groups = [JudgeGroup {
        source: &source,
        instruction: "Short question?",
        responses: vec!["Yes.", "No."],
    }];
    let passes = Cell::new(0);
    let err = format!(
        "{:#}",
        judge
            .score(&groups, &|n| passes.set(passes.get() + n))
            .unwrap_err()
    );
    assert_mentions(
        &err,
        &[
            "rm-llama",
            "response 1 of prompt 1",
            "Short question?",
            "are the weights sound?",
        ],
    );
    assert_eq!(passes.get(), 2, "every response's pass reports progress");
}
