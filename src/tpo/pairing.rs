//! Length-controlled pairing: one preference pair per prompt from its judged candidates.
//!
//! Over one prompt's parsed candidates, s = z(score) - rho * z(response length), with z the
//! standard score over those candidates (0 where they all have the same value). chosen =
//! argmax s, rejected = argmin s; a malformed candidate, when there is one, is the rejected
//! side instead, as the paper does. Ties go to the earlier candidate.

/// One candidate as pairing sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judged {
    /// The judge's score; None for a malformed candidate (never judged), or an unjudged one.
    pub score: Option<f64>,
    /// Parsed, but the judge gave no score: left out altogether (neither side of a pair).
    pub unjudged: bool,
    /// Response length in tokens.
    pub response_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairing {
    Pair {
        chosen: usize,
        rejected: usize,
    },
    /// No candidate was both parsed and scored (all malformed, or left unscored by the
    /// judge): nothing to choose.
    NoParsed,
    /// The parsed candidates all scored the same and none is malformed: no preference.
    AllTie,
}

/// Standard scores (population standard deviation); all 0 when the values do not vary.
pub fn z_scores(values: &[f64]) -> Vec<f64> {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let sd = var.sqrt();
    if sd <= 1e-12 * mean.abs().max(1.0) {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - mean) / sd).collect()
}

/// The pair for one prompt's candidates (see the module doc). `malformed_as_rejected`
/// lets a malformed candidate be the rejected side.
pub fn choose_pair(candidates: &[Judged], rho: f64, malformed_as_rejected: bool) -> Pairing {
    let parsed: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].score.is_some())
        .collect();
    if parsed.is_empty() {
        return Pairing::NoParsed;
    }
    let scores: Vec<f64> = parsed
        .iter()
        .map(|&i| candidates[i].score.unwrap())
        .collect();
    let lens: Vec<f64> = parsed
        .iter()
        .map(|&i| candidates[i].response_len as f64)
        .collect();
    let (zs, zl) = (z_scores(&scores), z_scores(&lens));
    let s: Vec<f64> = zs.iter().zip(&zl).map(|(a, b)| a - rho * b).collect();
    let best = (0..s.len()).fold(0, |b, i| if s[i] > s[b] { i } else { b });
    let worst = (0..s.len()).fold(0, |w, i| if s[i] < s[w] { i } else { w });
    let malformed = candidates
        .iter()
        .position(|c| c.score.is_none() && !c.unjudged);
    match malformed {
        Some(m) if malformed_as_rejected => Pairing::Pair {
            chosen: parsed[best],
            rejected: m,
        },
        // No score difference, or length control evens it out (best and worst coincide).
        _ if zs.iter().all(|&z| z == 0.0) || best == worst => Pairing::AllTie,
        _ => Pairing::Pair {
            chosen: parsed[best],
            rejected: parsed[worst],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(items: &[(Option<f64>, usize)]) -> Vec<Judged> {
        items
            .iter()
            .map(|&(score, response_len)| Judged {
                score,
                unjudged: false,
                response_len,
            })
            .collect()
    }

    #[test]
    fn z_scores_are_standardised_and_zero_when_flat() {
        // mean 5, population sd 2.
        let z = z_scores(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(z, vec![-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(z_scores(&[3.0, 3.0, 3.0]), vec![0.0; 3]);
        assert_eq!(z_scores(&[1e9, 1e9]), vec![0.0; 2]);
    }

    #[test]
    fn without_length_control_best_and_worst_score_win() {
        let c = judged(&[(Some(0.2), 50), (Some(0.9), 400), (Some(0.1), 10)]);
        assert_eq!(
            choose_pair(&c, 0.0, true),
            Pairing::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }

    #[test]
    fn length_control_can_flip_the_choice() {
        // Scores 1, 0.9, 0: z = (0.8154, 0.5930, -1.4084) (mean 0.6333, sd 0.4497).
        // Lengths 300, 100, 200: z = (1.2247, -1.2247, 0).
        // rho 0.5: s = (0.2030, 1.2054, -1.4084): the shorter, almost as good one wins.
        let c = judged(&[(Some(1.0), 300), (Some(0.9), 100), (Some(0.0), 200)]);
        assert_eq!(
            choose_pair(&c, 0.0, true),
            Pairing::Pair {
                chosen: 0,
                rejected: 2
            }
        );
        assert_eq!(
            choose_pair(&c, 0.5, true),
            Pairing::Pair {
                chosen: 1,
                rejected: 2
            }
        );
        // rho 2: s = (-1.634, 3.042, -1.408): the long best-scored one becomes the rejected.
        assert_eq!(
            choose_pair(&c, 2.0, true),
            Pairing::Pair {
                chosen: 1,
                rejected: 0
            }
        );
    }

    #[test]
    fn ties_skip_the_prompt_unless_a_candidate_is_malformed() {
        let tied = judged(&[(Some(1.0), 5), (Some(1.0), 80), (Some(1.0), 7)]);
        // Lengths differ, but with no score difference there is no preference to learn.
        assert_eq!(choose_pair(&tied, 0.5, true), Pairing::AllTie);
        let with_malformed = judged(&[(Some(1.0), 5), (None, 0), (Some(1.0), 7), (None, 3)]);
        assert_eq!(
            choose_pair(&with_malformed, 0.0, true),
            Pairing::Pair {
                chosen: 0,
                rejected: 1
            }
        );
        assert_eq!(choose_pair(&with_malformed, 0.0, false), Pairing::AllTie);
        assert_eq!(
            choose_pair(&judged(&[(None, 1), (None, 2)]), 0.0, true),
            Pairing::NoParsed
        );
    }

    #[test]
    fn an_unjudged_candidate_is_neither_side_nor_malformed() {
        let mut c = judged(&[(Some(2.0), 5), (None, 0), (Some(1.0), 7), (Some(0.0), 9)]);
        c[1].unjudged = true;
        // Without it the worst score is rejected, even with a malformed-rejected rule.
        assert_eq!(
            choose_pair(&c, 0.0, true),
            Pairing::Pair {
                chosen: 0,
                rejected: 3
            }
        );
        // Nor does it count in the z-scores: leaving it out of the scores changes nothing.
        let without: Vec<Judged> = [c[0], c[2], c[3]].to_vec();
        assert_eq!(
            choose_pair(&without, 0.7, true),
            Pairing::Pair {
                chosen: 0,
                rejected: 2
            }
        );
        let mut all = judged(&[(None, 1), (None, 2)]);
        all.iter_mut().for_each(|j| j.unjudged = true);
        assert_eq!(choose_pair(&all, 0.0, true), Pairing::NoParsed);
    }

    #[test]
    fn length_control_that_evens_out_the_scores_makes_no_pair() {
        // Scores 1, 0: z = (1, -1); lengths 20, 10: z = (1, -1); rho 1: s = (0, 0).
        let c = judged(&[(Some(1.0), 20), (Some(0.0), 10)]);
        assert_eq!(choose_pair(&c, 1.0, true), Pairing::AllTie);
        assert_eq!(
            choose_pair(&c, 0.5, true),
            Pairing::Pair {
                chosen: 0,
                rejected: 1
            }
        );
    }

    #[test]
    fn a_malformed_candidate_is_rejected_even_over_a_worse_score() {
        let c = judged(&[(Some(0.0), 5), (Some(3.0), 5), (None, 9)]);
        assert_eq!(
            choose_pair(&c, 0.0, true),
            Pairing::Pair {
                chosen: 1,
                rejected: 2
            }
        );
        assert_eq!(
            choose_pair(&c, 0.0, false),
            Pairing::Pair {
                chosen: 1,
                rejected: 0
            }
        );
        // A single parsed candidate pairs only against a malformed one.
        let single = judged(&[(None, 3), (Some(2.0), 4)]);
        assert_eq!(
            choose_pair(&single, 0.0, true),
            Pairing::Pair {
                chosen: 1,
                rejected: 0
            }
        );
        assert_eq!(choose_pair(&single[1..], 0.0, true), Pairing::AllTie);
    }
}
