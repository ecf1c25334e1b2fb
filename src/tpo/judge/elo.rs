//! Pairwise preferences to per-candidate scores: ELO by maximum likelihood.
//!
//! As in the TPO paper: for the n candidates of one prompt, every ordered pair (m, k), m != k,
//! is judged with m shown first, giving r_mk = 1 (the first wins), -1 (the second wins) or 0
//! (a tie, or the judge could not decide). The number of times m beat k over both orders is
//! B_mk = [r_mk = 1] + [r_km = -1], and the scores maximise the Bradley-Terry log-likelihood
//! sum_{m,k} B_mk log sigmoid(eps_m - eps_k).
//!
//! Choices made here:
//! - **Ties count nothing**, as in the paper's B (only wins are counted). A tie is not half a
//!   win each way: all-tie candidates keep score 0 because nothing pulls them apart, not
//!   because the ties pull them together.
//! - **A small Gaussian prior.** The plain maximum-likelihood fit diverges when a candidate
//!   wins all its battles (or, more generally, when the win graph is not strongly connected),
//!   and is defined only up to a constant. We maximise
//!   `sum B_mk log sigmoid(eps_m - eps_k) - (ELO_PRIOR / 2) * sum eps_m^2`
//!   instead, with [`ELO_PRIOR`] = 0.02. The objective is then strictly concave, so the
//!   maximiser is unique and finite, and its scores sum to zero (the likelihood's gradient
//!   sums to zero, so at the optimum the prior's does too): the constant is fixed by the
//!   prior, and we re-centre to mean 0 to remove rounding. The prior is a symmetric
//!   shrinkage, so it keeps the order the wins imply: a candidate that beats everyone still
//!   gets the highest score. For scale: of two candidates, one winning in both orders scores
//!   +1.96 and the other -1.96 (one winning in one order and tying in the other: +-1.68).
//!   Scores are in logits (natural-log odds), not in 400-point ELO units.
//! - **Newton's method** with a backtracking line search, started from zero and stopped when
//!   the gradient's largest entry is below 1e-10: deterministic, and a handful of iterations
//!   for the group sizes TPO uses.

use super::{Battle, Judge, JudgeGroup, PairwiseJudge, Preference};
use anyhow::{bail, Result};
use std::cell::Cell;

/// Precision of the Gaussian prior on each score (see the module documentation).
pub const ELO_PRIOR: f64 = 0.02;

const MAX_NEWTON_STEPS: usize = 200;
const GRADIENT_TOLERANCE: f64 = 1e-10;

/// B: `wins[m][k]` = how many times candidate m beat candidate k over both orders, from the
/// n x n matrix of battle results `results[m][k]` (m shown first, k second; the diagonal is
/// ignored). Ties count nothing.
pub fn win_matrix(results: &[Vec<Preference>]) -> Vec<Vec<f64>> {
    let n = results.len();
    for (m, row) in results.iter().enumerate() {
        assert_eq!(
            row.len(),
            n,
            "battle results: row {m} has {} entries, not {n}",
            row.len()
        );
    }
    let mut wins = vec![vec![0.0; n]; n];
    for m in 0..n {
        for k in 0..n {
            if m == k {
                continue;
            }
            if results[m][k] == Preference::First {
                wins[m][k] += 1.0;
            }
            if results[k][m] == Preference::Second {
                wins[m][k] += 1.0;
            }
        }
    }
    wins
}

/// ELO scores (mean 0, in logits) of n candidates from the n x n matrix of battle results
/// `results[m][k]` (m shown first, k second; the diagonal is ignored), fitted with the
/// [`ELO_PRIOR`]. Panics if the matrix is not square.
pub fn elo_scores(results: &[Vec<Preference>]) -> Vec<f64> {
    fit_elo(&win_matrix(results), ELO_PRIOR)
}

/// The scores maximising `sum_{m != k} wins[m][k] log sigmoid(eps_m - eps_k) - prior/2 |eps|^2`,
/// centred to mean 0. `wins` is n x n, non-negative (fractional counts are fine); the diagonal
/// is ignored. Panics unless `prior` is positive and finite, and on a malformed matrix.
pub fn fit_elo(wins: &[Vec<f64>], prior: f64) -> Vec<f64> {
    assert!(
        prior > 0.0 && prior.is_finite(),
        "ELO prior must be positive and finite, got {prior}"
    );
    let n = wins.len();
    for (m, row) in wins.iter().enumerate() {
        assert_eq!(
            row.len(),
            n,
            "win matrix: row {m} has {} entries, not {n}",
            row.len()
        );
        for (k, &w) in row.iter().enumerate() {
            assert!(
                m == k || (w >= 0.0 && w.is_finite()),
                "win matrix: entry ({m}, {k}) is {w}"
            );
        }
    }
    let mut eps = vec![0.0; n];
    if n < 2 {
        return eps;
    }
    let mut value = objective(wins, prior, &eps);
    for _ in 0..MAX_NEWTON_STEPS {
        let (grad, neg_hessian) = derivatives(wins, prior, &eps);
        if grad.iter().all(|g| g.abs() < GRADIENT_TOLERANCE) {
            break;
        }
        let Some(step) = solve_spd(neg_hessian, &grad) else {
            break; // cannot happen: the negative Hessian is >= prior * I
        };
        let slope: f64 = grad.iter().zip(&step).map(|(g, s)| g * s).sum();
        if slope <= 0.0 {
            break;
        }
        // Backtrack until the Armijo condition holds.
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let trial: Vec<f64> = eps.iter().zip(&step).map(|(e, s)| e + t * s).collect();
            let v = objective(wins, prior, &trial);
            if v >= value + 1e-4 * t * slope {
                accepted = Some((trial, v));
                break;
            }
            t *= 0.5;
        }
        let Some((next, v)) = accepted else {
            break; // no progress possible in floating point: we are at the optimum
        };
        eps = next;
        value = v;
    }
    let mean = eps.iter().sum::<f64>() / n as f64;
    for e in &mut eps {
        *e -= mean;
    }
    eps
}

/// log sigmoid(x), without overflow.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn objective(wins: &[Vec<f64>], prior: f64, eps: &[f64]) -> f64 {
    let n = eps.len();
    let mut v = -0.5 * prior * eps.iter().map(|e| e * e).sum::<f64>();
    for m in 0..n {
        for k in 0..n {
            if m != k && wins[m][k] > 0.0 {
                v += wins[m][k] * log_sigmoid(eps[m] - eps[k]);
            }
        }
    }
    v
}

/// The objective's gradient and its negative Hessian (weighted graph Laplacian + prior * I).
fn derivatives(wins: &[Vec<f64>], prior: f64, eps: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = eps.len();
    let mut grad: Vec<f64> = eps.iter().map(|e| -prior * e).collect();
    let mut h = vec![vec![0.0; n]; n];
    for (m, row) in h.iter_mut().enumerate() {
        row[m] = prior;
    }
    for m in 0..n {
        for k in (m + 1)..n {
            let total = wins[m][k] + wins[k][m];
            if total == 0.0 {
                continue;
            }
            let p = sigmoid(eps[m] - eps[k]); // P(m beats k)
            let g = wins[m][k] - total * p;
            grad[m] += g;
            grad[k] -= g;
            let w = total * p * (1.0 - p);
            h[m][m] += w;
            h[k][k] += w;
            h[m][k] -= w;
            h[k][m] -= w;
        }
    }
    (grad, h)
}

/// Solves A x = b for a symmetric positive definite A by Cholesky; None if A is not.
fn solve_spd(mut a: Vec<Vec<f64>>, b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let d = a[j][j] - dot(&a[j][..j], &a[j][..j]);
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j][j] = d;
        for i in (j + 1)..n {
            a[i][j] = (a[i][j] - dot(&a[i][..j], &a[j][..j])) / d;
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - dot(&a[i][..i], &y[..i])) / a[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in (i + 1)..n {
            s -= a[k][i] * x[k];
        }
        x[i] = s / a[i][i];
    }
    Some(x)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A pairwise judge made pointwise: every ordered pair of a group's responses is judged (both
/// orders, n (n - 1) battles for n responses), all groups' battles in one call of the inner
/// judge, and each group's scores are fitted by [`elo_scores`]. A group of one response scores
/// 0.0 without battles. Progress counts responses: a group's responses are reported once all
/// its battles are judged.
pub struct EloJudge<P: PairwiseJudge> {
    inner: P,
}

impl<P: PairwiseJudge> EloJudge<P> {
    pub fn new(inner: P) -> Self {
        EloJudge { inner }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: PairwiseJudge> Judge for EloJudge<P> {
    fn describe(&self) -> String {
        format!("{} (ELO over both orders)", self.inner.describe())
    }

    fn score(&mut self, groups: &[JudgeGroup], progress: &dyn Fn(usize)) -> Result<Vec<Vec<f64>>> {
        let mut battles = Vec::new();
        // Battles judged when each group is complete.
        let mut group_ends = Vec::with_capacity(groups.len());
        for g in groups {
            let n = g.responses.len();
            if n >= 2 {
                for m in 0..n {
                    for k in 0..n {
                        if m != k {
                            battles.push(Battle {
                                source: g.source,
                                instruction: g.instruction,
                                first: g.responses[m],
                                second: g.responses[k],
                            });
                        }
                    }
                }
            }
            group_ends.push(battles.len());
        }

        // Turn battles judged into responses scored.
        let battles_done = Cell::new(0usize);
        let groups_reported = Cell::new(0usize);
        let report = |done: usize| {
            let mut g = groups_reported.get();
            let mut responses = 0;
            while g < groups.len() && group_ends[g] <= done {
                responses += groups[g].responses.len();
                g += 1;
            }
            groups_reported.set(g);
            if responses > 0 {
                progress(responses);
            }
        };
        report(0);
        let prefs = if battles.is_empty() {
            Vec::new()
        } else {
            self.inner.compare(&battles, &|k| {
                battles_done.set(battles_done.get() + k);
                report(battles_done.get().min(battles.len()));
            })?
        };
        if prefs.len() != battles.len() {
            bail!(
                "{}: {} preferences for {} battles",
                self.inner.describe(),
                prefs.len(),
                battles.len()
            );
        }

        let mut scores = Vec::with_capacity(groups.len());
        let mut at = 0;
        for g in groups {
            let n = g.responses.len();
            if n < 2 {
                scores.push(vec![0.0; n]);
                continue;
            }
            let mut results = vec![vec![Preference::Tie; n]; n];
            for (m, row) in results.iter_mut().enumerate() {
                for (k, r) in row.iter_mut().enumerate() {
                    if m != k {
                        *r = prefs[at];
                        at += 1;
                    }
                }
            }
            scores.push(elo_scores(&results));
        }
        // Report whatever the inner judge's progress left over (all of it, once scored).
        report(battles.len());
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use std::cell::RefCell;
    use Preference::{First, Second, Tie};

    /// Results where `better(m, k)` decides every battle regardless of order.
    fn results_from(
        n: usize,
        mut better: impl FnMut(usize, usize) -> Preference,
    ) -> Vec<Vec<Preference>> {
        (0..n)
            .map(|m| {
                (0..n)
                    .map(|k| if m == k { Tie } else { better(m, k) })
                    .collect()
            })
            .collect()
    }

    fn assert_all_close(xs: &[f64], value: f64, tol: f64) {
        for &x in xs {
            assert!((x - value).abs() <= tol, "{xs:?} not all {value}");
        }
    }

    /// Independent objective straight from the results, for checking the solver.
    fn objective_from_results(results: &[Vec<Preference>], prior: f64, eps: &[f64]) -> f64 {
        let n = eps.len();
        let mut v = 0.0;
        for m in 0..n {
            for k in 0..n {
                if m == k {
                    continue;
                }
                let b = (results[m][k] == First) as u32 + (results[k][m] == Second) as u32;
                let p = 1.0 / (1.0 + (eps[k] - eps[m]).exp());
                v += b as f64 * p.ln();
            }
        }
        v - prior / 2.0 * eps.iter().map(|e| e * e).sum::<f64>()
    }

    /// The d maximising f on [lo, hi] by golden-section search (f unimodal there).
    fn argmax_1d(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
        let r = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..200 {
            let a = hi - r * (hi - lo);
            let b = lo + r * (hi - lo);
            if f(a) < f(b) {
                lo = a;
            } else {
                hi = b;
            }
        }
        (lo + hi) / 2.0
    }

    /// Small deterministic generator for random matrices.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn random_results(n: usize, seed: u64) -> Vec<Vec<Preference>> {
        let mut rng = Lcg(seed);
        results_from(n, |_, _| match rng.next() % 3 {
            0 => First,
            1 => Second,
            _ => Tie,
        })
    }

    #[test]
    fn win_matrix_counts_wins_over_both_orders_and_ignores_ties() {
        // 0 first vs 1: 0 wins; 1 first vs 0: tie; 0 vs 2: second wins; 2 vs 0: second wins.
        let results = vec![
            vec![Tie, First, Second],
            vec![Tie, Tie, First],
            vec![Second, First, Tie],
        ];
        let b = win_matrix(&results);
        assert_eq!(b[0][1], 1.0); // r_01 = 1
        assert_eq!(b[1][0], 0.0); // r_10 tie, r_01 not -1
        assert_eq!(b[2][0], 1.0); // r_02 = -1
        assert_eq!(b[0][2], 1.0); // r_20 = -1
        assert_eq!(b[1][2], 1.0); // r_12 = 1
        assert_eq!(b[2][1], 1.0); // r_21 = 1
    }

    #[test]
    fn strict_total_order_gives_sorted_scores() {
        // Candidate m beats k iff m < k, in both orders.
        for n in 2..=8 {
            let results = results_from(n, |m, k| if m < k { First } else { Second });
            let s = elo_scores(&results);
            for i in 1..n {
                assert!(s[i - 1] > s[i], "n={n}: {s:?}");
            }
            assert!(s.iter().sum::<f64>().abs() < 1e-9);
        }
        // The same with the order scrambled: the ranking follows the wins, not the index.
        let rank = [3, 0, 4, 1, 2];
        let results = results_from(5, |m, k| if rank[m] < rank[k] { First } else { Second });
        let s = elo_scores(&results);
        for m in 0..5 {
            for k in 0..5 {
                if rank[m] < rank[k] {
                    assert!(s[m] > s[k], "{s:?}");
                }
            }
        }
    }

    #[test]
    fn all_ties_give_zeros() {
        let s = elo_scores(&results_from(6, |_, _| Tie));
        assert_eq!(s, vec![0.0; 6]);
    }

    #[test]
    fn a_three_cycle_gives_equal_scores() {
        // a > b > c > a, in both orders.
        let beats = |m: usize, k: usize| (m + 1) % 3 == k;
        let s = elo_scores(&results_from(
            3,
            |m, k| if beats(m, k) { First } else { Second },
        ));
        assert_all_close(&s, 0.0, 1e-12);
    }

    #[test]
    fn position_bias_gives_equal_scores() {
        assert_all_close(&elo_scores(&results_from(5, |_, _| First)), 0.0, 1e-12);
        assert_all_close(&elo_scores(&results_from(5, |_, _| Second)), 0.0, 1e-12);
    }

    #[test]
    fn two_candidates_match_a_one_dimensional_maximisation() {
        // With eps = (d/2, -d/2) the objective is b log sigmoid(d) - prior d^2 / 4.
        for (results, b) in [
            (vec![vec![Tie, First], vec![Second, Tie]], 2.0), // A wins in both orders
            (vec![vec![Tie, First], vec![Tie, Tie]], 1.0),    // A wins shown first; tie
            (vec![vec![Tie, Tie], vec![Second, Tie]], 1.0),   // tie; A wins shown second
        ] {
            let s = elo_scores(&results);
            let f = |d: f64| -> f64 { b * -(1.0 + (-d).exp()).ln() - ELO_PRIOR * d * d / 4.0 };
            let want = argmax_1d(f, 0.0, 50.0);
            assert!((s[0] - s[1] - want).abs() < 1e-6, "b={b}: {s:?} vs {want}");
            assert!((s[0] + s[1]).abs() < 1e-12);
            assert!(s[0] > s[1]);
        }
        // Winning in both orders counts more than in one.
        let both = elo_scores(&[vec![Tie, First], vec![Second, Tie]]);
        let one = elo_scores(&[vec![Tie, First], vec![Tie, Tie]]);
        assert!(both[0] - both[1] > one[0] - one[1]);
    }

    #[test]
    fn unregularised_limit_matches_the_closed_form() {
        // Without a prior, two candidates with wins w01, w10 have eps_0 - eps_1 = ln(w01 / w10).
        for (w01, w10) in [(3.0, 1.0), (1.0, 1.0), (2.0, 5.0), (0.5, 7.25)] {
            let s = fit_elo(&[vec![0.0, w01], vec![w10, 0.0]], 1e-10);
            let want = f64::ln(w01 / w10);
            assert!((s[0] - s[1] - want).abs() < 1e-6, "{w01}/{w10}: {s:?}");
        }
    }

    #[test]
    fn gradient_vanishes_at_the_solution() {
        for (n, seed) in [(8, 1), (5, 7), (12, 42), (3, 3)] {
            let results = random_results(n, seed);
            let s = elo_scores(&results);
            assert!(s.iter().sum::<f64>().abs() < 1e-9);
            let h = 1e-5;
            for i in 0..n {
                let mut up = s.clone();
                let mut down = s.clone();
                up[i] += h;
                down[i] -= h;
                let g = (objective_from_results(&results, ELO_PRIOR, &up)
                    - objective_from_results(&results, ELO_PRIOR, &down))
                    / (2.0 * h);
                assert!(g.abs() < 1e-6, "n={n} seed={seed}: d/d eps_{i} = {g}");
            }
            // And it is the maximum: nudging any direction lowers the objective.
            let best = objective_from_results(&results, ELO_PRIOR, &s);
            let mut rng = Lcg(seed + 100);
            for _ in 0..20 {
                let moved: Vec<f64> = s
                    .iter()
                    .map(|e| e + (rng.next() % 2001) as f64 / 1000.0 - 1.0)
                    .collect();
                assert!(objective_from_results(&results, ELO_PRIOR, &moved) < best);
            }
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn an_unbeaten_candidate_ranks_first_and_a_winless_one_last() {
        for seed in 0..20 {
            let n = 6;
            let mut results = random_results(n, seed);
            let (top, bottom) = (seed as usize % n, (seed as usize + 3) % n);
            for k in 0..n {
                if k != top {
                    results[top][k] = First;
                    results[k][top] = Second;
                }
            }
            for k in 0..n {
                if k != bottom && k != top {
                    results[bottom][k] = Second;
                    results[k][bottom] = First;
                }
            }
            let s = elo_scores(&results);
            for k in 0..n {
                if k != top {
                    assert!(s[top] > s[k], "seed {seed}: {s:?}");
                }
                if k != bottom && k != top {
                    assert!(s[bottom] < s[k], "seed {seed}: {s:?}");
                }
            }
            assert!(s.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn beating_everyone_in_one_order_only_still_ranks_first() {
        // Candidate 0 wins when shown first and ties when shown second; the rest tie.
        let results = results_from(4, |m, _| if m == 0 { First } else { Tie });
        let s = elo_scores(&results);
        assert!(s[0] > 0.0);
        assert_all_close(&s[1..], s[1], 1e-12);
        assert!(s[0] > s[1]);
    }

    #[test]
    fn fit_is_deterministic_and_handles_tiny_groups() {
        let results = random_results(8, 5);
        let a = elo_scores(&results);
        let b = elo_scores(&results);
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(elo_scores(&[]).is_empty());
        assert_eq!(elo_scores(&[vec![Tie]]), vec![0.0]);
    }

    /// Prefers the longer response; records what it was asked.
    struct LongerWins {
        calls: RefCell<Vec<usize>>,
    }

    impl PairwiseJudge for LongerWins {
        fn describe(&self) -> String {
            "longer wins".into()
        }
        fn compare(
            &mut self,
            battles: &[Battle],
            progress: &dyn Fn(usize),
        ) -> Result<Vec<Preference>> {
            self.calls.borrow_mut().push(battles.len());
            let out: Vec<Preference> = battles
                .iter()
                .map(|b| match b.first.len().cmp(&b.second.len()) {
                    std::cmp::Ordering::Greater => First,
                    std::cmp::Ordering::Less => Second,
                    std::cmp::Ordering::Equal => Tie,
                })
                .collect();
            // Report in two parts, as a batching judge would.
            let half = battles.len() / 2;
            progress(half);
            progress(battles.len() - half);
            Ok(out)
        }
    }

    #[test]
    fn elo_judge_judges_every_ordered_pair_in_one_call() {
        let source = Map::<String, Value>::new();
        let groups = vec![
            JudgeGroup {
                source: &source,
                instruction: "x",
                responses: vec!["aa", "a", "aaaa", "aaa"],
            },
            JudgeGroup {
                source: &source,
                instruction: "y",
                responses: vec!["only"],
            },
            JudgeGroup {
                source: &source,
                instruction: "z",
                responses: vec![],
            },
            JudgeGroup {
                source: &source,
                instruction: "w",
                responses: vec!["bbb", "b"],
            },
        ];
        let mut judge = EloJudge::new(LongerWins {
            calls: RefCell::new(Vec::new()),
        });
        let reported = Cell::new(0);
        let scores = judge
            .score(&groups, &|k| reported.set(reported.get() + k))
            .unwrap();
        assert_eq!(*judge.inner().calls.borrow(), vec![4 * 3 + 2]);
        assert_eq!(reported.get(), 7);
        assert_eq!(scores.len(), 4);
        let s = &scores[0];
        assert!(s[2] > s[3] && s[3] > s[0] && s[0] > s[1], "{s:?}");
        assert_eq!(scores[1], vec![0.0]);
        assert!(scores[2].is_empty());
        assert!(scores[3][0] > scores[3][1]);
    }

    #[test]
    fn elo_judge_without_battles_does_not_call_the_inner_judge() {
        let source = Map::<String, Value>::new();
        let groups = vec![JudgeGroup {
            source: &source,
            instruction: "x",
            responses: vec!["a"],
        }];
        let mut judge = EloJudge::new(LongerWins {
            calls: RefCell::new(Vec::new()),
        });
        let reported = Cell::new(0);
        let scores = judge
            .score(&groups, &|k| reported.set(reported.get() + k))
            .unwrap();
        assert_eq!(scores, vec![vec![0.0]]);
        assert!(judge.inner().calls.borrow().is_empty());
        assert_eq!(reported.get(), 1);
    }
}
