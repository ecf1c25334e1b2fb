//! Input files are read a bounded line at a time: a line longer than the model could ever
//! take, or an input with no line end (/dev/zero), stops with an error at `file:line` while
//! the process's peak RSS stays small (measured here with wait4); a byte-order mark is
//! accepted and invalid UTF-8 is reported at its line.

mod common;

use common::{chat_fixture, s};
use std::path::Path;
use std::process::{Command, Stdio};
use tempfile::TempDir;

/// Peak RSS a refused input may cost, in MiB: the small checkpoint and the tokenizer take
/// about 20 MiB; reading a 64 MiB line whole (as before) took more than 1 GiB.
const PEAK_RSS_MIB: i64 = 200;

struct Exit {
    code: i32,
    stderr: String,
    peak_rss_mib: i64,
}

/// Runs the binary and reaps it with wait4 (not `Child::wait`), for its exit code and
/// peak RSS.
#[allow(clippy::zombie_processes)]
fn run(args: &[&str]) -> Exit {
    let dir = TempDir::new().unwrap();
    let err_path = dir.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .args(["--threads", "2"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: the pid is our child's, not yet reaped; the pointers are to live locals.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status),
        "the process crashed: status {status}"
    );
    Exit {
        code: libc::WEXITSTATUS(status),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        peak_rss_mib: usage.ru_maxrss / 1024,
    }
}

fn refused(exit: Exit, needles: &[&str]) {
    assert_eq!(exit.code, 1, "expected an error:\n{}", exit.stderr);
    for n in needles {
        assert!(
            exit.stderr.contains(n),
            "error should mention {n:?}:\n{}",
            exit.stderr
        );
    }
    assert!(
        exit.peak_rss_mib < PEAK_RSS_MIB,
        "peak RSS {} MiB, bound {PEAK_RSS_MIB} MiB",
        exit.peak_rss_mib
    );
}

/// A prompts line of 64 MiB of text.
fn huge_line(path: &Path, before: &str) {
    let mut text = String::from(before);
    text.push_str("{\"prompt\": \"");
    text.push_str(&"many words ".repeat((64 << 20) / 11));
    text.push_str("\"}\n");
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_huge_line_or_an_endless_input_stops_early_with_small_memory() {
    let tmp = TempDir::new().unwrap();
    let model = chat_fixture();
    let out = tmp.path().join("out.jsonl");
    let prompts = tmp.path().join("p.jsonl");
    huge_line(&prompts, "{\"prompt\": \"hi\"}\n");
    let generate = |prompts: &str| {
        run(&[
            "generate",
            "--model",
            s(&model),
            "--prompts",
            prompts,
            "--out",
            s(&out),
        ])
    };
    refused(generate(s(&prompts)), &["p.jsonl:2", "a line longer than"]);
    refused(
        generate("/dev/zero"),
        &["/dev/zero:1", "a line longer than"],
    );
    assert!(!out.exists());

    let pairs = tmp.path().join("pairs.jsonl");
    huge_line(&pairs, "");
    let dpo = run(&[
        "dpo",
        "--model",
        s(&model),
        "--pairs",
        s(&pairs),
        "--out",
        s(&tmp.path().join("run")),
    ]);
    refused(dpo, &["pairs.jsonl:1", "a line longer than"]);
    let train = run(&[
        "train",
        "--model",
        s(&model),
        "--prompts",
        "/dev/zero",
        "--judge",
        "builtin:arith",
        "--out",
        s(&tmp.path().join("tpo")),
    ]);
    refused(train, &["/dev/zero:1", "a line longer than"]);
}

#[test]
fn a_byte_order_mark_is_accepted_and_bad_utf8_is_named_by_line() {
    let tmp = TempDir::new().unwrap();
    let model = chat_fixture();
    let out = tmp.path().join("out.jsonl");
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "\u{feff}{\"prompt\": \"hi\"}\r\n{\"prompt\": \"yo\"}\r\n",
    )
    .unwrap();
    let args = |p: &Path| {
        [
            "generate",
            "--model",
            s(&model),
            "--prompts",
            s(p),
            "--max-new-tokens",
            "2",
            "--out",
            s(&out),
        ]
        .map(str::to_string)
    };
    let ok = run(&args(&prompts)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
    std::fs::write(&prompts, b"{\"prompt\": \"hi\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
    let bad = run(&args(&prompts)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    refused(bad, &["p.jsonl:2", "not valid UTF-8"]);
}

/// A command whose buffers would not fit the memory available stops before loading, naming
/// the figures and the flag to lower (the available memory set low through
/// TPO_MEMORY_AVAILABLE; what the small checkpoint needs is a few MiB).
#[test]
fn a_run_that_cannot_fit_the_memory_stops_before_loading() {
    let tmp = TempDir::new().unwrap();
    let model = chat_fixture();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\": \"Say hello.\", \"chosen\": \"Hello!\", \"rejected\": \"No.\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.jsonl");
    let run_dir = tmp.path().join("run");
    let with_memory = |bytes: &str, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
            .env("TPO_MEMORY_AVAILABLE", bytes)
            .args(["--threads", "2"])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let generate = [
        "generate",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--max-new-tokens",
        "2",
        "--out",
        s(&out),
    ];
    let (code, err) = with_memory("100000", &generate);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("generate would need about"), "{err}");
    assert!(
        err.contains("KV caches of 1 sequences") && err.contains("--batch-size"),
        "{err}"
    );
    assert!(!out.exists());
    let (code, err) = with_memory("1000000000", &generate);
    assert_eq!(code, Some(0), "{err}");

    let dpo = [
        "dpo",
        "--model",
        s(&model),
        "--pairs",
        s(&pairs),
        "--out",
        s(&run_dir),
    ];
    // Not even the weights' training state fits: the advice is LoRA.
    let (code, err) = with_memory("100000", &dpo);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dpo would need about") && err.contains("train a LoRA adapter instead"),
        "{err}"
    );
    assert!(!run_dir.exists());
    // The state fits and the activations do not: the advice is a smaller micro-batch.
    let big_batches = [&dpo[..], &["--micro-batch-tokens", "100000000"]].concat();
    let (code, err) = with_memory("1000000000", &big_batches);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("dpo would need about") && err.contains("lower --micro-batch-tokens"),
        "{err}"
    );
    assert!(!run_dir.exists());
    // A LoRA run is checked by its own estimate (frozen weights, the adapter's state).
    let lora = [&dpo[..], &["--lora-r", "4"]].concat();
    let (code, err) = with_memory("100000", &lora);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("frozen weights") && err.contains("adapter weights"),
        "{err}"
    );
    assert!(!run_dir.exists());

    let data = tmp.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Say hello.\", \"completion\": \"Hello!\"}\n",
    )
    .unwrap();
    let scores = tmp.path().join("scores.jsonl");
    let logprobs = [
        "logprobs",
        "--model",
        s(&model),
        "--input",
        s(&data),
        "--out",
        s(&scores),
    ];
    let (code, err) = with_memory("100000", &logprobs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("logprobs would need about"), "{err}");
    assert!(!scores.exists());
}

/// init-model, asked for a model the memory cannot hold, stops before making it.
#[test]
fn init_model_refuses_a_model_the_memory_cannot_hold() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("model");
    let o = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .env("TPO_MEMORY_AVAILABLE", "1000000")
        .args(["init-model", "--out", s(&out)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("init-model would need about") && err.contains("--hidden"),
        "{err}"
    );
    assert!(!out.exists());
}
