//! `--judge openai:BASE_URL`: an LLM judge served behind an OpenAI-compatible
//! chat-completions API (vLLM, SGLang, llama.cpp's server, TGI; OpenAI's chat models that
//! take `max_tokens` and `temperature`).
//!
//! Each response (pointwise) or each ordered pair of responses (pairwise) becomes one
//! request: the prompt template filled with the instruction and the response(s), sent as one
//! user message to `BASE_URL/chat/completions` with temperature 0 and `max_tokens`
//! (`--judge-max-tokens`). The answer's text is read
//! by [`super::verdict`]: a score, or a verdict A, B or tie. Pairwise verdicts, asked in
//! both orders, become scores by ELO ([`super::elo`]), as the paper's pairwise judge does.
//!
//! Failures, and what happens to them:
//! - **The request fails** (the connection is refused or closed, no answer within
//!   `--judge-timeout` seconds, HTTP 408, 429 or 5xx, or a body that is not a chat
//!   completion): it is sent again after a pause (`backoff_secs`, doubled at each further
//!   try; a 429's or 503's `Retry-After` wins, up to a minute), at most `--judge-retries`
//!   more times. If every try fails, the scoring stops with an error naming the server and
//!   what each try met; nothing already written is lost, and `--resume` judges again.
//! - **Any other HTTP error** (400, 401, 404...) is not retried: the run stops with the
//!   status and the server's message.
//! - **The answer cannot be read** (no score, no verdict; an empty message; an answer cut
//!   at `max_tokens`; a `<think>` block never closed): the request is asked again, with
//!   temperature 0.7 so that a deterministic server does not repeat itself, at most
//!   `--judge-retries` more times. Still unreadable, it is counted and reported, never
//!   guessed: a pairwise battle counts as a tie (the paper's rule for a judge error: it
//!   moves no score), and a pointwise response is left unscored (NaN to
//!   [`Judge::score`]): the run records it as `unjudged`, leaves it out of pairing and of
//!   the means, and goes on. Each scoring call with such answers says how many on stderr,
//!   quoting the first.
//!
//! The API key is read from the environment variable `--judge-api-key-env` names (default
//! `OPENAI_API_KEY`) and sent as a bearer token. It never appears in a message, a log or the
//! run directory; only the variable's name is recorded.

use super::elo::EloJudge;
use super::verdict::{quote, read_score, read_verdict};
use super::{
    llm_prompt, Battle, Judge, JudgeGroup, JudgeMode, JudgeOptions, PairwiseJudge, Preference,
};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Temperature of a request asked again after an unreadable answer.
const RETRY_TEMPERATURE: f64 = 0.7;
/// Longest pause a server's Retry-After may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest pause between tries otherwise.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most bytes of one answer's body.
const MAX_BODY: u64 = 16 << 20;
/// Most unreadable answers quoted in an error.
const QUOTED_ANSWERS: usize = 3;
/// What an answer cut at `max_tokens` is read as: nothing a reader accepts.
const CUT: &str = "(the answer was cut at max_tokens before it ended)";

/// The judge `openai:BASE_URL` names, asked as `opts.llm` says.
pub fn open(base: &str, opts: &JudgeOptions) -> Result<Box<dyn Judge>> {
    let llm = &opts.llm;
    let (template, origin) = match (&llm.prompt, &llm.prompt_file) {
        (Some(t), file) => (
            t.clone(),
            file.as_ref().map_or("--judge-prompt".to_string(), |f| {
                format!("--judge-prompt {}", f.display())
            }),
        ),
        (None, _) => (
            llm_prompt::builtin(llm.mode).to_string(),
            "the built-in judge prompt".to_string(),
        ),
    };
    llm_prompt::check(&template, llm.mode, &origin)?;
    let client = Client::new(base, opts)?;
    Ok(match llm.mode {
        JudgeMode::Pointwise => Box::new(OpenAiPointwise { client, template }),
        JudgeMode::Pairwise => Box::new(EloJudge::new(OpenAiPairwise {
            client,
            template,
            unreadable: 0,
        })),
    })
}

/// A chat-completions endpoint, its model, and how to call it. Holds the API key: it has
/// no Debug, and no message shows the key.
struct Client {
    /// BASE_URL without a trailing slash.
    base: String,
    model: String,
    key: Option<String>,
    key_env: String,
    agent: ureq::Agent,
    timeout: Duration,
    retries: usize,
    backoff: Duration,
    concurrency: usize,
    max_tokens: usize,
    /// Set when a request has failed: the others send nothing more.
    stop: AtomicBool,
}

/// How one try of a request ended, when it did not give an answer.
enum Failure {
    /// Worth another try (after the pause the server asked for, if it did).
    Transient { why: String, wait: Option<Duration> },
    /// Another try would meet the same.
    Fatal(String),
}

impl Client {
    fn new(base: &str, opts: &JudgeOptions) -> Result<Client> {
        let llm = &opts.llm;
        let base = base.trim().trim_end_matches('/');
        let base = base
            .strip_suffix("/chat/completions")
            .unwrap_or(base)
            .to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--judge openai:{base}: expected an http:// or https:// URL, such as openai:http://localhost:8000/v1");
        }
        let t = opts.timeout_secs;
        let timeout = Duration::try_from_secs_f64(t)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!("--judge-timeout {t}: expected a positive number of seconds")
            })?;
        let backoff = Duration::try_from_secs_f64(llm.backoff_secs)
            .ok()
            .with_context(|| {
                format!(
                    "judge backoff {} s: expected a number of seconds",
                    llm.backoff_secs
                )
            })?;
        if llm.concurrency == 0 {
            bail!("--judge-concurrency 0: expected at least 1");
        }
        if llm.max_tokens == 0 {
            bail!("--judge-max-tokens 0: expected at least 1");
        }
        let key = std::env::var(&llm.api_key_env)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(llm.concurrency)
            .build()
            .into();
        let mut client = Client {
            base,
            model: String::new(),
            key,
            key_env: llm.api_key_env.clone(),
            agent,
            timeout,
            retries: opts.retries,
            backoff,
            concurrency: llm.concurrency,
            max_tokens: llm.max_tokens,
            stop: AtomicBool::new(false),
        };
        client.model = match &llm.model {
            Some(m) if !m.trim().is_empty() => m.clone(),
            Some(_) => bail!("--judge-model: the name is empty"),
            None => client.only_model()?,
        };
        Ok(client)
    }

    fn describe(&self, mode: JudgeMode) -> String {
        format!(
            "openai:{} model {} ({})",
            self.base,
            self.model,
            mode.as_str()
        )
    }

    /// The one model the server lists at BASE_URL/models, for a judge given no
    /// --judge-model.
    fn only_model(&self) -> Result<String> {
        let url = format!("{}/models", self.base);
        let body = self
            .with_retries(&url, || self.try_get(&url))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}\n(give --judge-model to name the judge's model without asking the server)"
                )
            })?;
        let ids: Vec<String> = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["data"].as_array().map(|d| {
                    d.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .with_context(|| {
                format!(
                    "{url}: not a model list ({}); give --judge-model",
                    quote(&body)
                )
            })?;
        match ids.as_slice() {
            [one] => {
                eprintln!("judge: {url} serves one model, {one}");
                Ok(one.clone())
            }
            [] => bail!("{url}: the server lists no model; give --judge-model"),
            many => bail!(
                "{url}: the server lists {} models ({}); name the judge with --judge-model",
                many.len(),
                many.join(", ")
            ),
        }
    }

    /// `call` until it succeeds, a fatal failure, or `retries` more tries have failed.
    fn with_retries(
        &self,
        url: &str,
        call: impl Fn() -> std::result::Result<String, Failure>,
    ) -> std::result::Result<String, String> {
        let tries = self.retries.saturating_add(1);
        let mut met = Vec::new();
        for attempt in 0..tries {
            if self.stop.load(Ordering::SeqCst) {
                return Err(format!("{url}: not sent: another request failed"));
            }
            match call() {
                Ok(body) => return Ok(body),
                Err(Failure::Fatal(why)) => return Err(format!("{url}: {why}")),
                Err(Failure::Transient { why, wait }) => {
                    met.push(why);
                    if attempt + 1 < tries {
                        let pause = wait.unwrap_or_else(|| {
                            self.backoff
                                .saturating_mul(1u32 << attempt.min(16))
                                .min(MAX_BACKOFF)
                        });
                        std::thread::sleep(pause);
                    }
                }
            }
        }
        let mut msg = format!(
            "{url}: {} failed",
            if tries == 1 {
                "the only try".to_string()
            } else {
                format!("all {tries} tries")
            }
        );
        for (i, why) in met.iter().enumerate() {
            msg.push_str(&format!("\n  try {}: {why}", i + 1));
        }
        Err(msg)
    }

    fn authorized<B>(&self, mut request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(key) = &self.key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        request
    }

    fn try_get(&self, url: &str) -> std::result::Result<String, Failure> {
        let response = self.authorized(self.agent.get(url)).call();
        self.body_of(response)
    }

    /// One chat request: the answer's text.
    fn try_chat(&self, body: &[u8]) -> std::result::Result<String, Failure> {
        let url = format!("{}/chat/completions", self.base);
        let response = self
            .authorized(self.agent.post(&url))
            .header("Content-Type", "application/json")
            .send(body);
        let text = self.body_of(response)?;
        let Some(choice) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["choices"].get(0).cloned())
            .filter(|c| c["message"].is_object())
        else {
            return Err(Failure::Transient {
                why: format!("the answer is not a chat completion: {}", quote(&text)),
                wait: None,
            });
        };
        // A message with no text (a reasoning model that spent its tokens thinking) or an
        // answer cut at max_tokens is an answer that cannot be read, not a failed request.
        if choice["finish_reason"].as_str() == Some("length") {
            return Ok(CUT.to_string());
        }
        Ok(choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The body of a successful response, or how the try failed.
    fn body_of(
        &self,
        response: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> std::result::Result<String, Failure> {
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Failure::Transient {
                    why: format!("no answer within {} s", self.timeout.as_secs_f64()),
                    wait: None,
                })
            }
            Err(e) => {
                return Err(Failure::Transient {
                    why: format!("the request failed: {e}"),
                    wait: None,
                })
            }
        };
        let status = response.status().as_u16();
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(|d| d.min(MAX_RETRY_AFTER));
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string();
        let body = match (status, body) {
            (_, Ok(b)) => b,
            (200, Err(e)) => {
                return Err(Failure::Transient {
                    why: format!("reading the answer failed: {e}"),
                    wait: None,
                })
            }
            (_, Err(_)) => String::new(),
        };
        match status {
            200 => Ok(body),
            408 | 429 | 500..=599 => Err(Failure::Transient {
                why: format!("HTTP {status}: {}", quote(&body)),
                wait,
            }),
            401 | 403 => Err(Failure::Fatal(format!(
                "HTTP {status}: not authorized ({}): {}",
                if self.key.is_some() {
                    format!("the server refused the key in ${}", self.key_env)
                } else {
                    format!("no key was sent: ${} is not set", self.key_env)
                },
                quote(&body)
            ))),
            404 => Err(Failure::Fatal(format!(
                "HTTP 404: {}\n(is BASE_URL the API's root, such as http://localhost:8000/v1, and --judge-model a model it serves?)",
                quote(&body)
            ))),
            _ => Err(Failure::Fatal(format!("HTTP {status}: {}", quote(&body)))),
        }
    }

    /// The answer to `prompt`, with the request's retries.
    fn ask(&self, prompt: &str, temperature: f64) -> std::result::Result<String, String> {
        let body = serde_json::to_vec(&json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "max_tokens": self.max_tokens,
        }))
        .expect("a JSON value serialises");
        let url = format!("{}/chat/completions", self.base);
        self.with_retries(&url, || self.try_chat(&body))
    }

    /// What `read` makes of the answer to `prompt`, asking again while it cannot be read:
    /// `Ok(Err(...))` holds the last unreadable answer and why; `Err` a failed request.
    fn judged<T>(
        &self,
        prompt: &str,
        read: fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<std::result::Result<T, String>, String> {
        let mut last = String::new();
        for attempt in 0..self.retries.saturating_add(1) {
            let temperature = if attempt == 0 { 0.0 } else { RETRY_TEMPERATURE };
            let answer = self.ask(prompt, temperature)?;
            match read(&answer) {
                Ok(v) => return Ok(Ok(v)),
                Err(why) => last = why,
            }
        }
        Ok(Err(last))
    }

    /// Every prompt judged, `concurrency` requests in flight; `progress` is told of each
    /// answer. Stops at the first failed request.
    fn judge_all<T: Send>(
        &self,
        prompts: &[String],
        read: fn(&str) -> std::result::Result<T, String>,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<std::result::Result<T, String>>> {
        let n = prompts.len();
        let next = AtomicUsize::new(0);
        let stop = &self.stop;
        stop.store(false, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let mut out: Vec<Option<std::result::Result<T, String>>> = (0..n).map(|_| None).collect();
        let mut failed: Option<String> = None;
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.min(n) {
                let tx = tx.clone();
                let next = &next;
                scope.spawn(move || loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let result = self.judged(&prompts[i], read);
                    if result.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (i, result) in rx {
                match result {
                    Ok(r) => {
                        out[i] = Some(r);
                        progress(1);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = failed {
            bail!("the judge {}: a request failed: {e}", self.base);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every prompt answered"))
            .collect())
    }
}

/// Pointwise: one request per response, its score read from the answer.
struct OpenAiPointwise {
    client: Client,
    template: String,
}

impl Judge for OpenAiPointwise {
    fn describe(&self) -> String {
        self.client.describe(JudgeMode::Pointwise)
    }

    fn leaves_unscored(&self) -> bool {
        true
    }

    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>> {
        let prompts: Vec<String> = groups
            .iter()
            .flat_map(|g| {
                g.responses.iter().map(|r| {
                    llm_prompt::fill(
                        &self.template,
                        &[("instruction", g.instruction), ("response", r)],
                    )
                })
            })
            .collect();
        let results = self.client.judge_all(&prompts, read_score, progress)?;
        let unreadable: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if !unreadable.is_empty() {
            let mut msg = format!(
                "judge {}: {} of {} answers gave no readable score after {} tries each; those responses are left unscored (never guessed) and out of the pairs and means. The first:",
                self.describe(),
                unreadable.len(),
                results.len(),
                self.client.retries.saturating_add(1)
            );
            for why in unreadable.iter().take(QUOTED_ANSWERS) {
                msg.push_str(&format!("\n  {why}"));
            }
            eprintln!("{msg}");
        }
        let mut scores = results.into_iter().map(|r| r.unwrap_or(f64::NAN));
        Ok(groups
            .iter()
            .map(|g| scores.by_ref().take(g.responses.len()).collect())
            .collect())
    }
}

/// Pairwise: one request per ordered battle, a verdict read from the answer; an unreadable
/// one counts as a tie.
struct OpenAiPairwise {
    client: Client,
    template: String,
    /// Battles whose answers could not be read, over the judge's life.
    unreadable: usize,
}

impl PairwiseJudge for OpenAiPairwise {
    fn describe(&self) -> String {
        self.client.describe(JudgeMode::Pairwise)
    }

    fn compare(&mut self, battles: &[Battle], progress: &dyn Fn(usize)) -> Result<Vec<Preference>> {
        let prompts: Vec<String> = battles
            .iter()
            .map(|b| {
                llm_prompt::fill(
                    &self.template,
                    &[
                        ("instruction", b.instruction),
                        ("response_a", b.first),
                        ("response_b", b.second),
                    ],
                )
            })
            .collect();
        let results = self.client.judge_all(&prompts, read_verdict, progress)?;
        let unreadable: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(first) = unreadable.first() {
            self.unreadable += unreadable.len();
            eprintln!(
                "judge {}: {} of {} answers gave no readable verdict after {} tries each; counted as ties ({} so far). The first: {first}",
                self.describe(),
                unreadable.len(),
                results.len(),
                self.client.retries.saturating_add(1),
                self.unreadable
            );
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Preference::Tie))
            .collect())
    }
}
