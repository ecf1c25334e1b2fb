//! Finding a thought prompt's markers in a completion, as real models write them.
//!
//! A marker matches in two ways:
//! - exactly, anywhere in the text (`My response:` mid-line);
//! - decorated, at the start of a line: Markdown decoration before it (`#`, `*`, `_`, `>`,
//!   spaces), its words in any case with any run of spaces between them, decoration after
//!   them, and a colon, which may be left out when nothing else follows on the line:
//!   `**My response:**`, `## My response`, `MY RESPONSE :`, `> my response:`.
//!
//! Nothing else matches: not another word form (`My responses:`), not a marker run into
//! the text that follows (`My response will be short`), not a marker in lower case
//! mid-line (`In my response:`).

use std::ops::Range;

/// Characters that may decorate a marker at the start of a line.
const LEADING: &[char] = &[' ', '\t', '#', '*', '_', '>'];
/// Characters that may close the decoration after a marker's words or its colon.
const CLOSING: &[char] = &['*', '_', ' ', '\t'];

/// The byte ranges of `marker`'s occurrences in `text`, in order, each covering the marker
/// and its decoration (overlapping matches merged). `complete`: the text is whole, so its
/// end ends a line; while the text is still growing, a marker without a colon at its very
/// end is not yet a match (the next token may turn it into other words).
pub fn find(text: &str, marker: &str, complete: bool) -> Vec<Range<usize>> {
    let marker = marker.trim();
    let mut found: Vec<Range<usize>> = text
        .match_indices(marker)
        .map(|(at, m)| at..at + m.len())
        .collect();
    let words: Vec<&str> = marker
        .strip_suffix(':')
        .unwrap_or(marker)
        .split_whitespace()
        .collect();
    if !words.is_empty() {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
        found.extend(line_starts.filter_map(|start| decorated(text, start, &words, complete)));
    }
    found.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
    for r in found {
        match merged.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// A decorated marker on the line starting at `start`: its range, from the line's first
/// decoration to the end of the colon and the decoration that closes it.
fn decorated(text: &str, start: usize, words: &[&str], complete: bool) -> Option<Range<usize>> {
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[start..line_end];
    let body = line.trim_start_matches(LEADING);
    let mut at = line.len() - body.len();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            let rest = &line[at..];
            let gap = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            if gap == 0 {
                return None;
            }
            at += gap;
        }
        at += caseless_prefix(&line[at..], word)?;
    }
    let after_words = at;
    at = skip(line, at, CLOSING);
    if line[at..].starts_with(':') {
        at = skip(line, at + 1, &['*', '_']);
        return Some(start..start + at);
    }
    // No colon: only decoration may follow on the line, and the line must have ended.
    let rest = &line[at..];
    let ended = line_end < text.len() || complete;
    let closing = line[after_words..at].trim_end_matches([' ', '\t']);
    (ended && rest.chars().all(|c| CLOSING.contains(&c) || c == '#'))
        .then(|| start..start + after_words + closing.len())
}

/// The byte length of `word` at the start of `s`, compared without case.
fn caseless_prefix(s: &str, word: &str) -> Option<usize> {
    let mut chars = s.char_indices();
    for w in word.chars() {
        let (_, c) = chars.next()?;
        if !c.to_lowercase().eq(w.to_lowercase()) {
            return None;
        }
    }
    Some(chars.next().map_or(s.len(), |(i, _)| i))
}

/// The first position at or after `at` in `line` that is not one of `chars`.
fn skip(line: &str, at: usize, chars: &[char]) -> usize {
    line.len() - line[at..].trim_start_matches(chars).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "My response:";

    /// The text of each match.
    fn matches<'a>(text: &'a str, marker: &str, complete: bool) -> Vec<&'a str> {
        find(text, marker, complete)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn documented_variants_match() {
        let cases = [
            ("thinking\nMy response: 5", "My response:"),
            ("thinking My response: 5", "My response:"),
            ("thinking\nmy response: 5", "my response:"),
            ("thinking\nMY RESPONSE: 5", "MY RESPONSE:"),
            ("thinking\n**My response:** 5", "**My response:**"),
            ("thinking\n**My response**: 5", "**My response**:"),
            ("thinking\n## My response\n5", "## My response"),
            ("thinking\n### My Response:\n5", "### My Response:"),
            ("thinking\nMy   response :  5", "My   response :"),
            ("thinking\n> My response: 5", "> My response:"),
            ("thinking\n__My response__\n5", "__My response__"),
            ("thinking\n  My response\n5", "  My response"),
            ("thinking\n**My response**\n5", "**My response**"),
            ("thinking\n\tMy response:\t5", "\tMy response:"),
        ];
        for (text, want) in cases {
            assert_eq!(matches(text, R, true), vec![want], "{text:?}");
        }
    }

    #[test]
    fn near_misses_do_not_match() {
        let cases = [
            "thinking\nMy responses: 5",
            "thinking\nMy response will be short.",
            "thinking, and in my response: 5",
            "thinking\nIn my response: 5",
            "thinking\nMyresponse: 5",
            "thinking\nMy respons: 5",
            "thinking\nMy reply: 5",
            "thinking\n- My response\n: 5",
            "thinking\nMy\nresponse: 5",
            "thinking\nMy response is: 5",
        ];
        for text in cases {
            assert_eq!(matches(text, R, true), Vec::<&str>::new(), "{text:?}");
        }
        // The thought marker's singular is another word.
        let t = "My private thoughts:";
        assert!(find("My private thought: x", t, true).is_empty());
        assert_eq!(
            matches("## my private thoughts\nx", t, true),
            ["## my private thoughts"]
        );
    }

    #[test]
    fn a_colonless_marker_at_the_end_waits_for_the_line_to_end() {
        assert!(find("thinking\n## My response", R, false).is_empty());
        assert_eq!(
            matches("thinking\n## My response", R, true),
            ["## My response"]
        );
        // With its colon it is a marker at once.
        assert_eq!(
            matches("thinking\n## My response:", R, false),
            ["## My response:"]
        );
        // And once the line ends.
        assert_eq!(
            matches("thinking\n## My response\n", R, false),
            ["## My response"]
        );
    }

    #[test]
    fn every_occurrence_is_found_once() {
        let text = "My response: a\n**My response:** b\nsee My response: c";
        assert_eq!(
            matches(text, R, true),
            ["My response:", "**My response:**", "My response:"]
        );
    }

    #[test]
    fn template_markers_without_colons() {
        let text = "<t> hmm\n<R>\n5";
        assert_eq!(matches(text, "<r>", true), ["<R>"]);
        assert_eq!(matches(text, "<t>", true), ["<t>"]);
        assert!(
            find("<r>x", "<r>", true).len() == 1,
            "exact matches stay anywhere"
        );
        assert!(find("\n<R>x", "<r>", true).is_empty());
    }

    #[test]
    fn non_ascii_text_is_safe() {
        for text in [
            "é\nMy rÉsponse: x",
            "ü",
            "\n\n",
            "My response:é",
            "## My répônse\n",
        ] {
            let _ = find(text, R, true);
            let _ = find(text, "Réponse :", false);
        }
        assert_eq!(
            matches("x\nRÉPONSE : oui", "Réponse :", true),
            ["RÉPONSE :"]
        );
    }
}
