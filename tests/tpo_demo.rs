//! The built-in demonstration at its reduced size (`train --quick`): seeded and deterministic,
//! it must raise the held-out judge score above the seed's, and a second run of the same
//! directory only prints the finished table.

mod common;

use common::run_on_threads;
use serde_json::Value;
use std::path::Path;

fn row(out: &Path, arm: &str, t: usize) -> Value {
    let path = out.join(format!("{arm}/iter-{t}/summary.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn score(v: &Value) -> f64 {
    v["heldout_score"].as_f64().unwrap()
}

#[test]
fn the_quick_demonstration_improves_the_held_out_score_on_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let r = run_on_threads("2", ["train", "--quick", "--out", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    let n = plan["iterations"].as_u64().unwrap() as usize;

    let seed_direct = score(&row(&out, "direct", 0));
    let seed_thinking = score(&row(&out, "tpo", 0));
    let tpo = score(&row(&out, "tpo", n));
    let direct = score(&row(&out, "direct", n));
    eprintln!("seed direct {seed_direct}, seed thinking {seed_thinking}, TPO {tpo}, direct baseline {direct}");
    // The held-out set has 100 prompts: 10 points is 10 more right answers.
    assert!(
        tpo >= seed_direct + 0.10,
        "TPO {tpo} vs the seed's direct answers {seed_direct}"
    );
    assert!(
        tpo >= seed_thinking + 0.10,
        "TPO {tpo} vs the seed prompted to think {seed_thinking}"
    );
    // The win rate against the seed agrees with the scores.
    assert!(row(&out, "tpo", n)["win_rate"].as_f64().unwrap() > 0.5);

    // Every iteration trained on pairs, and the judge only saw parsed responses.
    for t in 1..=n {
        let counts = row(&out, "tpo", t)["pairs"].clone();
        assert!(
            counts["pairs"].as_u64().unwrap() > 0,
            "iteration {t}: {counts}"
        );
    }
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        n + 2,
        "{table}"
    );
    assert!(std::fs::read_to_string(out.join("thoughts.md"))
        .unwrap()
        .contains("## What is"));

    // Run again: the finished demonstration prints its table without redoing anything.
    let before = std::fs::metadata(out.join("tpo/iter-1/candidates.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    let r = run_on_threads("2", ["train", "--quick", "--out", out.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    let after = std::fs::metadata(out.join("tpo/iter-1/candidates.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    // A full-size demonstration cannot continue a quick one.
    let r = run_on_threads("2", ["train", "--out", out.to_str().unwrap()]);
    assert!(!r.ok && r.stderr.contains("another size"), "{}", r.stderr);
}
