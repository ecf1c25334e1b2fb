//! Parity with transformers on tiny random checkpoints (fixtures from
//! scripts/make-fixtures.py): logits of a right-padded batch, exact greedy continuations,
//! and the tokenizer and chat template of a checkpoint made by `init-model`.
//!
//! Tolerance: every logit within 1e-4 absolute and the largest error within 2e-5 of the
//! largest logit's magnitude (f32 both sides; only summation order differs).

use serde_json::Value;
use std::path::{Path, PathBuf};
use tpo_engine::backend::settings::SamplingParams;
use tpo_engine::generate::{generate, GenerateOptions};
use tpo_engine::model::{LogitRows, Model};
use tpo_engine::tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn assert_logits_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= 1e-4, "{what}: logit {i}: got {g}, want {w}");
        worst = worst.max(err);
    }
    assert!(
        worst <= 2e-5 * scale,
        "{what}: max error {worst} vs max logit {scale}"
    );
}

fn check_padded_batch_logits(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let expected = read_json(&dir.join("expected.json"));
    let bytes = std::fs::read(dir.join("logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("logits").unwrap();
    let want: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (t, v) = (view.shape()[1], view.shape()[2]);
    assert_eq!(v, model.config.vocab_size);

    let lengths: Vec<usize> = expected["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let rows: Vec<Vec<u32>> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let seqs: Vec<&[u32]> = rows.iter().zip(&lengths).map(|(r, &n)| &r[..n]).collect();
    let mut caches: Vec<_> = seqs.iter().map(|_| model.new_cache()).collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let got = model.forward(&seqs, &mut refs, LogitRows::All).unwrap();

    let mut row = 0;
    for (b, &n) in lengths.iter().enumerate() {
        for pos in 0..n {
            let g = &got[row * v..(row + 1) * v];
            let w = &want[(b * t + pos) * v..(b * t + pos + 1) * v];
            assert_logits_close(g, w, &format!("{name}: sequence {b}, position {pos}"));
            row += 1;
        }
    }
}

fn check_greedy(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir).unwrap();
    let expected = read_json(&dir.join("expected.json"));
    for case in expected["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt"]);
        let want = ids(&case["tokens"]);
        let opts = GenerateOptions {
            samples: 1,
            max_new_tokens: want.len(),
            sampling: SamplingParams::GREEDY,
            seed: 0,
            batch_size: 4,
            eos_ids: vec![],
            steering: None,
        };
        let (out, _) = generate(&model, &[prompt], &opts, &|_| false, &|_| {}).unwrap();
        assert_eq!(out[0][0].token_ids, want, "{name}: greedy tokens");
    }
}

#[test]
fn llama_gqa_tied_llama3_rope_logits() {
    check_padded_batch_logits("llama");
}

#[test]
fn qwen2_attention_bias_bf16_logits() {
    check_padded_batch_logits("qwen2");
}

#[test]
fn mistral_sharded_head_dim_logits() {
    check_padded_batch_logits("mistral");
}

#[test]
fn greedy_continuations_match_transformers_exactly() {
    for name in ["llama", "qwen2", "mistral"] {
        check_greedy(name);
    }
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let dir = fixture("chat");
    let tok = Tokenizer::load(&dir).unwrap();
    let expected = read_json(&dir.join("tokenizer_expected.json"));
    for case in expected["raw"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "raw text {text:?}"
        );
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text, "decode");
    }
    for case in expected["chat"].as_array().unwrap() {
        let text = tok.render_chat(&case["messages"]).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "chat template");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&case["ids"]),
            "chat ids"
        );
    }
}

#[test]
fn checkpoints_written_by_init_model_load_in_transformers_with_equal_logits() {
    let dir = fixture("chat");
    let model = Model::load(&dir).unwrap();
    let expected = read_json(&dir.join("tokenizer_expected.json"));
    let input = ids(&expected["logits_input"]);
    let want: Vec<f32> = expected["logits_last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let mut cache = model.new_cache();
    let got = model
        .forward(&[&input], &mut [&mut cache], LogitRows::Last)
        .unwrap();
    assert_logits_close(&got, &want, "init-model checkpoint");
}
