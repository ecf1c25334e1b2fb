//! Reading an LLM judge's free-text answer: a pointwise score or a pairwise verdict.
//!
//! Judges answer in many shapes: "Score: 7", "Rating: [[7]]", "**Score:** 7/10", a JSON
//! object, "[[A]]", "Verdict: Response B", Arena-Hard's "[[A>B]]". The readers below accept
//! those and nothing vaguer: an answer with no clear score or verdict is reported as
//! unreadable (the caller asks again, then counts it), never guessed. Where an answer
//! states its score or verdict more than once, the last one counts: judges are asked to
//! reason first and conclude at the end. A reasoning model's `<think>...</think>` block is
//! dropped first, so a score it considers while thinking is not read as its answer.

use super::Preference;
use serde_json::Value;

/// Longest quote of an answer in a message, in characters.
const QUOTE_CHARS: usize = 200;

/// Words after which a score follows ("Score: 7", "rating = 8.5").
const SCORE_WORDS: [&str; 2] = ["score", "rating"];
/// Words after which a verdict follows ("Verdict: A", "Winner: Response B").
const VERDICT_WORDS: [&str; 4] = ["verdict", "winner", "better response", "preference"];

/// The score an answer gives: a JSON object's "score" (or "rating"), else the last
/// "score"/"rating" followed by a number, else the last `[[N]]`.
pub fn read_score(answer: &str) -> Result<f64, String> {
    let text = without_thinking(answer);
    let found = json_objects(text)
        .rev()
        .find_map(|obj| {
            SCORE_WORDS
                .iter()
                .find_map(|k| field(&obj, k))
                .and_then(json_number)
        })
        .or_else(|| last_after_words(text, &SCORE_WORDS, number_at))
        .or_else(|| {
            last_bracketed(text, |inner| {
                number_at(inner)
                    .filter(|(_, n)| *n == inner.trim().len())
                    .map(|(x, _)| x)
            })
        });
    match found {
        Some(x) if x.is_finite() => Ok(x),
        Some(x) => Err(format!("its score {x} is not a finite number")),
        None => Err(format!(
            "no score found (expected \"Score: N\" or JSON {{\"score\": N}}) in {}",
            quote(answer)
        )),
    }
}

/// The verdict an answer gives: a JSON object's "verdict" (or "preference", "winner"),
/// else the last `[[A]]` / `[[B]]` / `[[tie]]` (or Arena-Hard's `[[A>B]]`, `[[A=B]]`...),
/// else the last "verdict"/"winner"/"better response" followed by A, B or tie, else an
/// answer that is only that.
pub fn read_verdict(answer: &str) -> Result<Preference, String> {
    let text = without_thinking(answer);
    let found = json_objects(text)
        .rev()
        .find_map(|obj| {
            ["verdict", "preference", "winner", "better"]
                .iter()
                .find_map(|k| field(&obj, k))
                .and_then(Value::as_str)
                .and_then(verdict_word)
        })
        .or_else(|| last_bracketed(text, verdict_word))
        .or_else(|| {
            last_after_words(text, &VERDICT_WORDS, |rest| {
                let word = rest.split(['\n', ',', ';']).next().unwrap_or("");
                verdict_word(word).map(|p| (p, word.len()))
            })
        })
        .or_else(|| verdict_word(text));
    found.ok_or_else(|| {
        format!(
            "no verdict found (expected \"[[A]]\", \"[[B]]\" or \"[[tie]]\") in {}",
            quote(answer)
        )
    })
}

/// A verdict written as a word or two: "A", "Response B", "(a)", "tie", "A>>B", "A=B".
fn verdict_word(word: &str) -> Option<Preference> {
    let w = word
        .trim()
        .trim_matches(|c: char| c.is_whitespace() || "*\"'`.:()[]!".contains(c))
        .to_ascii_lowercase();
    let w = ["response ", "assistant ", "output ", "model "]
        .iter()
        .find_map(|p| w.strip_prefix(p))
        .unwrap_or(&w)
        .trim_matches(|c: char| c.is_whitespace() || "*\"'`.:()[]".contains(c));
    match w {
        "a" | "a>b" | "a>>b" | "b<a" | "b<<a" => Some(Preference::First),
        "b" | "b>a" | "b>>a" | "a<b" | "a<<b" => Some(Preference::Second),
        "tie" | "a=b" | "b=a" | "c" | "draw" | "equal" | "both" | "neither" => {
            Some(Preference::Tie)
        }
        _ => None,
    }
}

/// The text after a reasoning model's thinking: what follows the last `</think>`, if any;
/// nothing when a `<think>` block is never closed (the answer was cut while thinking).
fn without_thinking(answer: &str) -> &str {
    let open = answer.rfind("<think>");
    match answer.rfind("</think>") {
        Some(end) if open.is_none_or(|o| o < end) => &answer[end + "</think>".len()..],
        _ if open.is_some() => "",
        _ => answer,
    }
}

/// A key of a JSON object, compared without case.
fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A JSON number, or a string holding one ("7", "7/10").
fn json_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => number_at(s).map(|(x, _)| x),
        _ => None,
    }
}

/// Every `{...}` span of the text that parses as a JSON object, in order of their starts.
fn json_objects(text: &str) -> impl DoubleEndedIterator<Item = serde_json::Map<String, Value>> {
    let mut found = vec![];
    let mut from = 0;
    while let Some(at) = text[from..].find('{') {
        let start = from + at;
        let mut stream = serde_json::Deserializer::from_str(&text[start..])
            .into_iter::<serde_json::Map<String, Value>>();
        match stream.next() {
            Some(Ok(obj)) => {
                found.push(obj);
                from = start + stream.byte_offset();
            }
            _ => from = start + 1,
        }
    }
    found.into_iter()
}

/// The last place where one of `words` (without case, at a word start) is followed, past
/// separators such as ":", "=", "**", "is", by something `read` accepts.
fn last_after_words<T>(
    text: &str,
    words: &[&str],
    read: impl Fn(&str) -> Option<(T, usize)>,
) -> Option<T> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<(usize, T)> = None;
    for word in words {
        for (at, _) in lower.match_indices(word) {
            let starts_word = lower[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric());
            if !starts_word || best.as_ref().is_some_and(|(b, _)| *b > at) {
                continue;
            }
            let rest = skip_separators(&text[at + word.len()..]);
            if let Some((value, _)) = read(rest) {
                best = Some((at, value));
            }
        }
    }
    best.map(|(_, v)| v)
}

/// `s` past the separators between a keyword and its value: spaces, ":", "=", "*", "#",
/// quotes, "[[", and the words "is" and "of" ("a score of 4").
fn skip_separators(mut s: &str) -> &str {
    loop {
        let trimmed = s.trim_start_matches(|c: char| c.is_whitespace() || ":=*#\"'`[".contains(c));
        let lower = trimmed.to_ascii_lowercase();
        let word = ["is ", "of "].iter().find(|w| lower.starts_with(**w));
        match word {
            Some(w) => s = &trimmed[w.len()..],
            None => return trimmed,
        }
    }
}

/// A number at the start of `s` ("7", "-2", "8.5", "7/10"): its value and the bytes it
/// takes (the "/10" not included).
fn number_at(s: &str) -> Option<(f64, usize)> {
    let bytes = s.as_bytes();
    let mut end = usize::from(bytes.first() == Some(&b'-'));
    let digits_from = end;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end == digits_from {
        return None;
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    // "7th", "10x": not a score.
    if bytes.get(end).is_some_and(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    s[..end].parse().ok().map(|x| (x, end))
}

/// What `read` makes of the inside of the last `[[...]]` it accepts.
fn last_bracketed<T>(text: &str, read: impl Fn(&str) -> Option<T>) -> Option<T> {
    text.rmatch_indices("[[").find_map(|(at, _)| {
        let inner = &text[at + 2..];
        let end = inner.find("]]")?;
        read(&inner[..end])
    })
}

/// An answer quoted in a message: trimmed, cut to [`QUOTE_CHARS`].
pub fn quote(answer: &str) -> String {
    let t = answer.trim();
    if t.is_empty() {
        return "an empty answer".into();
    }
    let mut q: String = t.chars().take(QUOTE_CHARS).collect();
    if t.chars().nth(QUOTE_CHARS).is_some() {
        q.push_str("...");
    }
    format!("{q:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Preference::{First, Second, Tie};

    #[test]
    fn scores_in_the_shapes_judges_write() {
        let cases: [(&str, f64); 13] = [
            ("The answer is correct.\nScore: 7", 7.0),
            ("score: 8.5", 8.5),
            ("**Score:** 9/10", 9.0),
            ("Rating: [[6]]", 6.0),
            ("Overall, I'd give it a score of 4 out of 10.", 4.0),
            ("Final score = -2", -2.0),
            ("{\"reason\": \"fine\", \"score\": 5}", 5.0),
            ("```json\n{\"score\": \"3\"}\n```", 3.0),
            (
                "My score: 3. On reflection the code is wrong.\nScore: 2",
                2.0,
            ),
            ("It misses the point. [[1]]", 1.0),
            ("<think>Score: 9? no, lower.</think>\nScore: 5", 5.0),
            ("{\"Rating\": 10}", 10.0),
            ("Scores vary; score: 6", 6.0),
        ];
        for (answer, want) in cases {
            assert_eq!(read_score(answer), Ok(want), "{answer:?}");
        }
    }

    #[test]
    fn an_answer_without_a_clear_score_is_unreadable() {
        for answer in [
            "",
            "This is a good answer.",
            "Score: N",
            "I would score it highly.",
            "The 3rd point is wrong.",
            "<think>Score: 9</think>\nI cannot decide.",
            "<think>Response A is fine. Score: 9? maybe lower",
            "{\"score\": null}",
            "Underscore: 5",
        ] {
            let e = read_score(answer).expect_err(answer);
            assert!(e.contains("no score found"), "{answer:?}: {e}");
        }
    }

    #[test]
    fn verdicts_in_the_shapes_judges_write() {
        let cases = [
            ("Response A is more complete.\nVerdict: [[A]]", First),
            ("[[B]]", Second),
            ("[[tie]]", Tie),
            ("My final verdict is: [[A>>B]]", First),
            ("My final verdict is tie: [[A=B]]", Tie),
            ("[[B>A]]", Second),
            ("Verdict: Response B", Second),
            ("**Winner:** Assistant A.", First),
            ("The better response is (b)", Second),
            ("{\"verdict\": \"a\", \"why\": \"shorter\"}", First),
            ("{\"preference\": \"tie\"}", Tie),
            ("B", Second),
            ("  tie.  ", Tie),
            (
                "Verdict: A\nOn second thought, B misses less. Verdict: B",
                Second,
            ),
            ("<think>[[A]] maybe</think>[[B]]", Second),
        ];
        for (answer, want) in cases {
            assert_eq!(read_verdict(answer), Ok(want), "{answer:?}");
        }
    }

    #[test]
    fn an_answer_without_a_clear_verdict_is_unreadable() {
        for answer in [
            "",
            "Both responses have merits.",
            "Verdict: it depends",
            "[[C is best]]",
            "Response A is better than B",
            "<think>[[A]]</think> I cannot say.",
            "<think>I lean to [[B]] but",
        ] {
            let e = read_verdict(answer).expect_err(answer);
            assert!(e.contains("no verdict found"), "{answer:?}: {e}");
        }
    }

    #[test]
    fn long_answers_are_quoted_short() {
        let q = quote(&"x".repeat(1000));
        assert!(q.len() < 210 && q.ends_with("...\""), "{q}");
        assert_eq!(quote("  "), "an empty answer");
    }
}
