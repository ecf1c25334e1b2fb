//! `tpo-engine train` end to end on the small init-model fixture, with external judge
//! commands: the run directory, the pairing rule, determinism, resume after a kill, and bad
//! input.

mod common;

use common::{chat_fixture, jsonl, run_on_threads, s, write, Run};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tpo(args: &[&str]) -> Run {
    run_on_threads("2", args)
}

/// A pointwise judge: the score is the number of "e" and "a" in the response (so the
/// judge's preference is known here without the engine).
fn letters_judge(dir: &Path) -> PathBuf {
    write(
        &dir.join("judge.py"),
        "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n    t = r['response']\n    print(json.dumps({'score': t.count('e') + t.count('a')}))\n",
    )
}

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let topics = [
        "rivers", "bread", "clocks", "owls", "maps", "salt", "tides", "bees",
    ];
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Tell me about {} number {i}.\"}}\n",
                topics[i % topics.len()]
            )
        })
        .collect();
    write(&dir.join("prompts.jsonl"), &text)
}

/// The flags of a small direct-mode run: 2 iterations of 4 prompts, K 4, 4 held out.
fn run_args(tmp: &Path, out: &Path) -> Vec<String> {
    let judge = format!("cmd:python3 {}", s(&letters_judge(tmp)));
    [
        "train",
        "--model",
        s(&chat_fixture()),
        "--prompts",
        s(&prompts(tmp, 12)),
        "--heldout-prompts",
        "4",
        "--judge",
        &judge,
        "--iterations",
        "2",
        "--prompts-per-iteration",
        "4",
        "--samples",
        "4",
        "--max-new-tokens",
        "12",
        "--no-thoughts",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--out",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn run_vec(args: &[String]) -> Run {
    tpo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_direct_run_writes_every_stage_and_pairs_by_the_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = run_vec(&run_args(tmp.path(), &out));
    assert!(r.ok, "{}", r.stderr);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["iterations"], 2);
    assert!(cfg["thought_prompt"].is_null());
    assert_eq!(jsonl(&out.join("prompts.jsonl")).len(), 8);
    assert_eq!(jsonl(&out.join("heldout.jsonl")).len(), 4);
    let mut seen = std::collections::HashSet::new();
    for t in 1..=2 {
        let dir = out.join(format!("iter-{t}"));
        let cands = jsonl(&dir.join("candidates.jsonl"));
        assert_eq!(cands.len(), 4);
        for p in &cands {
            // Fresh prompts in every iteration.
            assert!(seen.insert(p["index"].as_u64().unwrap()));
            let cs = p["candidates"].as_array().unwrap();
            assert_eq!(cs.len(), 4);
            for c in cs {
                let response = c["response"].as_str().unwrap_or("");
                if c["malformed"].is_null() {
                    let expected = response.matches(['e', 'a']).count() as f64;
                    assert_eq!(c["score"].as_f64().unwrap(), expected, "{response:?}");
                } else {
                    assert!(c["score"].is_null());
                }
            }
        }
        // Each pair: the best and worst judged candidates of its prompt (rho 0).
        for pair in jsonl(&dir.join("pairs.jsonl")) {
            let p = cands
                .iter()
                .find(|p| p["index"] == pair["prompt_index"])
                .unwrap();
            let scores: Vec<f64> = p["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["score"].as_f64().unwrap_or(f64::NAN))
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let min = scores.iter().cloned().fold(f64::MAX, f64::min);
            assert_eq!(pair["chosen_score"].as_f64().unwrap(), max);
            assert_eq!(pair["rejected_score"].as_f64().unwrap(), min);
            assert!(max > min);
            assert!(pair["ref_chosen_logps"].as_f64().unwrap() < 0.0);
            assert!(pair["ref_rejected_logps"].as_f64().unwrap() < 0.0);
        }
        let counts: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("pair-counts.json")).unwrap())
                .unwrap();
        assert_eq!(
            counts["pairs"].as_u64().unwrap() as usize,
            jsonl(&dir.join("pairs.jsonl")).len()
        );
        assert_eq!(
            counts["pairs"].as_u64().unwrap()
                + counts["all_tie"].as_u64().unwrap()
                + counts["no_parsed"].as_u64().unwrap(),
            4
        );
        assert!(dir.join("train/model/model.safetensors").exists());
        assert!(!jsonl(&dir.join("train/metrics.jsonl")).is_empty());
        let eval = jsonl(&dir.join("eval.jsonl"));
        assert_eq!(eval.len(), 4);
        for l in &eval {
            let (a, b) = (
                l["score"].as_f64().unwrap(),
                l["seed_score"].as_f64().unwrap(),
            );
            let expected = if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
            assert_eq!(l["outcome"].as_f64().unwrap(), expected);
        }
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        let mean = eval
            .iter()
            .map(|l| l["score"].as_f64().unwrap())
            .sum::<f64>()
            / 4.0;
        assert!((summary["heldout_score"].as_f64().unwrap() - mean).abs() < 1e-12);
    }
    // The seed's held-out answers in direct mode are the baseline: iteration 0 ties it.
    let seed_eval = jsonl(&out.join("iter-0/eval.jsonl"));
    assert!(seed_eval.iter().all(|l| l["outcome"] == 0.5));
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + 3, "{table}");
}

#[test]
fn a_run_from_a_config_file_records_the_resolved_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // The run's flags, less those the file gives, and one the command line overrides.
    let mut args = run_args(tmp.path(), &out);
    for flag in ["--iterations", "--samples", "--max-new-tokens", "--lr"] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args.drain(i..i + 2);
    }
    args.retain(|a| a != "--no-thoughts");
    let config = write(
        &tmp.path().join("run.yaml"),
        "iterations: 1\nsamples: 3\nmax_new_tokens: 9\nno-thoughts: true\nlr: 0.01\nbeta: 0.2\n",
    );
    args.extend(["--config", s(&config), "--lr", "1e-3"].map(String::from));
    let r = run_vec(&args);
    assert!(r.ok, "{}", r.stderr);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["iterations"], 1);
    assert_eq!(cfg["sampling"]["samples"], 3);
    assert_eq!(cfg["sampling"]["max_new_tokens"], 9);
    assert!(cfg["thought_prompt"].is_null());
    assert_eq!(cfg["dpo"]["beta"], 0.2);
    assert_eq!(cfg["optimizer"]["lr"], 1e-3);
}

/// Files that must come out the same however often a run was stopped: everything but
/// timings.
fn snapshot(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![];
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(out).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // Timings (the reports hold their write time and the stages' seconds), and who
            // owns the run: its id, each stage's record of it, the lock.
            let skipped = [
                "report.html",
                "stages.json",
                "summary.json",
                "summary.md",
                "config.json",
                "run-id",
                "tpo-run",
                ".tpo-engine.lock",
            ];
            if skipped.contains(&name.as_str()) {
                continue;
            }
            let mut bytes = std::fs::read(&p).unwrap();
            if name == "metrics.jsonl" {
                // tokens_per_s is a timing.
                let lines: Vec<String> = jsonl(&p)
                    .into_iter()
                    .map(|mut l| {
                        l.remove("tokens_per_s");
                        serde_json::to_string(&l).unwrap()
                    })
                    .collect();
                bytes = lines.join("\n").into_bytes();
            }
            files.push((rel, bytes));
        }
    }
    files.sort();
    files
}

fn assert_same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)], what: &str) {
    let names = |x: &[(String, Vec<u8>)]| x.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b), "{what}: different files");
    for (x, y) in a.iter().zip(b) {
        assert!(x.1 == y.1, "{what}: {} differs", x.0);
    }
}

#[test]
fn a_run_resumes_after_kills_between_and_within_stages_to_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let args = run_args(tmp.path(), &reference);
    let started = Instant::now();
    let r = run_vec(&args);
    assert!(r.ok, "{}", r.stderr);
    let full = started.elapsed();
    let expected = snapshot(&reference);
    let resume = |out: &Path| {
        let r = tpo(&["train", "--resume", "--out", s(out)]);
        assert!(r.ok, "{}", r.stderr);
    };

    // Between stages: the run stopped after some stage finished.
    let copy = |name: &str| {
        let dst = tmp.path().join(name);
        let status = Command::new("cp")
            .args(["-r", s(&reference), s(&dst)])
            .status()
            .unwrap();
        assert!(status.success());
        dst
    };
    let between = copy("between");
    for f in [
        "iter-2/pairs.jsonl",
        "iter-2/pair-counts.json",
        "iter-2/eval.jsonl",
        "iter-2/summary.json",
    ] {
        std::fs::remove_file(between.join(f)).unwrap();
    }
    std::fs::remove_dir_all(between.join("iter-2/train")).unwrap();
    resume(&between);
    assert_same(&snapshot(&between), &expected, "resumed between stages");

    // Killed between the two files of the pairing stage: its counts written, not its pairs.
    let counts_only = copy("counts-only");
    for f in [
        "iter-2/pairs.jsonl",
        "iter-2/eval.jsonl",
        "iter-2/summary.json",
    ] {
        std::fs::remove_file(counts_only.join(f)).unwrap();
    }
    std::fs::remove_dir_all(counts_only.join("iter-2/train")).unwrap();
    resume(&counts_only);
    assert_same(
        &snapshot(&counts_only),
        &expected,
        "resumed inside the pairing stage",
    );

    // A candidates file edited by hand no longer holds the stored pairs: an error naming
    // pairs.jsonl, not a panic or training on the wrong sequences.
    let edited = copy("edited");
    let path = edited.join("iter-2/candidates.jsonl");
    let lines: Vec<String> = jsonl(&path)
        .into_iter()
        .map(|mut p| {
            p["candidates"].as_array_mut().unwrap().truncate(1);
            serde_json::to_string(&p).unwrap()
        })
        .collect();
    write(&path, &(lines.join("\n") + "\n"));
    std::fs::remove_dir_all(edited.join("iter-2/train")).unwrap();
    std::fs::remove_file(edited.join("iter-2/summary.json")).unwrap();
    let r = tpo(&["train", "--resume", "--out", s(&edited)]);
    assert!(!r.ok && r.code == Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("pairs.jsonl:1") && r.stderr.contains("no such pair"),
        "{}",
        r.stderr
    );

    // Within stages: training stopped half-way (metrics written, no model), and a
    // temporary file left by an interrupted write.
    let within = copy("within");
    std::fs::remove_dir_all(within.join("iter-1/train/model")).unwrap();
    for f in ["iter-1/eval.jsonl", "iter-1/summary.json"] {
        std::fs::remove_file(within.join(f)).unwrap();
    }
    std::fs::remove_dir_all(within.join("iter-2")).unwrap();
    write(&within.join("iter-1/.eval.jsonl.999.tmp"), "{\"half\": ");
    resume(&within);
    assert_same(&snapshot(&within), &expected, "resumed within a stage");

    // Real kills at several points of the run, each followed by a resume.
    let killed = tmp.path().join("killed");
    let mut kill_args = run_args(tmp.path(), &killed);
    for fraction in [0.15, 0.4, 0.65, 0.9] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
            .args(["--threads", "2"])
            .args(&kill_args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + full.mul_f64(fraction);
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().unwrap();
        kill_args = vec![
            "train".into(),
            "--resume".into(),
            "--out".into(),
            s(&killed).into(),
        ];
    }
    if killed.join("config.json").exists() {
        resume(&killed);
        assert_same(&snapshot(&killed), &expected, "resumed after kills");
    }
    let leftovers: Vec<_> = snapshot(&killed)
        .into_iter()
        .filter(|f| f.0.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{:?}",
        leftovers.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

/// The flags of a thought run on the random fixture, which never writes the markers: a
/// short template of our own (the fixture's context is 128 tokens), one iteration.
fn thought_args(tmp: &Path, out: &Path, iterations: &str) -> Vec<String> {
    let mut args = run_args(tmp, out);
    args.retain(|a| a != "--no-thoughts");
    let template = write(
        &tmp.join("thought.json"),
        r#"{"template": "{instruction} Think after T:, answer after R:", "thought_marker": "T:", "response_marker": "R:"}"#,
    );
    args.extend(["--thought-prompt".to_string(), s(&template).to_string()]);
    let i = args.iter().position(|a| a == "--iterations").unwrap();
    args[i + 1] = iterations.into();
    args
}

#[test]
fn a_thought_run_whose_candidates_are_all_malformed_stops_with_advice() {
    // With the format's control turned off, every candidate is malformed, so no prompt can
    // give a pair: the run stops before evaluating an unchanged model, and says what would
    // help.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = thought_args(tmp.path(), &out, "1");
    args.extend(["--no-prefill-thought", "--no-force-response"].map(String::from));
    let r = run_vec(&args);
    assert!(!r.ok && r.code == Some(1), "{}", r.stderr);
    for part in [
        "iteration 1: no pair can be made",
        "16 of 16 candidates (100%) are malformed",
        "the most common reason: \"no thought marker\" (16)",
        "--prefill-thought",
        "--force-response",
        "--max-thought-tokens",
        "iter-1/candidates.jsonl",
    ] {
        assert!(r.stderr.contains(part), "{part}: {}", r.stderr);
    }
    let cands = jsonl(&out.join("iter-1/candidates.jsonl"));
    assert!(cands.iter().all(|p| p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["malformed"] == "no thought marker" && c["score"].is_null())));
    assert!(!out.join("iter-1/no-pairs").exists());
    assert!(!out.join("iter-1/eval.jsonl").exists());
    // Resuming meets the same stop: nothing goes on unchanged.
    let again = tpo(&["train", "--resume", "--out", s(&out)]);
    assert!(
        !again.ok && again.stderr.contains("no pair can be made"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_steered_run_parses_every_candidate_caps_thoughts_and_resumes_to_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let steered = |out: &Path| {
        let mut args = thought_args(tmp.path(), out, "2");
        args.extend(
            [
                "--prefill-thought",
                "--force-response",
                "--max-thought-tokens",
                "5",
            ]
            .map(String::from),
        );
        args
    };
    let out = tmp.path().join("run");
    let r = run_vec(&steered(&out));
    assert!(r.ok, "{}", r.stderr);
    let mut marker: Option<Vec<Value>> = None;
    let mut budget_forced = 0;
    for t in 1..=2 {
        for p in jsonl(&out.join(format!("iter-{t}/candidates.jsonl"))) {
            for c in p["candidates"].as_array().unwrap() {
                // Prefilled, the random model's text is the thought until the forced marker.
                assert!(c["malformed"].is_null(), "{c}");
                let Some(f) = c["forced"].as_object() else {
                    continue;
                };
                let (at, n) = (
                    f["at"].as_u64().unwrap() as usize,
                    f["tokens"].as_u64().unwrap() as usize,
                );
                if f["reason"] == "budget" {
                    // The thought is exactly the budget.
                    assert_eq!(at, 5, "{c}");
                    budget_forced += 1;
                } else {
                    assert!(f["reason"] == "eos" && at <= 5, "{c}");
                }
                // The forced tokens are in the completion's ids, the same in every one.
                let ids = c["token_ids"].as_array().unwrap();
                let forced = ids[at..at + n].to_vec();
                assert_eq!(marker.get_or_insert_with(|| forced.clone()), &forced);
                assert!(c["text"].as_str().unwrap().contains("\nR:"), "{c}");
                assert!(c["thought_tokens"].as_u64().unwrap() <= 5, "{c}");
            }
        }
        // The pairs train on the forced tokens: their text is the whole completion.
        for pair in jsonl(&out.join(format!("iter-{t}/pairs.jsonl"))) {
            assert!(pair["chosen"].as_str().unwrap().contains("R:"), "{pair:?}");
        }
    }
    assert!(budget_forced > 0);
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        table.contains("forced (held-out / train)") && table.contains("100.0%"),
        "{table}"
    );

    // The same flags give the same files, and so does a resume.
    let again = tmp.path().join("again");
    assert!(run_vec(&steered(&again)).ok);
    let expected = snapshot(&out);
    assert_same(&snapshot(&again), &expected, "a second run");
    std::fs::remove_dir_all(again.join("iter-2")).unwrap();
    let r = tpo(&["train", "--resume", "--out", s(&again)]);
    assert!(r.ok, "{}", r.stderr);
    assert_same(&snapshot(&again), &expected, "resumed");
}

#[test]
fn bad_runs_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let base = run_args(tmp.path(), &out);
    let with = |flag: &str, value: &str| {
        let mut a = base.clone();
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.to_string();
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with("--judge", "oracle:x"), "unknown kind"),
        (with("--judge", "builtin:nope"), "no such built-in judge"),
        (with("--prompts-per-iteration", "5"), "need 10"),
        (with("--model", "/no/such/model"), "no such directory"),
        (
            with(
                "--model",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/rm-llama")
                    .to_str()
                    .unwrap(),
            ),
            "not a causal language model",
        ),
        (with("--iterations", "0"), "--iterations 0"),
        (with("--samples", "0"), "--samples 0"),
        (with("--samples", "1"), "a pair needs two candidates"),
        (
            with("--prompts-per-iteration", "9223372036854775808"),
            "prompts need more",
        ),
        (with("--heldout-prompts", "12"), "has only 12 prompts"),
        (with("--prompts", "/no/such.jsonl"), "/no/such.jsonl"),
    ];
    for (args, needle) in cases {
        let r = run_vec(&args);
        assert!(!r.ok && r.code == Some(1), "{needle}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
        assert!(!out.exists(), "{needle}: a run directory was made");
    }
    let r = tpo(&["train", "--resume", "--out", s(&tmp.path().join("nothing"))]);
    assert!(!r.ok && r.stderr.contains("config.json"), "{}", r.stderr);
    let r = tpo(&["train", "--prompts", "x.jsonl", "--out", s(&out)]);
    assert!(!r.ok && r.stderr.contains("need --model"), "{}", r.stderr);
    let r = tpo(&["train", "--samples", "4", "--out", s(&out)]);
    assert!(
        !r.ok && r.stderr.contains("takes only --out"),
        "{}",
        r.stderr
    );
    // One prompt left for training cannot feed two iterations.
    let one = write(
        &tmp.path().join("one.jsonl"),
        "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n",
    );
    let mut a = with("--prompts", s(&one));
    let i = a
        .iter()
        .position(|x| x == "--prompts-per-iteration")
        .unwrap();
    a.drain(i..i + 2);
    let i = a.iter().position(|x| x == "--heldout-prompts").unwrap();
    a[i + 1] = "1".into();
    let r = run_vec(&a);
    assert!(
        !r.ok && r.stderr.contains("cannot give 2 iterations"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn a_crashing_judge_stops_the_run_with_its_stderr_and_the_run_resumes_later() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // Crashes while a flag file exists.
    let flag = tmp.path().join("broken");
    write(&flag, "");
    let judge = write(
        &tmp.path().join("judge.sh"),
        &format!(
            "if [ -e {} ]; then echo 'judge: out of memory' >&2; exit 7; fi\npython3 {}\n",
            s(&flag),
            s(&letters_judge(tmp.path()))
        ),
    );
    let mut args = run_args(tmp.path(), &out);
    let i = args.iter().position(|a| a == "--judge").unwrap();
    args[i + 1] = format!("cmd:sh {}", s(&judge));
    args.extend(["--judge-retries", "0"].map(String::from));
    let r = run_vec(&args);
    assert!(!r.ok && r.code == Some(1));
    assert!(r.stderr.contains("out of memory"), "{}", r.stderr);
    // The first judge call is the seed's evaluation: its answers were kept, unjudged.
    assert!(out.join("eval-seed.jsonl").exists());
    assert!(!out.join("iter-0/eval.jsonl").exists());
    std::fs::remove_file(&flag).unwrap();
    let r = tpo(&["train", "--resume", "--out", s(&out)]);
    assert!(r.ok, "{}", r.stderr);
    assert!(out.join("iter-2/summary.json").exists());
}

/// After a judge failure the run goes on with another judge: `--resume --judge` replaces
/// the judge (and records it), while a flag that would change computed results is refused.
#[test]
fn resume_may_change_the_judge_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let broken = write(
        &tmp.path().join("broken.sh"),
        "echo 'judge: gone' >&2; exit 3\n",
    );
    let mut args = run_args(tmp.path(), &out);
    let i = args.iter().position(|a| a == "--judge").unwrap();
    args[i + 1] = format!("cmd:sh {}", s(&broken));
    args.extend(["--judge-retries", "0"].map(String::from));
    let r = run_vec(&args);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("judge: gone"), "{}", r.stderr);

    let r = tpo(&["train", "--resume", "--out", s(&out), "--iterations", "5"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("fixes everything but the judge"),
        "{}",
        r.stderr
    );

    let good = format!("cmd:python3 {}", s(&letters_judge(tmp.path())));
    let r = tpo(&[
        "train",
        "--resume",
        "--out",
        s(&out),
        "--judge",
        &good,
        "--judge-timeout",
        "60",
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(out.join("iter-2/summary.json").exists());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["judge"], Value::from(good));
    assert_eq!(cfg["judge_timeout_secs"], Value::from(60.0));
}

#[test]
fn a_reward_model_and_a_pairwise_command_can_judge_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let rm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rm-llama");
    // Prefers the longer response, whichever side it is shown on.
    let pairwise = write(
        &tmp.path().join("pairwise.py"),
        "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n    a, b = len(r['response_a']), len(r['response_b'])\n    print(json.dumps({'preference': 'a' if a > b else 'b' if b > a else 'tie'}))\n",
    );
    for (name, judge) in [
        ("rm", format!("rm:{}", s(&rm))),
        ("pairwise", format!("pairwise-cmd:python3 {}", s(&pairwise))),
    ] {
        let out = tmp.path().join(name);
        let mut args = run_args(tmp.path(), &out);
        let i = args.iter().position(|a| a == "--judge").unwrap();
        args[i + 1] = judge;
        let i = args.iter().position(|a| a == "--iterations").unwrap();
        args[i + 1] = "1".into();
        let r = run_vec(&args);
        assert!(r.ok, "{name}: {}", r.stderr);
        let cands = jsonl(&out.join("iter-1/candidates.jsonl"));
        for p in &cands {
            let cs = p["candidates"].as_array().unwrap();
            let scores: Vec<f64> = cs.iter().filter_map(|c| c["score"].as_f64()).collect();
            assert_eq!(scores.len(), cs.len(), "{name}: direct answers all parse");
            if name == "pairwise" {
                // ELO scores are centred, and the longest response ranks first.
                assert!(scores.iter().sum::<f64>().abs() < 1e-9, "{scores:?}");
                let longest = (0..cs.len())
                    .max_by_key(|&i| cs[i]["response"].as_str().unwrap().chars().count())
                    .unwrap();
                let best = scores.iter().cloned().fold(f64::MIN, f64::max);
                assert_eq!(scores[longest], best, "{name}: {cs:?}");
            }
        }
        assert!(out.join("iter-1/summary.json").exists());
    }
}

/// While a run works, its directory is its own: a second process can neither write a stage
/// into it nor resume it. Two real processes: a run held at its judge, and the intruders.
#[test]
fn a_running_run_directory_has_one_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let slow = write(
        &tmp.path().join("slow.py"),
        "import json, sys, time\ntime.sleep(60)\nfor line in sys.stdin:\n    print(json.dumps({'score': 1}))\n",
    );
    let mut args = run_args(tmp.path(), &out);
    let i = args.iter().position(|a| a == "--judge").unwrap();
    args[i + 1] = format!("cmd:python3 {}", s(&slow));
    let mut first = common::start_holding(&args, &out);

    let pairs = write(
        &tmp.path().join("pairs.jsonl"),
        "{\"prompt\": \"Say hello.\", \"chosen\": \"Hello!\", \"rejected\": \"No.\"}\n",
    );
    let intruder = out.join("iter-1").join("train");
    let dpo = tpo(&[
        "dpo",
        "--model",
        s(&chat_fixture()),
        "--pairs",
        s(&pairs),
        "--out",
        s(&intruder),
    ]);
    let resume = tpo(&["train", "--resume", "--out", s(&out)]);
    let stray = out.join("iter-1").join("mine.jsonl");
    let generate = tpo(&[
        "generate",
        "--model",
        s(&chat_fixture()),
        "--prompts",
        s(&prompts(tmp.path(), 1)),
        "--out",
        s(&stray),
    ]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(dpo.code, Some(1), "{}", dpo.stderr);
    assert!(
        dpo.stderr.contains("of a running tpo-engine") && dpo.stderr.contains("run"),
        "{}",
        dpo.stderr
    );
    assert!(!intruder.exists(), "the refused dpo wrote into the run");
    assert_eq!(resume.code, Some(1), "{}", resume.stderr);
    assert!(
        resume.stderr.contains("another tpo-engine run (pid"),
        "{}",
        resume.stderr
    );
    assert_eq!(generate.code, Some(1), "{}", generate.stderr);
    assert!(
        generate.stderr.contains("--out") && generate.stderr.contains("of a running tpo-engine"),
        "{}",
        generate.stderr
    );
    assert!(!stray.exists());
}

/// A run never adopts a training stage another command wrote into its directory while it
/// was stopped: resuming refuses, and removes nothing.
#[test]
fn a_run_never_adopts_a_stage_it_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = run_vec(&run_args(tmp.path(), &out));
    assert!(r.ok, "{}", r.stderr);
    let stage = out.join("iter-2").join("train");
    let owner = stage.join("tpo-run");
    let ours = std::fs::read_to_string(&owner).unwrap();
    assert_eq!(
        ours,
        std::fs::read_to_string(out.join("run-id")).unwrap(),
        "the stage records the run that wrote it"
    );
    let r = tpo(&["train", "--resume", "--out", s(&out)]);
    assert!(r.ok, "a finished run resumes to nothing: {}", r.stderr);
    // Iteration 2 as if the run had stopped before finishing it, and iteration 1's policy:
    // each stage written by someone else, or with no record of its writer.
    std::fs::remove_file(out.join("iter-2").join("summary.json")).unwrap();
    let first = out.join("iter-1").join("train").join("tpo-run");
    for (which, foreign) in [
        (&owner, Some("someone-else")),
        (&owner, None),
        (&first, Some("someone-else")),
    ] {
        std::fs::write(&owner, &ours).unwrap();
        std::fs::write(&first, &ours).unwrap();
        match foreign {
            Some(id) => std::fs::write(which, id).unwrap(),
            None => std::fs::remove_file(which).unwrap(),
        }
        let r = tpo(&["train", "--resume", "--out", s(&out)]);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        let stage_dir = which.parent().unwrap().to_string_lossy().into_owned();
        assert!(r.stderr.contains(&stage_dir), "{}", r.stderr);
        assert!(
            r.stderr.contains("this run did not write it"),
            "{}",
            r.stderr
        );
        assert!(stage.join("model").join("config.json").exists());
    }
}

/// The first update's metric `key` of iteration t's training.
fn first_update(out: &Path, t: usize, key: &str) -> f64 {
    let lines = jsonl(&out.join(format!("iter-{t}/train/metrics.jsonl")));
    lines[0][key].as_f64().unwrap()
}

#[test]
fn a_lora_run_chains_its_adapters_over_the_frozen_seed_and_resumes_to_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    let mut args = run_args(tmp.path(), &out);
    args.extend(["--lora-r", "4", "--lr", "2e-2"].map(String::from));
    let r = run_vec(&args);
    assert!(r.ok, "{}", r.stderr);
    let config = tpo_engine::model::Model::load_config(&chat_fixture()).unwrap();
    let mut adapters = vec![];
    for t in [1, 2] {
        let train = out.join(format!("iter-{t}/train"));
        assert!(
            !train.join("model").exists(),
            "iteration {t} wrote a full model"
        );
        let adapter = tpo_engine::model::peft::load(&train.join("adapter"), &config).unwrap();
        assert!(!adapter.is_identity(), "iteration {t}'s adapter has learnt");
        // Iteration t starts from the policy of t-1, which is its reference too.
        assert!(first_update(&out, t, "rewards/margins").abs() < 1e-4);
        assert!((first_update(&out, t, "loss") - std::f64::consts::LN_2).abs() < 1e-4);
        adapters.push(adapter.params);
    }
    assert!(
        adapters[0] != adapters[1],
        "iteration 2 trained its adapter on"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["lora"]["r"], 4);
    assert!(
        r.stderr.contains(s(&out.join("iter-2/train/adapter"))),
        "{}",
        r.stderr
    );

    // Killed before iteration 2 trained: the resumed run gives the same files.
    let expected = snapshot(&out);
    for f in ["iter-2/eval.jsonl", "iter-2/summary.json"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    std::fs::remove_dir_all(out.join("iter-2/train")).unwrap();
    let r = tpo(&["train", "--resume", "--out", s(&out)]);
    assert!(r.ok, "{}", r.stderr);
    assert_same(&snapshot(&out), &expected, "resumed LoRA run");
}
