//! An external judge command, fed JSONL on stdin and answering JSONL on stdout.
//!
//! `--judge cmd:COMMAND` (pointwise) and `--judge pairwise-cmd:COMMAND` (pairwise) run
//! `sh -c COMMAND`. Each run of the command gets a batch of requests, one JSON object per
//! line on its stdin (at most `batch_size` of them, default 256), and must write one JSON
//! answer per line to its stdout, in the same order, then exit with status 0. Stdin is closed
//! after the last request. Blank lines at the end of stdout are ignored; anything the command
//! writes to stderr is kept for error messages. The command may be run many times per
//! iteration, so it should not keep state between runs.
//!
//! **Pointwise** (`cmd:`): one request per response,
//! ```text
//! {"instruction": "...", "response": "...", "prompt": {...}}
//! ```
//! answered by `{"score": 7.5}` (any finite JSON number; higher is better). `prompt` is the
//! prompt's line from the prompts file, as given (its `"prompt"` or `"messages"`, and any
//! other fields, such as a reference answer).
//!
//! **Pairwise** (`pairwise-cmd:`): one request per battle of two responses to the same
//! instruction,
//! ```text
//! {"instruction": "...", "response_a": "...", "response_b": "...", "prompt": {...}}
//! ```
//! answered by `{"preference": "a"}`, `{"preference": "b"}` or `{"preference": "tie"}`
//! (exactly these strings). Every pair is asked in both orders and the answers are turned into
//! scores by ELO (see [`super::elo`]).
//!
//! Answers may carry other fields (a rationale, say); they are ignored. The thought is never
//! sent, only the response.
//!
//! A run fails when the command cannot be started, exits with a non-zero status, takes longer
//! than `timeout_secs` (it is then killed, with everything it started: the command runs in a
//! process group of its own), answers with a different number of lines than it was sent, or
//! writes an answer that is not JSON of the shape above. A failed run is retried, with the
//! same requests, up to `retries` more times; if every try fails the run stops with an error
//! that names the command, says what went wrong, and quotes the end of its stderr.

use super::{Battle, Judge, JudgeGroup, JudgeOptions, PairwiseJudge, Preference};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest quote of a bad answer line, in characters.
const LINE_QUOTE_CHARS: usize = 200;
/// Longest quote of the command's stderr, in characters.
const STDERR_QUOTE_CHARS: usize = 2000;
/// How long to wait for the command's output pipes to close once it was killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A judge command and how to run it; shared by both protocols.
#[derive(Clone, Debug)]
struct Runner {
    command: String,
    timeout: Duration,
    retries: usize,
    batch_size: usize,
}

/// Why one try failed: a one-line summary, and the command's stderr.
struct TryError {
    summary: String,
    stderr: String,
}

impl Runner {
    fn new(command: &str, opts: &JudgeOptions) -> Result<Self> {
        if command.trim().is_empty() {
            bail!("judge command is empty");
        }
        let t = opts.timeout_secs;
        if !(t > 0.0 && t.is_finite()) {
            bail!(
                "judge command `{command}`: timeout must be a positive number of seconds, got {t}"
            );
        }
        let Ok(timeout) = Duration::try_from_secs_f64(t) else {
            bail!("judge command `{command}`: timeout of {t} s is too large");
        };
        if opts.batch_size == 0 {
            bail!("judge command `{command}`: batch size must be at least 1");
        }
        Ok(Runner {
            command: command.to_string(),
            timeout,
            retries: opts.retries,
            batch_size: opts.batch_size,
        })
    }

    /// All requests, `batch_size` per run, each run retried as needed; `parse` reads one
    /// answer (or says what is wrong with it). Progress is told after each successful run.
    fn call_all<R: Serialize, T>(
        &self,
        requests: &[R],
        parse: impl Fn(&Value) -> std::result::Result<T, String>,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(self.batch_size) {
            let mut input = Vec::new();
            for r in chunk {
                serde_json::to_writer(&mut input, r)?;
                input.push(b'\n');
            }
            out.extend(self.call(&input, chunk.len(), &parse)?);
            progress(chunk.len());
        }
        Ok(out)
    }

    /// One batch, with retries.
    fn call<T>(
        &self,
        input: &[u8],
        n: usize,
        parse: &impl Fn(&Value) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        let tries = self.retries.saturating_add(1);
        let mut failures: Vec<TryError> = Vec::new();
        for attempt in 1..=tries {
            match self.try_once(input, n, parse) {
                Ok(answers) => return Ok(answers),
                Err(e) => {
                    if attempt < tries {
                        eprintln!(
                            "judge command `{}`: try {attempt} of {tries} failed ({}); retrying",
                            quote(&self.command, LINE_QUOTE_CHARS),
                            e.summary
                        );
                    }
                    failures.push(e);
                }
            }
        }
        let last = failures.pop().expect("at least one try");
        let mut msg = format!(
            "judge command `{}` failed on {} (a run of {n} request{}): {}",
            quote(&self.command, LINE_QUOTE_CHARS),
            if tries == 1 {
                "its only try".to_string()
            } else {
                format!("all {tries} tries")
            },
            if n == 1 { "" } else { "s" },
            last.summary
        );
        let stderr = last.stderr.trim_end();
        if stderr.is_empty() {
            msg.push_str("\nits stderr was empty");
        } else {
            msg.push_str("\nits stderr ended with:\n");
            msg.push_str(&tail(stderr, STDERR_QUOTE_CHARS));
        }
        if !failures.is_empty() {
            msg.push_str("\nearlier tries:");
            for (i, f) in failures.iter().enumerate() {
                msg.push_str(&format!("\n  try {}: {}", i + 1, f.summary));
            }
        }
        Err(anyhow!(msg))
    }

    /// One run of the command on `n` requests.
    fn try_once<T>(
        &self,
        input: &[u8],
        n: usize,
        parse: &impl Fn(&Value) -> std::result::Result<T, String>,
    ) -> std::result::Result<Vec<T>, TryError> {
        let run = self.run(input.to_vec())?;
        let fail = |summary: String| TryError {
            summary,
            stderr: run.stderr.clone(),
        };
        parse_answers(&run.stdout, n, parse).map_err(fail)
    }

    /// Runs the command once on `input`: its stdout and stderr if it exits with status 0
    /// within the timeout.
    fn run(&self, input: Vec<u8>) -> std::result::Result<RunOutput, TryError> {
        let no_stderr = |summary: String| TryError {
            summary,
            stderr: String::new(),
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| no_stderr(format!("it could not be started with `sh -c`: {e}")))?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let pid = child.id();

        // Feed stdin on a thread of its own, so a command that does not read cannot block us.
        // A command that exits without reading everything makes this fail: that is fine.
        let mut stdin = child.stdin.take().expect("piped stdin");
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let stdout = reader(child.stdout.take().expect("piped stdout"));
        let stderr = reader(child.stderr.take().expect("piped stderr"));
        let (status_tx, status_rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = status_tx.send(child.wait());
        });

        let remaining = || deadline.saturating_duration_since(Instant::now());
        let mut timed_out = false;
        let status = match status_rx.recv_timeout(remaining()) {
            Ok(s) => Some(s),
            Err(_) => {
                timed_out = true;
                kill_group(pid);
                // The waiter reaps the command, so it does not linger as a zombie.
                status_rx.recv_timeout(KILL_GRACE).ok()
            }
        };
        // The command may have exited while something it started still holds its output open.
        let mut collect = |rx: &mpsc::Receiver<Vec<u8>>| -> Vec<u8> {
            if !timed_out {
                // (A moment's grace: the pipes close as it exits, and the reader may lag.)
                if let Ok(b) = rx.recv_timeout(remaining().max(Duration::from_millis(100))) {
                    return b;
                }
                timed_out = true;
                kill_group(pid);
            }
            rx.recv_timeout(KILL_GRACE).unwrap_or_default()
        };
        let out = collect(&stdout);
        let err = collect(&stderr);
        let stderr = String::from_utf8_lossy(&err).into_owned();
        let fail = |summary: String| TryError {
            summary,
            stderr: stderr.clone(),
        };
        if timed_out {
            let secs = self.timeout.as_secs_f64();
            return Err(fail(match status {
                Some(Ok(s)) if !was_killed(&s) => format!(
                    "it timed out after {secs} s: it {}, but something it started kept its output open and was killed",
                    describe_status(&s)
                ),
                _ => format!("it timed out after {secs} s and was killed"),
            }));
        }
        let status = match status {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(fail(format!("waiting for it failed: {e}"))),
            None => return Err(fail("it could not be waited for".to_string())),
        };
        if !status.success() {
            return Err(fail(format!("it {}", describe_status(&status))));
        }
        Ok(RunOutput {
            stdout: out,
            stderr,
        })
    }
}

struct RunOutput {
    stdout: Vec<u8>,
    stderr: String,
}

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn reader(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn was_killed(status: &ExitStatus) -> bool {
    status.signal() == Some(SIGKILL)
}

fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended with {status}"),
    }
}

const SIGKILL: i32 = 9;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// SIGKILL to the process group led by `pid` (the command and everything it started).
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The group
            // exists while any of its members does; if none is left this fails with ESRCH,
            // which is what we want.
            unsafe {
                kill(-pid, SIGKILL);
            }
        }
    }
}

/// A judge command's stdout as `n` answers, one JSON line each (trailing blank lines and
/// `\r` line ends ignored), each read by `parse`; or what is wrong with it, quoting the
/// line at fault.
pub fn parse_answers<T>(
    stdout: &[u8],
    n: usize,
    parse: &impl Fn(&Value) -> std::result::Result<T, String>,
) -> std::result::Result<Vec<T>, String> {
    let stdout = String::from_utf8_lossy(stdout);
    let mut lines: Vec<&str> = stdout
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    if lines.len() != n {
        let mut s = format!(
            "it answered {} line{} for {n} request{} (one answer line per request line is expected)",
            lines.len(),
            if lines.len() == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" },
        );
        if let Some(first) = lines.first() {
            s.push_str(&format!(
                "; its first line: {}",
                quote(first, LINE_QUOTE_CHARS)
            ));
        }
        return Err(s);
    }
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        let problem = match serde_json::from_str::<Value>(line) {
            Err(e) => format!("is not valid JSON ({e})"),
            Ok(v) => match parse(&v) {
                Ok(t) => {
                    out.push(t);
                    continue;
                }
                Err(e) => e,
            },
        };
        return Err(format!(
            "answer line {} of {n} {problem}: {}",
            i + 1,
            quote(line, LINE_QUOTE_CHARS)
        ));
    }
    Ok(out)
}

/// Pointwise answers: a finite "score" each.
pub fn parse_scores(stdout: &[u8], n: usize) -> std::result::Result<Vec<f64>, String> {
    parse_answers(stdout, n, &parse_score)
}

/// Pairwise answers: a "preference" of "a", "b" or "tie" each.
pub fn parse_preferences(stdout: &[u8], n: usize) -> std::result::Result<Vec<Preference>, String> {
    parse_answers(stdout, n, &parse_preference)
}

/// `s` without trailing whitespace, cut to `max` characters.
fn quote(s: &str, max: usize) -> String {
    let s = s.trim_end();
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

/// The last lines of `s`, at most about `max` characters, indented.
fn tail(s: &str, max: usize) -> String {
    let count = s.chars().count();
    let mut t: &str = s;
    let mut cut = false;
    if count > max {
        let skip = count - max;
        let at = s.char_indices().nth(skip).map_or(s.len(), |(i, _)| i);
        t = &s[at..];
        // Start at a line boundary where there is one.
        if let Some(nl) = t.find('\n') {
            t = &t[nl + 1..];
        }
        cut = true;
    }
    let mut out = String::new();
    if cut {
        out.push_str("  ...\n");
    }
    for (i, line) in t.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("  ");
        out.push_str(line);
    }
    out
}

/// A number, finite, under "score".
fn parse_score(v: &Value) -> std::result::Result<f64, String> {
    let Some(obj) = v.as_object() else {
        return Err("is not a JSON object like {\"score\": 1.0}".into());
    };
    match obj.get("score") {
        None => Err("has no \"score\" field".into()),
        Some(Value::Number(x)) => match x.as_f64() {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err("has a \"score\" that is not a finite number".into()),
        },
        Some(_) => Err("has a \"score\" that is not a number".into()),
    }
}

/// "a", "b" or "tie" under "preference".
fn parse_preference(v: &Value) -> std::result::Result<Preference, String> {
    let Some(obj) = v.as_object() else {
        return Err("is not a JSON object like {\"preference\": \"a\"}".into());
    };
    match obj.get("preference") {
        None => Err("has no \"preference\" field".into()),
        Some(Value::String(s)) if s == "a" => Ok(Preference::First),
        Some(Value::String(s)) if s == "b" => Ok(Preference::Second),
        Some(Value::String(s)) if s == "tie" => Ok(Preference::Tie),
        Some(_) => Err("has a \"preference\" other than \"a\", \"b\" or \"tie\"".into()),
    }
}

#[derive(Serialize)]
struct PointwiseRequest<'a> {
    instruction: &'a str,
    response: &'a str,
    prompt: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct PairwiseRequest<'a> {
    instruction: &'a str,
    response_a: &'a str,
    response_b: &'a str,
    prompt: &'a Map<String, Value>,
}

/// A pointwise judge command (`--judge cmd:COMMAND`): one score per response.
pub struct PointwiseCommand {
    runner: Runner,
}

impl PointwiseCommand {
    /// Checks the command and options; starts nothing.
    pub fn new(command: &str, opts: &JudgeOptions) -> Result<Self> {
        Ok(PointwiseCommand {
            runner: Runner::new(command, opts)?,
        })
    }
}

impl Judge for PointwiseCommand {
    fn describe(&self) -> String {
        format!("command `{}` (pointwise)", self.runner.command)
    }

    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>> {
        let requests: Vec<PointwiseRequest> = groups
            .iter()
            .flat_map(|g| {
                g.responses.iter().map(|r| PointwiseRequest {
                    instruction: g.instruction,
                    response: r,
                    prompt: g.source,
                })
            })
            .collect();
        let scores = self.runner.call_all(&requests, parse_score, progress)?;
        let mut it = scores.into_iter();
        Ok(groups
            .iter()
            .map(|g| it.by_ref().take(g.responses.len()).collect())
            .collect())
    }
}

/// A pairwise judge command (`--judge pairwise-cmd:COMMAND`): one preference per battle.
pub struct PairwiseCommand {
    runner: Runner,
}

impl PairwiseCommand {
    /// Checks the command and options; starts nothing.
    pub fn new(command: &str, opts: &JudgeOptions) -> Result<Self> {
        Ok(PairwiseCommand {
            runner: Runner::new(command, opts)?,
        })
    }
}

impl PairwiseJudge for PairwiseCommand {
    fn describe(&self) -> String {
        format!("command `{}` (pairwise)", self.runner.command)
    }

    fn compare(&mut self, battles: &[Battle], progress: &dyn Fn(usize)) -> Result<Vec<Preference>> {
        let requests: Vec<PairwiseRequest> = battles
            .iter()
            .map(|b| PairwiseRequest {
                instruction: b.instruction,
                response_a: b.first,
                response_b: b.second,
                prompt: b.source,
            })
            .collect();
        self.runner.call_all(&requests, parse_preference, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_are_checked() {
        let ok = JudgeOptions::default();
        assert!(PointwiseCommand::new("cat", &ok).is_ok());
        let err = |cmd: &str, opts: JudgeOptions| {
            PairwiseCommand::new(cmd, &opts)
                .err()
                .expect("should fail")
                .to_string()
        };
        assert!(err("  ", ok.clone()).contains("empty"));
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = err(
                "cat",
                JudgeOptions {
                    timeout_secs: t,
                    ..ok.clone()
                },
            );
            assert!(e.contains("timeout"), "{e}");
        }
        let e = err(
            "cat",
            JudgeOptions {
                timeout_secs: 1e300,
                ..ok.clone()
            },
        );
        assert!(e.contains("too large"), "{e}");
        let e = err(
            "cat",
            JudgeOptions {
                batch_size: 0,
                ..ok.clone()
            },
        );
        assert!(e.contains("batch size"), "{e}");
    }

    #[test]
    fn answers_are_parsed_strictly() {
        assert_eq!(parse_score(&json!({"score": 2.5, "why": "ok"})), Ok(2.5));
        assert_eq!(parse_score(&json!({"score": -3})), Ok(-3.0));
        assert!(parse_score(&json!({"score": "2"})).is_err());
        assert!(parse_score(&json!({"scores": 2})).is_err());
        assert!(parse_score(&json!({"score": null})).is_err());
        assert!(parse_score(&json!([2])).is_err());
        assert_eq!(
            parse_preference(&json!({"preference": "a"})),
            Ok(Preference::First)
        );
        assert_eq!(
            parse_preference(&json!({"preference": "b"})),
            Ok(Preference::Second)
        );
        assert_eq!(
            parse_preference(&json!({"preference": "tie"})),
            Ok(Preference::Tie)
        );
        for bad in [
            json!({"preference": "A"}),
            json!({"preference": 1}),
            json!({}),
            json!("a"),
        ] {
            assert!(parse_preference(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quotes_are_cut() {
        assert_eq!(quote("short\n", 200), "short");
        let long = "é".repeat(300);
        let q = quote(&long, 200);
        assert_eq!(q.chars().count(), 203);
        assert!(q.ends_with("..."));
        let err: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let t = tail(&err, 2000);
        assert!(t.starts_with("  ...\n  line "), "{}", &t[..30]);
        assert!(t.ends_with("  line 999"));
        assert!(t.len() < 2000 + 3 * 300);
        assert_eq!(tail("a\nb", 2000), "  a\n  b");
    }
}
