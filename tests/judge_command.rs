//! External judge commands end to end: small python3 / sh judges written into a temporary
//! directory, run through `PointwiseCommand`, `PairwiseCommand` + `EloJudge` and `open_judge`,
//! good and bad.

use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tpo_engine::tpo::judge::command::{PairwiseCommand, PointwiseCommand};
use tpo_engine::tpo::judge::elo::EloJudge;
use tpo_engine::tpo::judge::{open_judge, Judge, JudgeGroup, JudgeOptions, PairwiseJudge};

fn write_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `python3 'SCRIPT' ARGS...`, quoted for `sh -c`.
fn python(script: &Path, args: &[&Path]) -> String {
    let mut cmd = format!("python3 '{}'", script.display());
    for a in args {
        cmd.push_str(&format!(" '{}'", a.display()));
    }
    cmd
}

fn opts(timeout_secs: f64, retries: usize, batch_size: usize) -> JudgeOptions {
    JudgeOptions {
        timeout_secs,
        retries,
        batch_size,
        ..JudgeOptions::default()
    }
}

fn source(bonus: f64) -> Map<String, Value> {
    json!({"prompt": "write something", "bonus": bonus})
        .as_object()
        .unwrap()
        .clone()
}

/// Counts lines of a file (0 if there is none).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Score = length of the response + the prompt's "bonus"; one line per run appended to a log.
const LENGTH_SCORER: &str = r#"
import json, sys
requests = [json.loads(l) for l in sys.stdin if l.strip()]
with open(sys.argv[1], "a") as log:
    log.write("%d\n" % len(requests))
for r in requests:
    print(json.dumps({"score": len(r["response"]) + r["prompt"]["bonus"], "note": "ok"}))
print()
print()
"#;

/// Prefers the longer response; logs every (a, b) it was asked.
const LONGER_WINS: &str = r#"
import json, sys
with open(sys.argv[1], "a") as log:
    for line in sys.stdin:
        r = json.loads(line)
        a, b = r["response_a"], r["response_b"]
        log.write(json.dumps([r["instruction"], a, b]) + "\n")
        pref = "a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie"
        print(json.dumps({"preference": pref}))
"#;

#[test]
fn pointwise_command_scores_every_response_in_batches() {
    let tmp = TempDir::new().unwrap();
    let script = write_script(tmp.path(), "judge.py", LENGTH_SCORER);
    let log = tmp.path().join("runs.log");
    let mut judge = PointwiseCommand::new(&python(&script, &[&log]), &opts(30.0, 0, 3)).unwrap();
    assert!(judge.describe().contains("judge.py"));
    let (s1, s2, s3) = (source(0.0), source(100.0), source(0.5));
    let groups = vec![
        JudgeGroup {
            source: &s1,
            instruction: "one",
            responses: vec!["a", "abcd", "ab"],
        },
        JudgeGroup {
            source: &s2,
            instruction: "two",
            responses: vec!["xyz"],
        },
        JudgeGroup {
            source: &s3,
            instruction: "three",
            responses: vec![],
        },
        JudgeGroup {
            source: &s3,
            instruction: "four",
            responses: vec!["é\n\"quoted\"", "", "12345"],
        },
    ];
    let reported = RefCell::new(Vec::new());
    let scores = judge
        .score(&groups, &|n| reported.borrow_mut().push(n))
        .unwrap();
    // Characters as Python counts them, plus the bonus.
    let want: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| {
            let bonus = g.source["bonus"].as_f64().unwrap();
            g.responses
                .iter()
                .map(|r| r.chars().count() as f64 + bonus)
                .collect()
        })
        .collect();
    assert_eq!(scores, want);
    // 7 responses, 3 per run.
    assert_eq!(*reported.borrow(), vec![3, 3, 1]);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "3\n3\n1\n");

    // Nothing to score: the command is not run.
    let scores = judge
        .score(&groups[2..3], &|_| panic!("no progress"))
        .unwrap();
    assert_eq!(scores, vec![Vec::<f64>::new()]);
    assert_eq!(lines_in(&log), 3);
}

#[test]
fn pairwise_command_through_elo_ranks_by_length() {
    let tmp = TempDir::new().unwrap();
    let script = write_script(tmp.path(), "pairwise.py", LONGER_WINS);
    let log = tmp.path().join("battles.log");
    let s = source(0.0);
    let responses = vec!["ccc", "a", "eeeee", "bb", "dddd"];
    let groups = vec![
        JudgeGroup {
            source: &s,
            instruction: "rank these",
            responses: responses.clone(),
        },
        JudgeGroup {
            source: &s,
            instruction: "alone",
            responses: vec!["solo"],
        },
    ];
    let mut judge =
        EloJudge::new(PairwiseCommand::new(&python(&script, &[&log]), &opts(30.0, 0, 7)).unwrap());
    let reported = RefCell::new(0);
    let scores = judge
        .score(&groups, &|n| *reported.borrow_mut() += n)
        .unwrap();
    assert_eq!(*reported.borrow(), 6);
    assert_eq!(scores[1], vec![0.0]);
    let s0 = &scores[0];
    // Longer is better: eeeee > dddd > ccc > bb > a.
    for (i, j) in [(2, 4), (4, 0), (0, 3), (3, 1)] {
        assert!(s0[i] > s0[j], "{s0:?}");
    }
    assert!(s0.iter().sum::<f64>().abs() < 1e-9);
    // Every ordered pair, each once, with the battle's first response as "a".
    let mut asked: Vec<(String, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: (String, String, String) = serde_json::from_str(l).unwrap();
            assert_eq!(v.0, "rank these");
            (v.1, v.2)
        })
        .collect();
    asked.sort();
    let mut want = Vec::new();
    for a in &responses {
        for b in &responses {
            if a != b {
                want.push((a.to_string(), b.to_string()));
            }
        }
    }
    want.sort();
    assert_eq!(asked, want);
}

#[test]
fn open_judge_runs_pairwise_and_pointwise_commands() {
    let tmp = TempDir::new().unwrap();
    let pairwise = write_script(tmp.path(), "pairwise.py", LONGER_WINS);
    let pointwise = write_script(tmp.path(), "judge.py", LENGTH_SCORER);
    let log = tmp.path().join("log");
    let s = source(1.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["two", "three", "one!"],
    }];
    let o = JudgeOptions::default();
    let mut judge =
        open_judge(&format!("pairwise-cmd:{}", python(&pairwise, &[&log])), &o).unwrap();
    assert!(judge.describe().contains("ELO"));
    let s = &judge.score(&groups, &|_| {}).unwrap()[0];
    assert!(s[1] > s[2] && s[2] > s[0], "{s:?}");

    let mut judge = open_judge(&format!("cmd:{}", python(&pointwise, &[&log])), &o).unwrap();
    assert_eq!(
        judge.score(&groups, &|_| {}).unwrap(),
        vec![vec![4.0, 6.0, 5.0]]
    );
}

#[test]
fn a_position_biased_command_gives_equal_scores() {
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["a", "bb", "ccc"],
    }];
    let cmd = r#"while read -r line; do echo '{"preference": "a"}'; done"#;
    let mut judge = EloJudge::new(PairwiseCommand::new(cmd, &JudgeOptions::default()).unwrap());
    let scores = judge.score(&groups, &|_| {}).unwrap();
    for x in &scores[0] {
        assert!(x.abs() < 1e-12, "{scores:?}");
    }
}

fn one_group_error(cmd: &str, o: &JudgeOptions) -> String {
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["a", "bb", "ccc"],
    }];
    let mut judge = PointwiseCommand::new(cmd, o).unwrap();
    format!(
        "{:#}",
        judge
            .score(&groups, &|_| panic!("no progress on failure"))
            .unwrap_err()
    )
}

fn pairwise_error(cmd: &str, o: &JudgeOptions) -> String {
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["a", "bb"],
    }];
    let mut judge = EloJudge::new(PairwiseCommand::new(cmd, o).unwrap());
    format!("{:#}", judge.score(&groups, &|_| {}).unwrap_err())
}

#[test]
fn a_crashing_command_is_reported_with_its_status_and_stderr() {
    let tmp = TempDir::new().unwrap();
    let script = write_script(
        tmp.path(),
        "crash.sh",
        "cat > /dev/null\necho 'loading judge model' >&2\necho 'FATAL: out of memory on device 0' >&2\nexit 3\n",
    );
    let cmd = format!("sh '{}'", script.display());
    let e = one_group_error(&cmd, &opts(30.0, 0, 256));
    assert!(e.contains(&cmd), "{e}");
    assert!(e.contains("exited with status 3"), "{e}");
    assert!(e.contains("FATAL: out of memory on device 0"), "{e}");
    assert!(e.contains("loading judge model"), "{e}");
    assert!(e.contains("its only try"), "{e}");

    let e = one_group_error("no-such-judge-command-xyz --flag", &opts(30.0, 0, 256));
    assert!(e.contains("exited with status 127"), "{e}");
    assert!(e.contains("not found"), "{e}");

    let e = one_group_error("kill -9 $$", &opts(30.0, 0, 256));
    assert!(e.contains("killed by signal 9"), "{e}");
}

#[test]
fn long_stderr_is_cut_to_its_last_lines() {
    let cmd = r#"python3 -c 'import sys
for i in range(5000): print("noise line %d" % i, file=sys.stderr)
sys.exit(1)'"#;
    let e = one_group_error(cmd, &opts(30.0, 0, 256));
    assert!(e.contains("noise line 4999"), "{e}");
    assert!(!e.contains("noise line 0\n"), "{e}");
    assert!(e.len() < 3000, "{} chars", e.len());
}

/// Running state of a process from /proc, or None if there is no such process.
fn proc_state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn a_hanging_command_times_out_and_is_killed() {
    let tmp = TempDir::new().unwrap();
    let pids = tmp.path().join("pids");
    // The shell forks `sleep` (it has more to do after), so killing the shell alone would
    // leave `sleep` holding our pipes open for 30 s.
    let cmd = format!(
        "echo $$ > '{0}'; sleep 30 & echo $! >> '{0}'; wait; echo done",
        pids.display()
    );
    let start = Instant::now();
    let e = one_group_error(&cmd, &opts(0.5, 0, 256));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(e.contains("timed out after 0.5 s"), "{e}");
    // The shell was reaped (no zombie left behind) and its `sleep` was killed.
    let pids = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(
        proc_state(pids[0]),
        None,
        "the command's shell is still there"
    );
    // SIGKILL is delivered asynchronously: give a busy machine a moment to finish it off.
    let gone = |pid: &str| matches!(proc_state(pid), None | Some('Z'));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pids[1]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone(pids[1]),
        "sleep is still running: {:?}",
        proc_state(pids[1])
    );

    // A background child that keeps stdout open after the command exits.
    let start = Instant::now();
    let e = one_group_error("sleep 30 & echo started", &opts(0.5, 0, 256));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(e.contains("timed out after 0.5 s"), "{e}");
    assert!(e.contains("kept its output open"), "{e}");
}

#[test]
fn a_command_that_reads_nothing_does_not_block_us() {
    // 2 x 1 MB of requests, far beyond a pipe's buffer, to a command that never reads them.
    let big = "x".repeat(1 << 20);
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec![&big, &big],
    }];
    let mut judge = PointwiseCommand::new(
        r#"printf '{"score": 1}\n{"score": 2}\n'"#,
        &opts(30.0, 0, 256),
    )
    .unwrap();
    assert_eq!(judge.score(&groups, &|_| {}).unwrap(), vec![vec![1.0, 2.0]]);
}

#[test]
fn garbage_answers_are_rejected_with_the_line_quoted() {
    let o = opts(30.0, 0, 256);
    let drain = "cat > /dev/null; ";

    let e = one_group_error(&format!("{drain}echo '{{\"score\": 1}}'; echo 'Sure! Here is my score: 7'; echo '{{\"score\": 3}}'"), &o);
    assert!(e.contains("answer line 2 of 3 is not valid JSON"), "{e}");
    assert!(e.contains("Sure! Here is my score: 7"), "{e}");

    let e = one_group_error(&format!("{drain}echo '{{\"score\": 1}}'"), &o);
    assert!(e.contains("answered 1 line for 3 requests"), "{e}");

    let e = one_group_error(
        &format!("{drain}for i in 1 2 3 4; do echo '{{\"score\": 1}}'; done"),
        &o,
    );
    assert!(e.contains("answered 4 lines for 3 requests"), "{e}");

    let e = one_group_error(
        &format!("{drain}for i in 1 2 3; do echo '{{\"scor\": 1}}'; done"),
        &o,
    );
    assert!(
        e.contains("answer line 1 of 3 has no \"score\" field"),
        "{e}"
    );
    assert!(e.contains(r#"{"scor": 1}"#), "{e}");

    let e = one_group_error(
        &format!("{drain}for i in 1 2 3; do echo '{{\"score\": \"NaN\"}}'; done"),
        &o,
    );
    assert!(e.contains("not a number"), "{e}");

    let e = one_group_error(
        &format!("{drain}for i in 1 2 3; do echo '{{\"score\": 1e999}}'; done"),
        &o,
    );
    assert!(e.contains("answer line 1 of 3"), "{e}");

    // A long bad line is quoted in part.
    let e = one_group_error(
        &format!("{drain}python3 -c 'print(\"y\" * 5000); print(1); print(2)'"),
        &o,
    );
    assert!(e.contains("answer line 1 of 3 is not valid JSON"), "{e}");
    assert!(e.contains(&format!("{}...", "y".repeat(200))), "{e}");
    assert!(!e.contains(&"y".repeat(201)), "{e}");

    // Pairwise: only "a", "b" or "tie".
    let e = pairwise_error(
        &format!("{drain}echo '{{\"preference\": \"a\"}}'; echo '{{\"preference\": \"A\"}}'"),
        &o,
    );
    assert!(
        e.contains("answer line 2 of 2 has a \"preference\" other than"),
        "{e}"
    );
    let e = pairwise_error(
        &format!("{drain}echo '{{\"preference\": \"a\"}}'; echo '[\"b\"]'"),
        &o,
    );
    assert!(e.contains("answer line 2 of 2 is not a JSON object"), "{e}");
}

#[test]
fn a_failed_run_is_retried() {
    let tmp = TempDir::new().unwrap();
    let marker = tmp.path().join("marker");
    let script = write_script(
        tmp.path(),
        "flaky.py",
        r#"
import json, os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    print("transient failure", file=sys.stderr)
    sys.exit(1)
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({"preference": "a" if len(r["response_a"]) > len(r["response_b"]) else "b"}))
"#,
    );
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["a", "bb"],
    }];
    let mut judge =
        PairwiseCommand::new(&python(&script, &[&marker]), &opts(30.0, 1, 256)).unwrap();
    let battles: Vec<_> = [("a", "bb"), ("bb", "a")]
        .iter()
        .map(|&(first, second)| tpo_engine::tpo::judge::Battle {
            source: &s,
            instruction: "x",
            first,
            second,
        })
        .collect();
    use tpo_engine::tpo::judge::Preference::{First, Second};
    assert_eq!(
        judge.compare(&battles, &|_| {}).unwrap(),
        vec![Second, First]
    );

    // Without retries the same first failure stops the run.
    std::fs::remove_file(&marker).unwrap();
    let mut judge = EloJudge::new(
        PairwiseCommand::new(&python(&script, &[&marker]), &opts(30.0, 0, 256)).unwrap(),
    );
    let e = format!("{:#}", judge.score(&groups, &|_| {}).unwrap_err());
    assert!(
        e.contains("transient failure") && e.contains("exited with status 1"),
        "{e}"
    );
}

#[test]
fn a_command_that_always_fails_is_tried_retries_plus_one_times() {
    let tmp = TempDir::new().unwrap();
    let count = tmp.path().join("count");
    let cmd = format!(
        "echo run >> '{}'; echo 'judge is broken' >&2; exit 2",
        count.display()
    );
    let e = one_group_error(&cmd, &opts(30.0, 2, 256));
    assert_eq!(lines_in(&count), 3);
    assert!(e.contains("all 3 tries"), "{e}");
    assert!(e.contains("exited with status 2"), "{e}");
    assert!(e.contains("judge is broken"), "{e}");
    assert!(e.contains("try 1: it exited with status 2"), "{e}");
    assert!(e.contains("try 2: it exited with status 2"), "{e}");

    // Each batch is retried on its own: two batches of 2 and 1, the second failing always.
    let count = tmp.path().join("count2");
    let cmd = format!(
        "n=$(wc -l); echo run >> '{}'; [ \"$n\" -eq 2 ] || exit 5; echo '{{\"score\": 1}}'; echo '{{\"score\": 1}}'",
        count.display()
    );
    let s = source(0.0);
    let groups = vec![JudgeGroup {
        source: &s,
        instruction: "x",
        responses: vec!["a", "b", "c"],
    }];
    let mut judge = PointwiseCommand::new(&cmd, &opts(30.0, 1, 2)).unwrap();
    let reported = RefCell::new(Vec::new());
    let e = format!(
        "{:#}",
        judge
            .score(&groups, &|n| reported.borrow_mut().push(n))
            .unwrap_err()
    );
    assert_eq!(*reported.borrow(), vec![2]);
    assert_eq!(lines_in(&count), 3);
    assert!(
        e.contains("a run of 1 request)") && e.contains("status 5"),
        "{e}"
    );
}

#[test]
fn bad_options_are_refused_before_anything_runs() {
    for (spec, o, want) in [
        ("cmd:   ", JudgeOptions::default(), "nothing after"),
        ("cmd:true", opts(0.0, 0, 1), "timeout"),
        ("pairwise-cmd:true", opts(f64::NAN, 0, 1), "timeout"),
        ("cmd:true", opts(1.0, 0, 0), "batch size"),
    ] {
        let e = format!("{:#}", open_judge(spec, &o).err().expect("should fail"));
        assert!(e.contains(want), "{spec}: {e}");
    }
    let e = PointwiseCommand::new(" \t", &JudgeOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("empty"), "{e}");
}
