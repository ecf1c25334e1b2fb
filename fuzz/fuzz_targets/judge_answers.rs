//! The judge-answer parsers on arbitrary judge output, for 1 to 4 expected answers: scores
//! that are finite, or a message quoting the line at fault; and an LLM judge's free-text
//! answer read as a score (finite) or a verdict. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpo_engine::tpo::judge::command::{parse_preferences, parse_scores};
use tpo_engine::tpo::judge::verdict::{read_score, read_verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&first, stdout)) = data.split_first() else {
        return;
    };
    let n = 1 + usize::from(first % 4);
    if let Ok(scores) = parse_scores(stdout, n) {
        assert_eq!(scores.len(), n);
        assert!(scores.iter().all(|s| s.is_finite()));
    }
    if let Ok(prefs) = parse_preferences(stdout, n) {
        assert_eq!(prefs.len(), n);
    }
    let answer = String::from_utf8_lossy(data);
    if let Ok(score) = read_score(&answer) {
        assert!(score.is_finite());
    }
    let _ = read_verdict(&answer);
});
