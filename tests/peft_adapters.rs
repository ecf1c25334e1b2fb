//! LoRA adapters in PEFT's format: an adapter PEFT itself wrote for the tiny Llama fixture
//! (scripts/make-peft-fixtures.py), read by us and merged into the base, gives the logits
//! PEFT computed with it; and ours, written and read back, are the same adapter.
//!
//! Tolerance as in tests/parity.rs: every logit within 1e-4, the largest error within 2e-5
//! of the largest logit (f32 both sides; PEFT adds the adapter's product, we merge it).

use serde_json::Value;
use std::path::{Path, PathBuf};
use tpo_engine::model::lora::{Adapter, LoraConfig, Target};
use tpo_engine::model::{peft, LogitRows, Model};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn logits_of(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut caches = vec![&mut cache];
    model.forward(&[ids], &mut caches, LogitRows::All).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's input ids, and the logits PEFT computed on them with its adapter: (T, V).
fn pefts_logits(dir: &Path) -> (Vec<u32>, Vec<f32>) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let bytes = std::fs::read(dir.join("logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (ids, want)
}

#[test]
fn pefts_adapter_merged_by_us_gives_pefts_logits() {
    let dir = fixture("peft-lora");
    let mut model = Model::load(&fixture("llama")).unwrap();
    let adapter = peft::load(&dir, &model.config).unwrap();
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.config.scale(), 2.0);
    assert_eq!(
        adapter.config.targets,
        vec![Target::Q, Target::V, Target::O, Target::Gate, Target::Down]
    );
    let (ids, want) = pefts_logits(&dir);

    let base = logits_of(&model, &ids);
    adapter
        .merge_into(&model.layout, &mut model.params)
        .unwrap();
    let got = logits_of(&model, &ids);
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(&got, &want);
    assert!(
        err <= 1e-4 && err <= 2e-5 * scale,
        "max error {err}, max logit {scale}"
    );
    // The adapter matters: without it the logits are far from PEFT's.
    assert!(
        max_abs_diff(&base, &want) > 100.0 * err.max(1e-6),
        "the adapter changed nothing"
    );
}

#[test]
fn our_adapter_is_read_back_whole_and_a_fresh_one_is_the_base_model() {
    let model = Model::load(&fixture("llama")).unwrap();
    let lora = LoraConfig::new(8, 16.0, true, 0.0, Target::ALL.to_vec()).unwrap();
    let adapter = Adapter::init(&model.config, lora, 11);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    peft::save(&dir, &adapter, "tests/fixtures/llama").unwrap();
    let back = peft::load(&dir, &model.config).unwrap();
    assert_eq!(back.params, adapter.params);
    assert_eq!(back.config, adapter.config);
    // B = 0: merging changes no weight, so the logits are the base model's bit for bit.
    let mut merged = Model::load(&fixture("llama")).unwrap();
    back.merge_into(&merged.layout, &mut merged.params).unwrap();
    assert!(merged.params == model.params);
}

fn merge(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .arg("merge")
        .args(args)
        .output()
        .unwrap()
}

/// `tpo-engine merge` writes a full checkpoint that gives PEFT's logits; bad input is an
/// error naming the file, with nothing written.
#[test]
fn merge_writes_a_checkpoint_with_the_adapted_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (base, adapter) = (fixture("llama"), fixture("peft-lora"));
    let o = merge(&[
        "--model".as_ref(),
        base.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged = Model::load(&out).unwrap();
    let mut by_hand = Model::load(&base).unwrap();
    peft::load(&adapter, &by_hand.config)
        .unwrap()
        .merge_into(&by_hand.layout, &mut by_hand.params)
        .unwrap();
    assert!(
        merged.params == by_hand.params,
        "the file holds the merged weights"
    );
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // The output exists now: refused, and it is left as it was.
    let o = merge(&[
        "--model".as_ref(),
        base.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    // An adapter directory without its config.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out2 = tmp.path().join("merged2");
    let o = merge(&[
        "--model".as_ref(),
        base.as_os_str(),
        "--adapter".as_ref(),
        empty.as_os_str(),
        "--out".as_ref(),
        out2.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("adapter_config.json"),
        "{stderr}"
    );
    assert!(!out2.exists());
}

fn run(args: &[&std::ffi::OsStr]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {stderr}");
    stderr
}

/// `--adapter` on logprobs and generate: the same numbers and tokens as the merged model.
#[test]
fn an_adapter_flag_reads_as_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixture("chat");
    let model = Model::load(&base).unwrap();
    let lora = LoraConfig::new(4, 8.0, false, 0.0, Target::ALL.to_vec()).unwrap();
    let mut adapter = Adapter::init(&model.config, lora, 5);
    for l in adapter.layout.linears.clone() {
        for (j, x) in adapter.params[l.b.clone()].iter_mut().enumerate() {
            *x = 0.05 * ((j % 7) as f32 - 3.0);
        }
    }
    let dir = tmp.path().join("adapter");
    peft::save(&dir, &adapter, "tests/fixtures/chat").unwrap();
    let merged = tmp.path().join("merged");
    run(&[
        "merge".as_ref(),
        "--model".as_ref(),
        base.as_os_str(),
        "--adapter".as_ref(),
        dir.as_os_str(),
        "--out".as_ref(),
        merged.as_os_str(),
    ]);
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"Name a river.\", \"completion\": \"The Nile, and the Amazon.\"}\n",
    )
    .unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Tell me about rivers.\"}\n").unwrap();
    let mut outputs = vec![];
    for (name, model_args) in [
        (
            "adapter",
            vec![base.as_os_str(), "--adapter".as_ref(), dir.as_os_str()],
        ),
        ("merged", vec![merged.as_os_str()]),
        ("base", vec![base.as_os_str()]),
    ] {
        let lp = tmp.path().join(format!("{name}-logprobs.jsonl"));
        let mut args: Vec<&std::ffi::OsStr> = vec!["logprobs".as_ref(), "--model".as_ref()];
        args.extend(&model_args);
        args.extend([
            "--input".as_ref(),
            input.as_os_str(),
            "--out".as_ref(),
            lp.as_os_str(),
        ]);
        run(&args);
        let gen = tmp.path().join(format!("{name}-generate.jsonl"));
        let mut args: Vec<&std::ffi::OsStr> = vec!["generate".as_ref(), "--model".as_ref()];
        args.extend(&model_args);
        args.extend([
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "--out".as_ref(),
            gen.as_os_str(),
            "--temperature".as_ref(),
            "0".as_ref(),
            "--max-new-tokens".as_ref(),
            "12".as_ref(),
        ]);
        run(&args);
        outputs.push((
            std::fs::read_to_string(&lp).unwrap(),
            std::fs::read_to_string(&gen).unwrap(),
        ));
    }
    assert_eq!(
        outputs[0], outputs[1],
        "--adapter reads as the merged model"
    );
    assert_ne!(
        outputs[0].0, outputs[2].0,
        "the adapter changes the log-probs"
    );
}

/// The adapter applied in the graph, unmerged (s * (x A^T) B^T added to each adapted
/// Linear, q/k/v and gate/up into their blocks of the fused products), gives PEFT's logits
/// as well: the forward LoRA training will run.
#[test]
fn pefts_adapter_in_the_graph_unmerged_gives_pefts_logits() {
    let dir = fixture("peft-lora");
    let model = Model::load(&fixture("llama")).unwrap();
    let adapter = peft::load(&dir, &model.config).unwrap();
    let (ids, want) = pefts_logits(&dir);
    // Two sequences in one pass (the prompt split at 6): packing must not leak between them.
    let mut caches = [model.new_cache(), model.new_cache()];
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let got = model
        .forward_adapted(
            Some(&adapter),
            &[&ids[..], &ids[..6]],
            &mut refs,
            LogitRows::All,
        )
        .unwrap();
    let v = model.config.vocab_size;
    let whole = &got[..ids.len() * v];
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = max_abs_diff(whole, &want);
    assert!(
        err <= 1e-4 && err <= 2e-5 * scale,
        "max error {err}, max logit {scale}"
    );
    let part = &got[ids.len() * v..];
    assert!(
        max_abs_diff(part, &want[..6 * v]) <= 1e-4,
        "the second sequence"
    );
    // Without the adapter, the same call is the base model's.
    let mut cache = model.new_cache();
    let base = model
        .forward_adapted(None, &[&ids[..]], &mut [&mut cache], LogitRows::All)
        .unwrap();
    assert!(max_abs_diff(&base, &want) > 100.0 * err.max(1e-6));
}

/// PEFT reads an adapter we trained and wrote (tests/fixtures/lora-ours, made by
/// scripts/make-lora-ours-fixture.sh: `sft --lora-r 4` on the chat fixture, then
/// PeftModel.from_pretrained, which must take every tensor): its logits are ours, unmerged
/// and merged.
#[test]
fn peft_reads_our_trained_adapter_as_we_do() {
    let dir = fixture("lora-ours");
    let mut model = Model::load(&fixture("chat")).unwrap();
    let adapter = peft::load(&dir, &model.config).unwrap();
    assert!(!adapter.is_identity(), "the fixture's adapter has learnt");
    let (ids, want) = pefts_logits(&dir);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut cache = model.new_cache();
    let unmerged = model
        .forward_adapted(
            Some(&adapter),
            &[&ids[..]],
            &mut [&mut cache],
            LogitRows::All,
        )
        .unwrap();
    let base = logits_of(&model, &ids);
    assert!(
        max_abs_diff(&base, &want) > 100.0 * 2e-5 * scale,
        "the adapter changes PEFT's logits"
    );
    adapter
        .merge_into(&model.layout, &mut model.params)
        .unwrap();
    let merged = logits_of(&model, &ids);
    for (what, got) in [("unmerged", &unmerged), ("merged", &merged)] {
        let err = max_abs_diff(got, &want);
        assert!(
            err <= 1e-4 && err <= 2e-5 * scale,
            "{what}: max error {err}, max logit {scale}"
        );
    }
}
