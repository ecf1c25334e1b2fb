//! The `tpo-engine` binary end to end: a good generate run, and bad input that must end in
//! a clear error naming the file and the problem, a non-zero exit, no panic and no output.

mod common;

use common::{chat_fixture, run_on_threads, write, Run};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A writable copy of the small init-model checkpoint.
fn model_copy(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in std::fs::read_dir(chat_fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

fn generate(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![OsStr::new("generate")];
    for (flag, path) in [("--model", model), ("--prompts", prompts), ("--out", out)] {
        args.extend([OsStr::new(flag), path.as_os_str()]);
    }
    args.extend(extra.iter().map(OsStr::new));
    run_on_threads("2", args)
}

/// Runs generate expecting failure; the error must mention every `needles` and no output
/// file may appear.
fn expect_error(model: &Path, prompts: &Path, needles: &[&str]) {
    let out = prompts.with_file_name("out.jsonl");
    let run = generate(model, prompts, &out, &["--max-new-tokens", "4"]);
    assert!(!run.ok, "expected failure, stderr:\n{}", run.stderr);
    assert_eq!(
        run.code,
        Some(1),
        "an error exits with 1, not a crash:\n{}",
        run.stderr
    );
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "error should mention {n:?}:\n{}",
            run.stderr
        );
    }
    assert!(!out.exists(), "a failed run left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn generate_writes_k_completions_per_prompt() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(
        &tmp.path().join("p.jsonl"),
        "{\"prompt\": \"What is 3 plus 4?\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    );
    let out = tmp.path().join("out.jsonl");
    let run = generate(
        &chat_fixture(),
        &prompts,
        &out,
        &["--samples", "3", "--max-new-tokens", "6", "--seed", "5"],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("tokens/s"),
        "summary missing:\n{}",
        run.stderr
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "What is 3 plus 4?");
    assert!(lines[1]["messages"].is_array());
    for line in &lines {
        let completions = line["completions"].as_array().unwrap();
        assert_eq!(completions.len(), 3);
        for c in completions {
            let n = c["token_ids"].as_array().unwrap().len();
            let reason = c["finish_reason"].as_str().unwrap();
            assert!(
                n <= 6 && (reason == "eos" || (reason == "length" && n == 6)),
                "{c}"
            );
            assert!(c["text"].is_string());
        }
    }
    let again = tmp.path().join("again.jsonl");
    let run = generate(
        &chat_fixture(),
        &prompts,
        &again,
        &["--samples", "3", "--max-new-tokens", "6", "--seed", "5"],
    );
    assert!(run.ok);
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        text,
        "seeded runs are reproducible"
    );
}

#[test]
fn missing_config_weights_or_tokenizer() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(&tmp.path().join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    for (file, needle) in [
        ("config.json", "config.json"),
        ("model.safetensors", "no weights"),
        ("tokenizer.json", "tokenizer.json"),
    ] {
        let t = TempDir::new().unwrap();
        let model = model_copy(&t);
        std::fs::remove_file(model.join(file)).unwrap();
        expect_error(&model, &prompts, &[needle]);
    }
    expect_error(&tmp.path().join("nowhere"), &prompts, &["nowhere"]);
}

#[test]
fn unknown_architecture() {
    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let cfg = std::fs::read_to_string(model.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "BertModel");
    write(&model.join("config.json"), &cfg);
    let prompts = write(&tmp.path().join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    expect_error(&model, &prompts, &["config.json", "BertModel"]);
}

/// Rewrites model.safetensors with one tensor replaced by `element` (the bytes of one value,
/// in `dtype`) repeated over `shape`.
fn replace_tensor(
    model: &Path,
    name: &str,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    element: &[u8],
) {
    assert_eq!(element.len() * 8, dtype.bitsize());
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let data = element.repeat(shape.iter().product::<usize>());
    for t in tensors.iter_mut().filter(|t| t.0 == name) {
        t.1 = safetensors::tensor::TensorView::new(dtype, shape.clone(), &data).unwrap();
    }
    let out = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn wrong_tensor_shape_or_dtype_and_truncated_weights() {
    let prompts_dir = TempDir::new().unwrap();
    let prompts = write(
        &prompts_dir.path().join("p.jsonl"),
        "{\"prompt\": \"hi\"}\n",
    );
    let name = "model.layers.0.self_attn.q_proj.weight";

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    replace_tensor(&model, name, safetensors::Dtype::F32, vec![3, 5], &[0; 4]);
    expect_error(&model, &prompts, &["model.safetensors", name, "shape"]);

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    replace_tensor(&model, name, safetensors::Dtype::I32, vec![32, 32], &[0; 4]);
    expect_error(&model, &prompts, &["model.safetensors", name, "dtype"]);

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    expect_error(&model, &prompts, &["model.safetensors", "truncated"]);
}

#[test]
fn bad_prompt_lines_name_the_file_and_line() {
    let tmp = TempDir::new().unwrap();
    let model = chat_fixture();
    let p = |name: &str, text: &str| write(&tmp.path().join(name), text);
    let good = "{\"prompt\": \"hi\"}\n";
    expect_error(
        &model,
        &p("json.jsonl", &format!("{good}{{\"prompt\": \n")),
        &["json.jsonl:2", "not valid JSON"],
    );
    expect_error(
        &model,
        &p(
            "empty.jsonl",
            &format!("{good}{good}{{\"prompt\": \"  \"}}\n"),
        ),
        &["empty.jsonl:3", "empty prompt"],
    );
    expect_error(
        &model,
        &p("field.jsonl", "{\"question\": \"hi\"}\n"),
        &["field.jsonl:1", "\"prompt\""],
    );
    expect_error(
        &model,
        &p("none.jsonl", "\n"),
        &["none.jsonl", "no prompts"],
    );
    let long = "word ".repeat(400);
    expect_error(
        &model,
        &p("long.jsonl", &format!("{good}{{\"prompt\": \"{long}\"}}\n")),
        &["long.jsonl:2", "context"],
    );
    expect_error(&model, &tmp.path().join("absent.jsonl"), &["absent.jsonl"]);
}

#[test]
fn generate_with_a_thought_prompt_splits_and_steers_completions() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(
        &tmp.path().join("p.jsonl"),
        "{\"prompt\": \"What is 3 plus 4?\"}\n{\"prompt\": \"Name a river.\"}\n",
    );
    // The fixture's context is 128 tokens: a short template.
    let template = write(
        &tmp.path().join("t.json"),
        r#"{"template": "{instruction} Think after T:, answer after R:", "thought_marker": "T:", "response_marker": "R:"}"#,
    );
    let out = tmp.path().join("out.jsonl");
    let t = template.to_str().unwrap();
    let common = [
        "--thought-prompt",
        t,
        "--samples",
        "4",
        "--max-new-tokens",
        "10",
        "--seed",
        "3",
    ];
    let completions = |extra: &[&str]| -> Vec<Value> {
        let args: Vec<&str> = common.iter().chain(extra).copied().collect();
        let run = generate(&chat_fixture(), &prompts, &out, &args);
        assert!(run.ok, "{}", run.stderr);
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["completions"].as_array().unwrap().clone()
            })
            .collect()
    };
    // The random fixture writes no marker of its own.
    let plain = completions(&["--no-prefill-thought", "--no-force-response"]);
    assert_eq!(plain.len(), 8);
    assert!(plain
        .iter()
        .all(|c| c["malformed"] == "no thought marker" && c["forced"].is_null()));
    // Prefilled with the thought marker and forced at a budget of 4: every one parses.
    let steered = completions(&["--prefill-thought", "--max-thought-tokens", "4"]);
    for c in &steered {
        assert!(c["malformed"].is_null(), "{c}");
        assert!(c["response"].is_string() && c["thought"].is_string(), "{c}");
        assert_eq!(c["forced"]["reason"], "budget", "{c}");
        assert_eq!(c["forced"]["at"], 4, "{c}");
    }
    // The options need a thought prompt, and a budget below the length limit.
    for (args, why) in [
        (vec!["--force-response"], "no thought prompt"),
        (
            vec!["--thought-prompt", t, "--max-thought-tokens", "10"],
            "--max-thought-tokens 10: expected 1 to 9",
        ),
        (
            vec!["--thought-prompt", t, "--max-thought-tokens", "0"],
            "--max-thought-tokens 0",
        ),
        (vec!["--thought-prompt", "nonesuch"], "no such file"),
    ] {
        let args: Vec<&str> = ["--max-new-tokens", "10"]
            .iter()
            .chain(&args)
            .copied()
            .collect();
        let run = generate(
            &chat_fixture(),
            &prompts,
            &tmp.path().join("x.jsonl"),
            &args,
        );
        assert!(
            !run.ok && run.code == Some(1) && run.stderr.contains(why),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!tmp.path().join("x.jsonl").exists());
    }
}

#[test]
fn generate_writes_alpaca_eval_outputs() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(
        &tmp.path().join("p.jsonl"),
        "{\"prompt\": \"What is 3 plus 4?\", \"dataset\": \"math\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Name a river.\"}]}\n",
    );
    let template = write(
        &tmp.path().join("t.json"),
        r#"{"template": "{instruction} Think after T:, answer after R:", "thought_marker": "T:", "response_marker": "R:"}"#,
    );
    let t = template.to_str().unwrap();
    let (jsonl, alpaca) = (tmp.path().join("out.jsonl"), tmp.path().join("alpaca.json"));
    let common = [
        "--thought-prompt",
        t,
        "--max-new-tokens",
        "10",
        "--max-thought-tokens",
        "4",
        "--seed",
        "3",
    ];
    let run = generate(&chat_fixture(), &prompts, &jsonl, &common);
    assert!(run.ok, "{}", run.stderr);
    let args: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--format", "alpaca-eval"])
        .collect();
    let run = generate(&chat_fixture(), &prompts, &alpaca, &args);
    assert!(run.ok, "{}", run.stderr);
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&alpaca).unwrap()).unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["instruction"], "What is 3 plus 4?");
    assert_eq!(entries[1]["instruction"], "Name a river.");
    assert_eq!(entries[0]["dataset"], "math");
    for (e, l) in entries.iter().zip(&lines) {
        // The response alone, the same as the JSONL output's.
        let response = &l["completions"][0]["response"];
        assert!(response.is_string(), "{l}");
        assert_eq!(&e["output"], response);
        assert_eq!(e["generator"], "chat");
        assert!(e.get("prompt").is_none() && e.get("messages").is_none());
    }
    let named: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--generator", "mine"])
        .collect();
    assert!(generate(&chat_fixture(), &prompts, &alpaca, &named).ok);
    let entries: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&alpaca).unwrap()).unwrap();
    assert!(entries.iter().all(|e| e["generator"] == "mine"));
    for (extra, why) in [
        (
            vec!["--format", "alpaca-eval", "--samples", "2"],
            "one output per instruction",
        ),
        (vec!["--generator", "x"], "--format alpaca-eval"),
    ] {
        let run = generate(
            &chat_fixture(),
            &prompts,
            &tmp.path().join("x.json"),
            &extra,
        );
        assert!(
            !run.ok && run.code == Some(1) && run.stderr.contains(why),
            "{extra:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_failed_run_keeps_an_existing_output_file() {
    let tmp = TempDir::new().unwrap();
    let out = write(&tmp.path().join("out.jsonl"), "earlier results\n");
    let prompts = write(
        &tmp.path().join("p.jsonl"),
        "{\"prompt\": \"hi\"}\nnot json\n",
    );
    let run = generate(&chat_fixture(), &prompts, &out, &[]);
    assert!(!run.ok);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier results\n");
}

#[test]
fn bad_shards_non_finite_weights_and_impossible_sizes() {
    let prompts_dir = TempDir::new().unwrap();
    let prompts = write(
        &prompts_dir.path().join("p.jsonl"),
        "{\"prompt\": \"hi\"}\n",
    );

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let index = "{\"weight_map\": {\"model.norm.weight\": \"../outside.safetensors\"}}";
    write(&model.join("model.safetensors.index.json"), index);
    expect_error(
        &model,
        &prompts,
        &["model.safetensors.index.json", "must name a file"],
    );

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let name = "model.norm.weight";
    let hidden = 32; // the chat fixture's hidden_size
    replace_tensor(
        &model,
        name,
        safetensors::Dtype::F32,
        vec![hidden],
        &f32::NAN.to_le_bytes(),
    );
    expect_error(&model, &prompts, &["model.safetensors", name, "non-finite"]);

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&cfg).unwrap();
    cfg["vocab_size"] = Value::from(4_000_000_000u64);
    write(&model.join("config.json"), &cfg.to_string());
    expect_error(
        &model,
        &prompts,
        &["model.safetensors", "shape", "4000000000"],
    );
}

/// A layer count the weights do not hold is refused from the headers, before anything is
/// sized by it: 10^9 layers once aborted on a 216 GB allocation, 10^6 took 3.6 GB and 20 s.
#[test]
fn a_layer_count_beyond_the_weights_is_refused_before_allocating() {
    let prompts_dir = TempDir::new().unwrap();
    let prompts = write(
        &prompts_dir.path().join("p.jsonl"),
        "{\"prompt\": \"hi\"}\n",
    );
    let layers = |model: &Path| {
        let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
        let cfg: Value = serde_json::from_str(&cfg).unwrap();
        cfg["num_hidden_layers"].as_u64().unwrap()
    };
    for claimed in [1_000_000_000u64, 1_000_000, 0] {
        let tmp = TempDir::new().unwrap();
        let model = model_copy(&tmp);
        let held = layers(&model);
        let claimed = if claimed == 0 { held + 1 } else { claimed };
        let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
        let mut cfg: Value = serde_json::from_str(&cfg).unwrap();
        cfg["num_hidden_layers"] = Value::from(claimed);
        write(&model.join("config.json"), &cfg.to_string());
        let last = format!("model.layers.{}", held - 1);
        let missing = format!("model.layers.{held} is missing");
        let says = format!("num_hidden_layers is {claimed}");
        expect_error(&model, &prompts, &["config.json", &says, &last, &missing]);
    }
}

#[test]
fn out_of_range_flags_are_refused() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(&tmp.path().join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    for (flag, value) in [
        ("--samples", "0"),
        ("--samples", "100000000000"),
        ("--batch-size", "0"),
        ("--top-p", "0"),
        ("--temperature", "nan"),
        ("--max-new-tokens", "0"),
    ] {
        let out = tmp.path().join("out.jsonl");
        let run = generate(&chat_fixture(), &prompts, &out, &[flag, value]);
        assert_eq!(run.code, Some(1), "{flag} {value}:\n{}", run.stderr);
        assert!(run.stderr.contains(flag), "{flag} {value}:\n{}", run.stderr);
        assert!(!out.exists());
    }
}

#[test]
fn stop_strings_cut_the_text_and_end_the_completion() {
    let tmp = TempDir::new().unwrap();
    let prompts = write(
        &tmp.path().join("p.jsonl"),
        "{\"prompt\": \"Count to ten.\"}\n",
    );
    let args = ["--max-new-tokens", "24", "--seed", "2", "--ignore-eos"];
    let free_out = tmp.path().join("free.jsonl");
    assert!(generate(&chat_fixture(), &prompts, &free_out, &args).ok);
    let free: Value = serde_json::from_str(&std::fs::read_to_string(&free_out).unwrap()).unwrap();
    let text = free["completions"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "completion too short to cut: {text:?}");
    let stop: String = chars[8..11].iter().collect();
    let out = tmp.path().join("stopped.jsonl");
    let mut with_stop = args.to_vec();
    with_stop.extend(["--stop", stop.as_str()]);
    let run = generate(&chat_fixture(), &prompts, &out, &with_stop);
    assert!(run.ok, "{}", run.stderr);
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let c = &got["completions"][0];
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(
        c["text"].as_str().unwrap(),
        &text[..text.find(&stop).unwrap()]
    );
}

/// `--device`: auto runs everywhere and says where (and why the CPU); a device that cannot
/// run here is an error that says why, before anything is written; a bad name is refused.
#[test]
fn device_flag_says_where_the_model_runs() {
    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let prompts = write(&tmp.path().join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    let out = tmp.path().join("out.jsonl");
    let run = generate(&model, &prompts, &out, &["--max-new-tokens", "2"]);
    assert!(run.ok, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("device: "))
        .unwrap_or_else(|| panic!("no device line:\n{}", run.stderr));
    assert!(
        line.starts_with("device: cpu (auto: ") || line.starts_with("device: cuda:0"),
        "{line}"
    );

    let out2 = tmp.path().join("out2.jsonl");
    let run = generate(&model, &prompts, &out2, &["--device", "cpu"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l == "device: cpu"),
        "{}",
        run.stderr
    );

    // No machine has device 4096.
    let out3 = tmp.path().join("out3.jsonl");
    let run = generate(&model, &prompts, &out3, &["--device", "cuda:4096"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--device cuda:4096: CUDA cannot run here: "),
        "{}",
        run.stderr
    );
    assert!(!out3.exists());

    let run = generate(&model, &prompts, &out3, &["--device", "gpu"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("expected auto, cpu, cuda or cuda:N"),
        "{}",
        run.stderr
    );
}

/// `generate --device cpu --precision bf16` with `TPO_CPU_BF16` set to `kernel` (or unset).
fn generate_bf16(tmp: &TempDir, kernel: Option<&str>, out: &Path) -> Run {
    let model = chat_fixture();
    let prompts = write(&tmp.path().join("p.jsonl"), "{\"prompt\": \"hi\"}\n");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tpo-engine"));
    cmd.args([
        "--threads",
        "2",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "generate",
    ])
    .args(["--max-new-tokens", "2", "--model"])
    .arg(&model)
    .arg("--prompts")
    .arg(&prompts)
    .arg("--out")
    .arg(out);
    match kernel {
        Some(k) => cmd.env("TPO_CPU_BF16", k),
        None => cmd.env_remove("TPO_CPU_BF16"),
    };
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "the binary panicked:\n{stderr}"
    );
    Run {
        ok: output.status.success(),
        code: output.status.code(),
        stderr,
    }
}

#[test]
fn precision_bf16_names_its_kernel_and_a_bad_kernel_is_an_error() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("out.jsonl");
    let run = generate_bf16(&tmp, None, &out);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("device: cpu; bf16 products on ")),
        "{}",
        run.stderr
    );
    // The portable kernel runs anywhere and can be forced.
    let run = generate_bf16(&tmp, Some("portable"), &out);
    assert!(run.ok, "{}", run.stderr);
    let want = "device: cpu; bf16 products on bf16 widened to f32 FMA";
    assert!(run.stderr.lines().any(|l| l == want), "{}", run.stderr);

    let bad_out = tmp.path().join("bad.jsonl");
    let run = generate_bf16(&tmp, Some("avx9000"), &bad_out);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("TPO_CPU_BF16=avx9000: expected amx, avx512-bf16 or portable"),
        "{}",
        run.stderr
    );
    assert!(!bad_out.exists());

    let args = [
        "--precision",
        "fp8",
        "generate",
        "--model",
        "m",
        "--prompts",
        "p",
        "--out",
        "o",
    ];
    let run = run_on_threads("2", args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("expected f32 or bf16"),
        "{}",
        run.stderr
    );
}

/// A tokenizer_config.json whose chat_template is not a template, a template that fails as
/// it renders, and EOS ids beyond the vocabulary are errors naming the file at fault.
#[test]
fn template_and_eos_errors_name_their_file() {
    let prompts_dir = TempDir::new().unwrap();
    let prompts = write(
        &prompts_dir.path().join("p.jsonl"),
        "{\"prompt\": \"hi\"}\n",
    );
    let edit = |model: &Path, file: &str, key: &str, value: Value| {
        let path = model.join(file);
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json[key] = value;
        write(&path, &json.to_string());
    };

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    edit(
        &model,
        "tokenizer_config.json",
        "chat_template",
        Value::from(42),
    );
    expect_error(
        &model,
        &prompts,
        &["tokenizer_config.json", "chat_template", "found 42"],
    );

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let calls_unknown = "{{ no_such_function(messages) }}";
    edit(
        &model,
        "tokenizer_config.json",
        "chat_template",
        Value::from(calls_unknown),
    );
    expect_error(
        &model,
        &prompts,
        &["p.jsonl:1", "the chat template of", "tokenizer_config.json"],
    );

    let tmp = TempDir::new().unwrap();
    let model = model_copy(&tmp);
    let vocab = {
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        cfg["vocab_size"].as_u64().unwrap()
    };
    edit(
        &model,
        "generation_config.json",
        "eos_token_id",
        Value::from(vocab + 5),
    );
    let beyond = format!("token id {} is beyond", vocab + 5);
    expect_error(&model, &prompts, &["generation_config.json", &beyond]);
}
