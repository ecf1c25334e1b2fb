//! The stages of one TPO iteration, each a function from files to files: sample candidates,
//! parse and judge them, pair them (with reference log-probs), and evaluate on held-out
//! prompts. The loop in `run.rs` decides which to run and where their outputs go.

use super::config::TpoConfig;
use super::judge::{Judge, JudgeGroup};
use super::pairing::{choose_pair, Judged, Pairing};
use super::prompts::{instruction, render, wrap};
use crate::backend::device::Device;
use crate::backend::settings::SamplingParams;
use crate::engine::Engine;
use crate::generate::steer::{Forced, Steering};
use crate::generate::{FinishReason, GenerateOptions, PromptMode};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::train::Example;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What every stage needs besides the config: the tokenizer and its special tokens.
pub struct Runtime {
    pub tokenizer: Tokenizer,
    /// Appended to a completion that ended on EOS, when it becomes training data.
    pub end_token: u32,
    /// Tokens that end generation.
    pub eos_ids: Vec<u32>,
    pub mode: PromptMode,
    pub vocab_size: usize,
    pub max_context: usize,
    /// Where the models run.
    pub device: Device,
}

/// One generated completion.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub token_ids: Vec<u32>,
    pub finish_reason: String,
    /// The response marker's tokens fed in place of sampled ones (within `token_ids`).
    #[serde(default)]
    pub forced: Option<Forced>,
}

/// One prompt's samples (a line of samples.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromptSamples {
    /// Line of the prompt in the run's prompts file (0-based, blank lines skipped).
    pub index: usize,
    pub samples: Vec<Sample>,
}

/// One candidate after parsing and judging.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    /// The whole completion.
    pub text: String,
    pub thought: Option<String>,
    pub response: Option<String>,
    /// Why it could not be split (None: parsed).
    pub malformed: Option<String>,
    /// The judge's score of the response (None when malformed: never judged; or unjudged).
    pub score: Option<f64>,
    /// Parsed and shown to the judge, which gave no score (its answers could not be read):
    /// neither paired nor counted in the means.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unjudged: bool,
    pub tokens: usize,
    pub thought_tokens: usize,
    pub response_tokens: usize,
    pub finish_reason: String,
    pub token_ids: Vec<u32>,
    /// The response marker's tokens fed in place of sampled ones: they are part of
    /// `token_ids`, trained on and scored as if sampled.
    #[serde(default)]
    pub forced: Option<Forced>,
}

/// One prompt's candidates (a line of candidates.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromptCandidates {
    pub index: usize,
    pub prompt: Map<String, Value>,
    pub instruction: String,
    pub candidates: Vec<Candidate>,
}

/// A held-out answer, judged beside the seed's direct answer to the same prompt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLine {
    pub index: usize,
    pub instruction: String,
    pub text: String,
    pub thought: Option<String>,
    /// What the judge saw: the response, or the whole text when it could not be parsed (a
    /// user would see all of it).
    pub response: String,
    pub malformed: Option<String>,
    pub thought_tokens: usize,
    pub response_tokens: usize,
    /// The judge's score of the answer (None: the judge gave none; left out of the means).
    pub score: Option<f64>,
    pub seed_response: String,
    pub seed_score: Option<f64>,
    /// 1 win, 0.5 tie, 0 loss against the seed (None unless both were scored).
    pub outcome: Option<f64>,
    #[serde(default)]
    pub forced: Option<Forced>,
}

pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .expect("the template is valid"),
    );
    bar
}

impl Runtime {
    /// Token ids of each prompt, wrapped in the thought prompt when there is one (and
    /// ending with the thought marker when it is prefilled).
    pub fn render_all(
        &self,
        cfg: &TpoConfig,
        prompts: &[&Map<String, Value>],
        thoughts: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let thought = if thoughts {
            cfg.thought_prompt.as_ref()
        } else {
            None
        };
        let prefill = match thought {
            Some(t) => cfg.format.prefill_ids(t, &self.tokenizer)?,
            None => vec![],
        };
        prompts
            .iter()
            .map(|p| {
                let mut ids = render(
                    &wrap(p, thought),
                    &self.tokenizer,
                    self.mode,
                    self.vocab_size,
                    self.max_context.saturating_sub(prefill.len()),
                )?;
                ids.extend_from_slice(&prefill);
                Ok(ids)
            })
            .collect()
    }

    /// How sampling is steered into the thought format (None: it is not).
    pub fn steering(&self, cfg: &TpoConfig, thoughts: bool) -> Result<Option<Steering>> {
        match cfg.thought_prompt.as_ref().filter(|_| thoughts) {
            Some(t) => cfg.format.steering(t, &self.tokenizer),
            None => Ok(None),
        }
    }

    /// `samples` completions per prompt; every (prompt, sample) has its own random stream
    /// from `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        model: &Model,
        prompts: &[Vec<u32>],
        (samples, max_new_tokens, batch_size): (usize, usize, usize),
        sampling: SamplingParams,
        steering: Option<Steering>,
        seed: u64,
        what: &str,
    ) -> Result<Vec<Vec<Sample>>> {
        let opts = GenerateOptions {
            samples,
            max_new_tokens,
            sampling,
            seed,
            batch_size,
            eos_ids: self.eos_ids.clone(),
            steering,
        };
        let progress = bar(prompts.len() * samples * max_new_tokens, what);
        let engine = Engine::new(model, &self.device)?;
        let (completions, _) =
            engine.generate(prompts, &opts, &|_| false, &|n| progress.inc(n as u64))?;
        progress.finish_and_clear();
        Ok(completions
            .into_iter()
            .map(|cs| {
                cs.into_iter()
                    .map(|c| Sample {
                        token_ids: c.token_ids,
                        finish_reason: c.finish_reason.as_str().to_string(),
                        forced: c.forced,
                    })
                    .collect()
            })
            .collect())
    }

    /// Decodes a sample and splits it into thought and response (the whole text is the
    /// response without a thought prompt).
    pub fn parse(&self, cfg: &TpoConfig, sample: &Sample, thoughts: bool) -> Result<Candidate> {
        let text = self.tokenizer.decode(&sample.token_ids)?;
        let (thought, response, malformed) = match cfg.thought_prompt.as_ref().filter(|_| thoughts)
        {
            Some(t) => match t.parse(&text, cfg.format.prefill_thought) {
                super::thought::Parsed::Ok { thought, response } => {
                    (Some(thought), Some(response), None)
                }
                super::thought::Parsed::Malformed(why) => (None, None, Some(why.to_string())),
            },
            None if text.trim().is_empty() => (None, None, Some("empty response".to_string())),
            None => (None, Some(text.trim()), None),
        };
        let span = |part: Option<&str>| -> Result<usize> {
            part.map_or(Ok(0), |p| self.tokens_over(&sample.token_ids, &text, p))
        };
        let (thought_tokens, response_tokens) = (span(thought)?, span(response)?);
        let (thought, response) = (thought.map(str::to_string), response.map(str::to_string));
        Ok(Candidate {
            thought_tokens,
            response_tokens,
            tokens: sample.token_ids.len(),
            thought,
            response,
            text,
            malformed,
            score: None,
            unjudged: false,
            finish_reason: sample.finish_reason.clone(),
            token_ids: sample.token_ids.clone(),
            forced: sample.forced,
        })
    }

    /// How many of the completion's tokens `ids` its part `part` (a slice of `text`, their
    /// decoding) spans: from the last token that ends at or before the part's start to the
    /// first that reaches its end. The tokens as generated, not as the part's text would be
    /// encoded again (which differs where a token is part of a character).
    fn tokens_over(&self, ids: &[u32], text: &str, part: &str) -> Result<usize> {
        let start = part.as_ptr() as usize - text.as_ptr() as usize;
        let end = start + part.len();
        let decoded = |k: usize| -> Result<usize> { Ok(self.tokenizer.decode(&ids[..k])?.len()) };
        // Decoded prefixes grow with k: binary searches for the two boundaries.
        let (mut lo, mut hi) = (0, ids.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if decoded(mid)? <= start {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let first = lo;
        let (mut lo, mut hi) = (first, ids.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if decoded(mid)? >= end {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo - first)
    }

    /// The completion as training data: its sampled tokens, and the end token when it ended
    /// on EOS (a completion cut by the length limit did not end).
    pub fn completion_ids(&self, c: &Candidate) -> Vec<u32> {
        let mut ids = c.token_ids.clone();
        if c.finish_reason == FinishReason::Eos.as_str() {
            ids.push(self.end_token);
        }
        ids
    }
}

/// Scores the listed responses of each group with the judge, checking what comes back:
/// None where a judge that may leave a response unscored did.
pub fn judge_groups(
    judge: &mut dyn Judge,
    groups: &[JudgeGroup],
    what: &str,
) -> Result<Vec<Vec<Option<f64>>>> {
    let total = groups.iter().map(|g| g.responses.len()).sum();
    let progress = bar(total, what);
    let scores = judge.score(groups, &|n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    if scores.len() != groups.len() {
        bail!(
            "the judge {} gave scores for {} prompts, expected {}",
            judge.describe(),
            scores.len(),
            groups.len()
        );
    }
    for (g, s) in groups.iter().zip(&scores) {
        if s.len() != g.responses.len() {
            bail!(
                "the judge {} gave {} scores for {} responses",
                judge.describe(),
                s.len(),
                g.responses.len()
            );
        }
        let unscored = |x: &f64| x.is_nan() && judge.leaves_unscored();
        if let Some(x) = s.iter().find(|x| !x.is_finite() && !unscored(x)) {
            bail!(
                "the judge {} gave the score {x} for a response to {:?}",
                judge.describe(),
                g.instruction
            );
        }
    }
    Ok(scores
        .into_iter()
        .map(|s| s.into_iter().map(|x| x.is_finite().then_some(x)).collect())
        .collect())
}

/// Judges every parsed candidate (malformed ones are never shown) and fills in its score.
pub fn judge_candidates(judge: &mut dyn Judge, prompts: &mut [PromptCandidates]) -> Result<()> {
    let groups: Vec<JudgeGroup> = prompts
        .iter()
        .map(|p| JudgeGroup {
            source: &p.prompt,
            instruction: &p.instruction,
            responses: p
                .candidates
                .iter()
                .filter_map(|c| c.response.as_deref())
                .collect(),
        })
        .collect();
    let scores = judge_groups(judge, &groups, "responses judged")?;
    for (p, s) in prompts.iter_mut().zip(scores) {
        let mut s = s.into_iter();
        for c in p.candidates.iter_mut().filter(|c| c.response.is_some()) {
            c.score = s.next().flatten();
            c.unjudged = c.score.is_none();
        }
    }
    Ok(())
}

/// A pair chosen from one prompt's candidates.
pub struct ChosenPair {
    pub prompt: usize,
    pub chosen: usize,
    pub rejected: usize,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PairCounts {
    pub pairs: usize,
    /// Prompts skipped because their parsed candidates all scored the same.
    pub all_tie: usize,
    /// Prompts skipped because every candidate was malformed.
    pub no_parsed: usize,
}

pub fn make_pairs(cfg: &TpoConfig, prompts: &[PromptCandidates]) -> (Vec<ChosenPair>, PairCounts) {
    let mut pairs = vec![];
    let mut counts = PairCounts::default();
    for (i, p) in prompts.iter().enumerate() {
        let judged: Vec<Judged> = p
            .candidates
            .iter()
            .map(|c| Judged {
                score: c.score,
                unjudged: c.unjudged,
                response_len: c.response_tokens,
            })
            .collect();
        match choose_pair(&judged, cfg.rho, cfg.malformed_as_rejected) {
            Pairing::Pair { chosen, rejected } => pairs.push(ChosenPair {
                prompt: i,
                chosen,
                rejected,
            }),
            Pairing::AllTie => counts.all_tie += 1,
            Pairing::NoParsed => counts.no_parsed += 1,
        }
    }
    counts.pairs = pairs.len();
    (pairs, counts)
}

/// Training examples of the pairs (prompt as the policy saw it, sampled completion tokens),
/// with the reference model's summed log-probs filled in by `reference`.
pub fn pair_examples(
    rt: &Runtime,
    cfg: &TpoConfig,
    prompts: &[PromptCandidates],
    pairs: &[ChosenPair],
    thoughts: bool,
) -> Result<Vec<Example>> {
    let sources: Vec<&Map<String, Value>> =
        pairs.iter().map(|p| &prompts[p.prompt].prompt).collect();
    let rendered = rt.render_all(cfg, &sources, thoughts)?;
    Ok(pairs
        .iter()
        .zip(rendered)
        .map(|(p, prompt)| {
            let cands = &prompts[p.prompt].candidates;
            Example {
                seqs: vec![
                    [prompt.as_slice(), &rt.completion_ids(&cands[p.chosen])].concat(),
                    [prompt.as_slice(), &rt.completion_ids(&cands[p.rejected])].concat(),
                ],
                prompt_len: prompt.len(),
                reference: vec![],
            }
        })
        .collect())
}

/// Summed completion log-probs of every example's sequences under `model`.
pub fn reference_logps(
    model: &Model,
    examples: &mut [Example],
    micro_batch_tokens: usize,
    device: &Device,
) -> Result<()> {
    let progress = bar(2 * examples.len(), "reference log-probs");
    let logps = Engine::new(model, device)?
        .score_examples(examples, micro_batch_tokens, &|n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    if let Some(x) = logps.iter().find(|x| !x.is_finite()) {
        bail!("a reference log-prob is {x}: the reference model produces non-finite values");
    }
    for (e, lp) in examples.iter_mut().zip(logps.chunks_exact(2)) {
        e.reference = lp.to_vec();
    }
    Ok(())
}

/// The instruction of each prompt (checked when the prompts were read).
pub fn instructions(prompts: &[&Map<String, Value>]) -> Vec<String> {
    prompts
        .iter()
        .map(|p| instruction(p).unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::steer::ForceReason;
    use crate::model::ModelConfig;
    use std::path::Path;

    #[test]
    fn a_pair_trains_on_forced_tokens_after_a_prompt_that_holds_the_prefill() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/direct-seed");
        let plan = super::super::demo::DemoPlan::new(true);
        let mut cfg = super::super::demo::config(&dir, &plan, true).unwrap();
        cfg.format.prefill_thought = true;
        let config = ModelConfig::load(&dir.join("config.json")).unwrap();
        let rt = Runtime {
            tokenizer: Tokenizer::load(&dir).unwrap(),
            end_token: 2,
            eos_ids: vec![2],
            mode: PromptMode::Chat,
            vocab_size: config.vocab_size,
            max_context: config.max_context,
            device: Device::CPU,
        };
        let t = cfg.thought_prompt.clone().unwrap();
        let marker = rt.tokenizer.encode(&t.forced_response(), false).unwrap();
        let thought = rt.tokenizer.encode(" The answer is 7.", false).unwrap();
        let answer = rt.tokenizer.encode(" The answer is 3.", false).unwrap();
        let candidate = |ids: Vec<u32>, forced: Option<Forced>| {
            let sample = Sample {
                token_ids: ids,
                finish_reason: "eos".into(),
                forced,
            };
            rt.parse(&cfg, &sample, true).unwrap()
        };
        let forced_ids = [thought.as_slice(), &marker, &answer].concat();
        let forced = Forced {
            at: thought.len(),
            tokens: marker.len(),
            reason: ForceReason::Eos,
        };
        let chosen = candidate(forced_ids.clone(), Some(forced));
        assert_eq!(chosen.response.as_deref(), Some("The answer is 3."));
        assert_eq!(chosen.thought.as_deref(), Some("The answer is 7."));
        assert_eq!(chosen.forced, Some(forced));
        let rejected = candidate(thought.clone(), None);
        assert_eq!(rejected.malformed.as_deref(), Some("no response marker"));
        let prompt = serde_json::json!({"prompt": "What is the last digit of 3+4?"});
        let prompts = [PromptCandidates {
            index: 0,
            prompt: prompt.as_object().unwrap().clone(),
            instruction: "What is the last digit of 3+4?".into(),
            candidates: vec![chosen, rejected],
        }];
        let pairs = [ChosenPair {
            prompt: 0,
            chosen: 0,
            rejected: 1,
        }];
        let examples = pair_examples(&rt, &cfg, &prompts, &pairs, true).unwrap();
        let e = &examples[0];
        // The prompt ends with the prefilled thought marker, and is not trained on.
        let rendered = render(
            &wrap(&prompts[0].prompt, cfg.thought_prompt.as_ref()),
            &rt.tokenizer,
            PromptMode::Chat,
            rt.vocab_size,
            rt.max_context,
        )
        .unwrap();
        let prefill = rt.tokenizer.encode(t.prefill(), false).unwrap();
        assert_eq!(e.prompt_len, rendered.len() + prefill.len());
        assert_eq!(&e.seqs[0][..e.prompt_len], [rendered, prefill].concat());
        // The completion trained on holds the forced tokens, then the end token.
        assert_eq!(&e.seqs[0][e.prompt_len..], [forced_ids, vec![2]].concat());
    }
}
