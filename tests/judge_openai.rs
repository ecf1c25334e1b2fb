//! `openai:` judges against a chat-completions server on 127.0.0.1 that each test starts:
//! it plays a judge that prefers longer responses, and can be told to fail (500s, 429s,
//! slow answers, garbage, a closed connection, a body that is not a chat completion).

mod common;

use common::http::{read_request, reply};
use common::{chat_fixture, jsonl, s, write};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tpo_engine::tpo::judge::{
    open_judge, Judge, JudgeGroup, JudgeMode, JudgeOptions, LlmJudgeOptions,
};

/// What the server does with the next chat request, instead of judging it.
#[derive(Clone, Debug)]
enum Fault {
    /// This HTTP status, with an error body.
    Status(u16),
    /// 429 with "Retry-After: 0".
    TooMany,
    /// Close the connection without a word.
    Close,
    /// 200 with a body that is not a chat completion.
    NotChat,
    /// A chat completion whose text holds no score and no verdict.
    Garbage,
    /// Wait, then judge.
    Slow(Duration),
    /// A chat completion whose message has no text (content null).
    Empty,
    /// A chat completion cut at max_tokens (finish_reason "length") that holds a score.
    Cut,
}

/// One chat request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    auth: String,
    body: Value,
}

#[derive(Clone)]
struct Server {
    url: String,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    /// Every judged answer waits this long (to see requests overlap).
    delay: Duration,
}

impl Server {
    /// A server listing `models` at /v1/models.
    fn start(models: &[&str], delay: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server {
            url: format!("http://{}/v1", listener.local_addr().unwrap()),
            faults: Default::default(),
            seen: Default::default(),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
            delay,
        };
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        let s = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, models) = (s.clone(), models.clone());
                std::thread::spawn(move || s.serve(stream, &models));
            }
        });
        server
    }

    fn fail_next(&self, faults: &[Fault]) {
        self.faults.lock().unwrap().extend(faults.iter().cloned());
    }

    fn chats(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn serve(&self, stream: TcpStream, models: &[String]) {
        let Some(request) = read_request(&stream) else {
            return;
        };
        let (path, auth) = (
            request.path.as_str(),
            request.header("authorization").unwrap_or("").to_string(),
        );
        let reply = |status: &str, headers: &str, body: &str| {
            let headers = format!("Content-Type: application/json\r\n{headers}");
            reply(&stream, &request.method, status, &headers, body.as_bytes());
        };
        if path == "/v1/models" {
            let data: Vec<Value> = models
                .iter()
                .map(|m| json!({"id": m, "object": "model"}))
                .collect();
            return reply(
                "200 OK",
                "",
                &json!({"object": "list", "data": data}).to_string(),
            );
        }
        if path != "/v1/chat/completions" {
            return reply("404 Not Found", "", "{\"error\": \"no such route\"}");
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        self.seen.lock().unwrap().push(Seen {
            auth,
            body: body.clone(),
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let fault = self.faults.lock().unwrap().pop_front();
        let chat = |text: &str| {
            json!({"id": "x", "object": "chat.completion", "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}]})
            .to_string()
        };
        match fault {
            Some(Fault::Status(code)) => {
                reply(&format!("{code} Failing"), "", "{\"error\": \"it broke\"}")
            }
            Some(Fault::TooMany) => reply(
                "429 Too Many Requests",
                "Retry-After: 0\r\n",
                "{\"error\": \"slow down\"}",
            ),
            Some(Fault::Close) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            Some(Fault::NotChat) => reply("200 OK", "", "<html>a proxy's page</html>"),
            Some(Fault::Garbage) => {
                reply("200 OK", "", &chat("Both have merits; I cannot decide."))
            }
            Some(Fault::Empty) => {
                let mut v: Value = serde_json::from_str(&chat("")).unwrap();
                v["choices"][0]["message"]["content"] = Value::Null;
                reply("200 OK", "", &v.to_string())
            }
            Some(Fault::Cut) => {
                let mut v: Value = serde_json::from_str(&chat("Draft: Score: 9, but")).unwrap();
                v["choices"][0]["finish_reason"] = json!("length");
                reply("200 OK", "", &v.to_string())
            }
            Some(Fault::Slow(d)) => {
                std::thread::sleep(d);
                reply("200 OK", "", &chat(&judge(&body)))
            }
            None => {
                std::thread::sleep(self.delay);
                reply("200 OK", "", &chat(&judge(&body)))
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The text between `start` and the first `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map(|i| i + start.len()).expect(start);
    let to = text[from..].find(end).map(|i| from + i).expect(end);
    &text[from..to]
}

/// The played judge: longer is better. It reads the built-in prompts' sections.
fn judge(request: &Value) -> String {
    let content = request["messages"][0]["content"].as_str().unwrap_or("");
    if content.contains("[Response A]\n") {
        let a = between(content, "[Response A]\n", "\n\n[Response B]\n")
            .chars()
            .count();
        let b = between(content, "[Response B]\n", "\n\nFirst compare")
            .chars()
            .count();
        let v = if a > b {
            "A"
        } else if b > a {
            "B"
        } else {
            "tie"
        };
        format!("Comparing length and substance.\nVerdict: [[{v}]]")
    } else {
        let r = between(content, "[Response]\n", "\n\nFirst explain")
            .chars()
            .count();
        if content.contains("as JSON") {
            json!({"reason": "length", "score": r}).to_string()
        } else {
            format!("It answers at length.\n**Score:** {r}")
        }
    }
}

fn options(
    mode: JudgeMode,
    model: Option<&str>,
    retries: usize,
    timeout_secs: f64,
) -> JudgeOptions {
    JudgeOptions {
        timeout_secs,
        retries,
        llm: LlmJudgeOptions {
            model: model.map(str::to_string),
            mode,
            concurrency: 1,
            api_key_env: "TPO_TEST_UNSET_KEY".into(),
            backoff_secs: 0.05,
            ..LlmJudgeOptions::default()
        },
        ..JudgeOptions::default()
    }
}

fn source() -> Map<String, Value> {
    json!({"prompt": "Describe a river."})
        .as_object()
        .unwrap()
        .clone()
}

fn score(judge: &mut dyn Judge, responses: &[&str]) -> anyhow::Result<Vec<f64>> {
    let source = source();
    let groups = [JudgeGroup {
        source: &source,
        instruction: "Describe a river.",
        responses: responses.to_vec(),
    }];
    Ok(judge.score(&groups, &|_| {})?.remove(0))
}

#[test]
fn pointwise_scores_come_from_the_answers_of_the_only_served_model() {
    let server = Server::start(&["judge-70b"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}/", server.url),
        &options(JudgeMode::Pointwise, None, 0, 10.0),
    )
    .unwrap();
    assert!(
        judge.describe().contains("judge-70b"),
        "{}",
        judge.describe()
    );
    let scores = score(judge.as_mut(), &["wide", "a wide brown river", "wet"]).unwrap();
    assert_eq!(scores, vec![4.0, 18.0, 3.0]);
    let chats = server.chats();
    assert_eq!(chats.len(), 3);
    for c in &chats {
        assert_eq!(c.body["model"], "judge-70b");
        assert_eq!(c.body["temperature"], 0.0);
        assert_eq!(c.auth, "", "no key is sent when its variable is unset");
        let content = c.body["messages"][0]["content"].as_str().unwrap();
        assert!(
            content.contains("[Instruction]\nDescribe a river.\n"),
            "{content}"
        );
    }
}

#[test]
fn pairwise_verdicts_in_both_orders_become_elo_scores() {
    let server = Server::start(&["a", "b"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pairwise, Some("b"), 0, 10.0),
    )
    .unwrap();
    let scores = score(judge.as_mut(), &["mid one", "the longest one", "x"]).unwrap();
    assert!(scores[1] > scores[0] && scores[0] > scores[2], "{scores:?}");
    assert!(scores.iter().sum::<f64>().abs() < 1e-9);
    let chats = server.chats();
    assert_eq!(chats.len(), 6, "every ordered pair once");
    let shown: Vec<(String, String)> = chats
        .iter()
        .map(|c| {
            let t = c.body["messages"][0]["content"].as_str().unwrap();
            (
                between(t, "[Response A]\n", "\n\n").to_string(),
                between(t, "[Response B]\n", "\n\n").to_string(),
            )
        })
        .collect();
    assert!(
        shown.contains(&("x".into(), "mid one".into()))
            && shown.contains(&("mid one".into(), "x".into()))
    );
}

#[test]
fn without_a_model_name_a_server_serving_several_is_an_error_naming_them() {
    let server = Server::start(&["m1", "m2"], Duration::ZERO);
    let e = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pointwise, None, 0, 10.0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("2 models (m1, m2)") && e.contains("--judge-model"),
        "{e}"
    );
    let e = open_judge(
        "openai:localhost:8000",
        &options(JudgeMode::Pointwise, Some("m"), 0, 10.0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("http://"), "{e}");
}

#[test]
fn failed_requests_are_retried_until_one_answers() {
    let server = Server::start(&["j"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pointwise, Some("j"), 5, 0.5),
    )
    .unwrap();
    server.fail_next(&[
        Fault::Status(500),
        Fault::TooMany,
        Fault::Close,
        Fault::NotChat,
        Fault::Slow(Duration::from_secs(2)),
    ]);
    let start = Instant::now();
    assert_eq!(score(judge.as_mut(), &["abc"]).unwrap(), vec![3.0]);
    assert_eq!(server.chats().len(), 6, "five failures, then the answer");
    // Backoff 0.05 s doubling over four pauses (the 429 says 0 s), plus the 0.5 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_request_failing_every_try_stops_the_scoring_with_what_each_try_met() {
    let server = Server::start(&["j"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pointwise, Some("j"), 2, 10.0),
    )
    .unwrap();
    server.fail_next(&[Fault::Status(503), Fault::Status(502), Fault::Status(500)]);
    let e = format!("{:#}", score(judge.as_mut(), &["abc"]).unwrap_err());
    assert!(e.contains("all 3 tries failed"), "{e}");
    for status in ["HTTP 503", "HTTP 502", "HTTP 500"] {
        assert!(e.contains(status), "{e}");
    }
    assert_eq!(server.chats().len(), 3);
}

#[test]
fn a_refused_request_is_not_retried() {
    let server = Server::start(&["j"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pointwise, Some("j"), 3, 10.0),
    )
    .unwrap();
    server.fail_next(&[Fault::Status(401)]);
    let e = format!("{:#}", score(judge.as_mut(), &["abc"]).unwrap_err());
    assert!(
        e.contains("HTTP 401") && e.contains("$TPO_TEST_UNSET_KEY is not set"),
        "{e}"
    );
    assert_eq!(server.chats().len(), 1);
    server.fail_next(&[Fault::Status(400)]);
    let e = format!("{:#}", score(judge.as_mut(), &["abc"]).unwrap_err());
    assert!(e.contains("HTTP 400") && e.contains("it broke"), "{e}");
    assert_eq!(server.chats().len(), 2);
    // A refused request stops the others, even one waiting to retry: with 2 in flight and
    // 12 to judge, one meets a 500 and waits, the other a 400; the waiting one sends no
    // retry (it would meet three more 500s), and nothing else is sent.
    let server = Server::start(&["j"], Duration::from_millis(100));
    let mut opts = options(JudgeMode::Pointwise, Some("j"), 3, 10.0);
    opts.llm.concurrency = 2;
    opts.llm.backoff_secs = 0.3;
    let mut judge = open_judge(&format!("openai:{}", server.url), &opts).unwrap();
    server.fail_next(&[
        Fault::Status(500),
        Fault::Status(400),
        Fault::Status(500),
        Fault::Status(500),
        Fault::Status(500),
    ]);
    let responses: Vec<&str> = vec!["x"; 12];
    assert!(score(judge.as_mut(), &responses).is_err());
    assert_eq!(server.chats().len(), 2);
}

#[test]
fn an_unreadable_answer_is_asked_again_then_reported_never_guessed() {
    let server = Server::start(&["j"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pointwise, Some("j"), 2, 10.0),
    )
    .unwrap();
    // Once unreadable, then read: asked again at a temperature above 0.
    server.fail_next(&[Fault::Garbage]);
    assert_eq!(score(judge.as_mut(), &["abcd"]).unwrap(), vec![4.0]);
    let temps: Vec<f64> = server
        .chats()
        .iter()
        .map(|c| c.body["temperature"].as_f64().unwrap())
        .collect();
    assert_eq!(temps.len(), 2);
    assert!(temps[0] == 0.0 && temps[1] > 0.0, "{temps:?}");
    // A message with no text, and an answer cut at max_tokens (whose "Score: 9" is a draft),
    // are unreadable too: asked again, never read.
    server.fail_next(&[Fault::Empty, Fault::Cut]);
    assert_eq!(score(judge.as_mut(), &["abcde"]).unwrap(), vec![5.0]);
    assert_eq!(server.chats().len(), 5);
    // Unreadable on every try: that response is left unscored (NaN), the other scored.
    assert!(judge.leaves_unscored());
    server.fail_next(&[Fault::Garbage, Fault::Garbage, Fault::Garbage]);
    let scores = score(judge.as_mut(), &["abcd", "ab"]).unwrap();
    assert!(scores[0].is_nan() && scores[1] == 2.0, "{scores:?}");

    // Pairwise: the unreadable battle counts as a tie; the other order still decides.
    let server = Server::start(&["j"], Duration::ZERO);
    let mut judge = open_judge(
        &format!("openai:{}", server.url),
        &options(JudgeMode::Pairwise, Some("j"), 2, 10.0),
    )
    .unwrap();
    server.fail_next(&[Fault::Garbage, Fault::Garbage, Fault::Garbage]);
    let scores = score(judge.as_mut(), &["short", "much longer"]).unwrap();
    assert!(scores[1] > scores[0], "{scores:?}");
    assert_eq!(server.chats().len(), 4);
}

#[test]
fn requests_run_concurrently_up_to_the_limit() {
    for (concurrency, most) in [(4usize, 4usize), (1, 1)] {
        let server = Server::start(&["j"], Duration::from_millis(150));
        let mut opts = options(JudgeMode::Pointwise, Some("j"), 0, 10.0);
        opts.llm.concurrency = concurrency;
        let mut judge = open_judge(&format!("openai:{}", server.url), &opts).unwrap();
        let responses: Vec<String> = (1..=8).map(|n| "x".repeat(n)).collect();
        let refs: Vec<&str> = responses.iter().map(String::as_str).collect();
        let start = Instant::now();
        let scores = score(judge.as_mut(), &refs).unwrap();
        assert_eq!(
            scores,
            (1..=8).map(f64::from).collect::<Vec<_>>(),
            "answers back in order"
        );
        assert_eq!(server.most_in_flight.load(Ordering::SeqCst), most);
        if concurrency == 4 {
            assert!(
                start.elapsed() < Duration::from_millis(8 * 150),
                "{:?}",
                start.elapsed()
            );
        }
    }
}

#[test]
fn a_prompt_template_from_a_file_is_filled_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&["j"], Duration::ZERO);
    let mut opts = options(JudgeMode::Pointwise, Some("j"), 0, 10.0);
    opts.llm.prompt = Some("Grade this {not a placeholder}.\n[Instruction]\n{instruction}\n\n[Response]\n{response}\n\nFirst explain, then answer as JSON.".into());
    let mut judge = open_judge(&format!("openai:{}", server.url), &opts).unwrap();
    assert_eq!(score(judge.as_mut(), &["{response}!"]).unwrap(), vec![11.0]);
    let content = server.chats()[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        content.starts_with("Grade this {not a placeholder}.\n[Instruction]\nDescribe a river."),
        "{content}"
    );
    assert!(content.contains("[Response]\n{response}!\n"), "{content}");

    let file = write(
        &tmp.path().join("pairwise.txt"),
        "Which? {instruction} {response}",
    );
    opts.llm.mode = JudgeMode::Pairwise;
    opts.llm.prompt = Some(std::fs::read_to_string(&file).unwrap());
    opts.llm.prompt_file = Some(file.clone());
    let e = open_judge(&format!("openai:{}", server.url), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(s(&file)) && e.contains("lacks {response_a}, {response_b}"),
        "{e}"
    );
    // The openai: options with another kind of judge.
    let e = open_judge("cmd:cat", &opts).err().unwrap().to_string();
    assert!(e.contains("for openai: judges only"), "{e}");
}

fn prompts(dir: &Path) -> std::path::PathBuf {
    let text: String = (0..6)
        .map(|i| format!("{{\"prompt\": \"Tell me about rivers, number {i}.\"}}\n"))
        .collect();
    write(&dir.join("prompts.jsonl"), &text)
}

/// A small direct-mode `train` run judged by `server` (1 iteration of 4 prompts, K 3, 2
/// held out), with `extra` flags and `env`: its stderr, once it has succeeded.
fn small_run(
    tmp: &Path,
    server: &Server,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
        .envs(env.iter().copied())
        .args([
            "--threads",
            "2",
            "train",
            "--model",
            s(&chat_fixture()),
            "--prompts",
        ])
        .arg(prompts(tmp))
        .args([
            "--heldout-prompts",
            "2",
            "--iterations",
            "1",
            "--samples",
            "3",
            "--max-new-tokens",
            "8",
            "--no-thoughts",
            "--batch-size",
            "2",
        ])
        .args(extra)
        .arg("--judge")
        .arg(format!("openai:{}", server.url))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// `train` with a pairwise openai: judge: the key reaches the server and nothing else.
#[test]
fn a_run_judged_by_a_served_model_never_records_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&["judge"], Duration::ZERO);
    let out = tmp.path().join("run");
    let key = "sk-test-5f3a9c-never-written";
    let stderr = small_run(
        tmp.path(),
        &server,
        &out,
        &[
            "--judge-mode",
            "pairwise",
            "--judge-concurrency",
            "3",
            "--judge-max-tokens",
            "333",
            "--judge-api-key-env",
            "TPO_JUDGE_KEY",
        ],
        &[("TPO_JUDGE_KEY", key)],
    );
    assert!(!stderr.contains(key));
    let chats = server.chats();
    // 4 training prompts x 3 x 2 ordered battles, plus the held-out answers of iterations
    // 0 and 1 beside the seed's (2 evaluations x 2 prompts x 2 orders).
    assert_eq!(chats.len(), 4 * 6 + 2 * 2 * 2, "{}", chats.len());
    assert!(chats.iter().all(|c| c.auth == format!("Bearer {key}")));
    assert!(chats.iter().all(|c| c.body["max_tokens"] == 333));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["judge_llm"]["mode"], "pairwise");
    assert_eq!(cfg["judge_llm"]["model"], Value::Null);
    assert_eq!(cfg["judge_llm"]["api_key_env"], "TPO_JUDGE_KEY");
    assert_eq!(cfg["judge_llm"]["max_tokens"], 333);
    let cands = jsonl(&out.join("iter-1/candidates.jsonl"));
    assert!(cands.iter().all(|p| p["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["score"].is_f64())));
    // A pointwise run whose judge cannot be read on the first held-out answer (3 tries):
    // that answer is recorded unscored, left out of the means, and the run goes on.
    let out2 = tmp.path().join("run-pointwise");
    server.fail_next(&[Fault::Garbage, Fault::Garbage, Fault::Garbage]);
    let stderr = small_run(
        tmp.path(),
        &server,
        &out2,
        &["--judge-concurrency", "1", "--judge-model", "judge"],
        &[],
    );
    assert!(
        stderr.contains("1 of 4 answers gave no readable score after 3 tries"),
        "{stderr}"
    );
    let eval = jsonl(&out2.join("iter-0/eval.jsonl"));
    assert_eq!(eval[0]["score"], Value::Null);
    assert_eq!(eval[0]["outcome"], Value::Null);
    assert!(eval[1]["score"].is_f64() && eval[1]["outcome"].is_f64());
    let row: Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("iter-0/summary.json")).unwrap())
            .unwrap();
    assert_eq!(row["heldout_unjudged"], 1);
    assert_eq!(
        row["win_rate"], eval[1]["outcome"],
        "the mean of the one judged line"
    );

    // --resume may change how the served judge is asked (nothing is left to judge here), and
    // a judge of another kind drops the openai: options.
    let resume = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tpo-engine"))
            .args(["train", "--resume", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        cfg
    };
    let cfg = resume(&[
        "--judge-mode",
        "pointwise",
        "--judge-model",
        "judge",
        "--judge-api-key-env",
        "TPO_JUDGE_KEY",
    ]);
    assert_eq!(cfg["judge_llm"]["mode"], "pointwise");
    assert_eq!(cfg["judge_llm"]["model"], "judge");
    let cfg = resume(&["--judge", "cmd:cat"]);
    assert_eq!(cfg["judge"], "cmd:cat");
    assert_eq!(cfg["judge_llm"]["mode"], "pointwise");
    assert_eq!(cfg["judge_llm"]["model"], Value::Null);
    for entry in walk(&out) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{} holds the key",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}
