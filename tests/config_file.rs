//! `--config FILE`: flag values from TOML, YAML or JSON, overridden by the command line;
//! unknown keys and bad files are errors naming the key and the file.

mod common;

use common::{chat_fixture, run_on_threads, s, write, Run};
use std::path::Path;

fn generate(dir: &Path, out: &str, extra: &[&str]) -> (Run, String) {
    let prompts = dir.join("p.jsonl");
    if !prompts.exists() {
        write(
            &prompts,
            "{\"prompt\": \"Name a river.\"}\n{\"prompt\": \"Add 2 and 3.\"}\n",
        );
    }
    let out = dir.join(out);
    let model = chat_fixture();
    let mut args = vec![
        "generate",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
    ];
    args.extend(extra);
    let run = run_on_threads("2", &args);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (run, text)
}

#[test]
fn a_config_file_gives_the_flags_it_names_and_the_command_line_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let flags = [
        "--samples",
        "3",
        "--max-new-tokens",
        "7",
        "--seed",
        "5",
        "--temperature",
        "0.7",
        "--stop",
        "e",
    ];
    let (run, want) = generate(dir, "flags.jsonl", &flags);
    assert!(run.ok, "{}", run.stderr);
    let files = [
        ("c.toml", "samples = 3\nmax-new-tokens = 7\nseed = 5\ntemperature = 0.7\nstop = [\"e\"]\nthreads = 1\n"),
        ("c.yaml", "samples: 3\nmax_new_tokens: 7\nseed: 5\ntemperature: 0.7\nstop: e\n"),
        ("c.json", "{\"samples\": 3, \"max_new_tokens\": 7, \"seed\": 5, \"temperature\": 0.7, \"stop\": [\"e\"], \"greedy\": false}"),
    ];
    for (name, text) in files {
        let config = write(&dir.join(name), text);
        let (run, got) = generate(dir, "config.jsonl", &["--config", s(&config)]);
        assert!(run.ok, "{name}: {}", run.stderr);
        assert_eq!(got, want, "{name}");
    }
    // The command line wins over the file.
    let config = dir.join("c.toml");
    let (run, got) = generate(
        dir,
        "over.jsonl",
        &["--config", s(&config), "--samples", "2", "--seed", "6"],
    );
    assert!(run.ok, "{}", run.stderr);
    let (_, want) = generate(
        dir,
        "over-flags.jsonl",
        &[
            "--samples",
            "2",
            "--max-new-tokens",
            "7",
            "--seed",
            "6",
            "--temperature",
            "0.7",
            "--stop",
            "e",
        ],
    );
    assert_eq!(got, want);
    // `false` turns off an option that is on by default, through its `no-` flag.
    let template = write(
        &dir.join("t.json"),
        r#"{"template": "{instruction} Think after T:, answer after R:", "thought_marker": "T:", "response_marker": "R:"}"#,
    );
    let off = write(
        &dir.join("off.toml"),
        "prefill_thought = false\nforce_response = false\n",
    );
    let (run, got) = generate(
        dir,
        "off.jsonl",
        &[
            "--config",
            s(&off),
            "--thought-prompt",
            s(&template),
            "--max-new-tokens",
            "6",
        ],
    );
    assert!(run.ok, "{}", run.stderr);
    let (_, want) = generate(
        dir,
        "off-flags.jsonl",
        &[
            "--no-prefill-thought",
            "--no-force-response",
            "--thought-prompt",
            s(&template),
            "--max-new-tokens",
            "6",
        ],
    );
    assert_eq!(got, want);
    assert!(got.contains("no thought marker"), "{got}");
}

#[test]
fn bad_config_files_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases = [
        (
            "unknown.toml",
            "samples = 2\nbogus_flag = 1\n",
            "unknown key `bogus_flag` (not a flag of `tpo-engine generate`)",
        ),
        ("other.yaml", "judge: cmd:x\n", "unknown key `judge`"),
        ("bad.toml", "samples = \n", "bad.toml: not valid TOML"),
        ("bad.json", "{\"samples\": }", "bad.json: not valid JSON"),
        (
            "list.yaml",
            "- samples\n",
            "list.yaml: expected keys and values",
        ),
        (
            "nested.json",
            "{\"samples\": {\"a\": 1}}",
            "nested.json: key `samples`: expected a single value",
        ),
        (
            "flag.json",
            "{\"greedy\": \"yes\"}",
            "key `greedy`: expected true or false",
        ),
        (
            "self.json",
            "{\"config\": \"x.json\"}",
            "`config` cannot name another file",
        ),
        (
            "c.ini",
            "samples=2\n",
            "expected a .toml, .yaml, .yml or .json file",
        ),
    ];
    for (name, text, why) in cases {
        let config = write(&dir.join(name), text);
        let (run, _) = generate(dir, "out.jsonl", &["--config", s(&config)]);
        assert!(!run.ok && run.code == Some(1), "{name}: {}", run.stderr);
        assert!(run.stderr.contains(why), "{name}: {}", run.stderr);
        assert!(!dir.join("out.jsonl").exists());
    }
    let (run, _) = generate(dir, "out.jsonl", &["--config", s(&dir.join("absent.toml"))]);
    assert!(
        !run.ok && run.stderr.contains("absent.toml"),
        "{}",
        run.stderr
    );
}
