//! The preference (DPO) and supervised (SFT) losses over summed completion log-probs, their
//! gradients with respect to those sums, and the metrics TRL logs.
//!
//! A loss is a mean over an optimizer batch that may span several micro-batches, so each
//! function takes the batch totals and returns one micro-batch's share: shares add up to
//! the batch's loss and gradients exactly. Scalar math in f64.

use serde_json::{json, Map, Value};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DpoLossType {
    /// -log sigmoid(beta * margin), with optional label smoothing (conservative DPO).
    Sigmoid,
    /// (margin - 1 / (2 beta))^2 on per-token mean log-probs (IPO).
    Ipo,
    /// relu(1 - beta * margin) (SLiC).
    Hinge,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct DpoConfig {
    pub loss_type: DpoLossType,
    pub beta: f64,
    /// Probability that a preference label is flipped (sigmoid loss only).
    pub label_smoothing: f64,
    /// Weight of the NLL term on the chosen completions (0: plain DPO).
    pub nll_alpha: f64,
}

/// One pair's summed completion log-probs under the policy and the reference model.
#[derive(Clone, Copy, Debug)]
pub struct PairLogps {
    pub chosen: f64,
    pub rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    pub n_chosen: usize,
    pub n_rejected: usize,
}

/// Totals over an optimizer batch: loss shares and metric sums, added micro-batch by
/// micro-batch, then averaged by `metrics`.
#[derive(Clone, Debug, Default)]
pub struct DpoTotals {
    pub loss: f64,
    pub pairs: usize,
    reward_chosen: f64,
    reward_rejected: f64,
    correct: usize,
    logp_chosen: f64,
    logp_rejected: f64,
    nll: f64,
}

/// Adds the DPO loss of `pairs` to `totals` and returns d(loss)/d(policy log-prob sum) for
/// each pair: (chosen, rejected). `batch_pairs` and `batch_chosen_tokens` are the optimizer
/// batch's pair count and chosen completion tokens.
pub fn dpo_loss(
    pairs: &[PairLogps],
    cfg: &DpoConfig,
    batch_pairs: usize,
    batch_chosen_tokens: usize,
    totals: &mut DpoTotals,
) -> Vec<(f64, f64)> {
    let per_pair = 1.0 / batch_pairs as f64;
    let beta = cfg.beta;
    let mut grads = Vec::with_capacity(pairs.len());
    for pair in pairs {
        // IPO compares per-token means (policy and reference alike); the others use sums.
        let (scale_c, scale_r) = match cfg.loss_type {
            DpoLossType::Ipo => (1.0 / pair.n_chosen as f64, 1.0 / pair.n_rejected as f64),
            _ => (1.0, 1.0),
        };
        let (pc, pr) = (pair.chosen * scale_c, pair.rejected * scale_r);
        let (rc, rr) = (pair.ref_chosen * scale_c, pair.ref_rejected * scale_r);
        let margin = (pc - rc) - (pr - rr);
        // loss and d(loss)/d(margin) of this pair
        let (loss, dmargin) = match cfg.loss_type {
            DpoLossType::Sigmoid => {
                let (z, eps) = (beta * margin, cfg.label_smoothing);
                let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
                (loss, beta * dz)
            }
            DpoLossType::Hinge => {
                let z = beta * margin;
                if z < 1.0 {
                    (1.0 - z, -beta)
                } else {
                    (0.0, 0.0)
                }
            }
            DpoLossType::Ipo => {
                let d = margin - 1.0 / (2.0 * beta);
                (d * d, 2.0 * d)
            }
        };
        let mut share = loss * per_pair;
        let mut dchosen = dmargin * scale_c * per_pair;
        let drejected = -dmargin * scale_r * per_pair;
        let mut nll = 0.0;
        if cfg.nll_alpha != 0.0 {
            nll = -pair.chosen / batch_chosen_tokens as f64;
            share += cfg.nll_alpha * nll;
            dchosen -= cfg.nll_alpha / batch_chosen_tokens as f64;
        }
        grads.push((dchosen, drejected));
        let (reward_c, reward_r) = (beta * (pc - rc), beta * (pr - rr));
        totals.add_pair(&[share, reward_c, reward_r, pc, pr, nll]);
    }
    grads
}

/// The numbers of one pair that `DpoTotals` adds up: a row of the device loss's stats.
pub const PAIR_STATS: usize = 6;

impl DpoTotals {
    /// Adds one pair: [its loss share (loss / batch pairs + nll_alpha * nll), reward_chosen,
    /// reward_rejected, logp_chosen, logp_rejected, nll], the rewards being beta times the
    /// policy-minus-reference log-probs and the log-probs as the loss compares them (IPO:
    /// per-token means); nll is 0 without the NLL term. `dpo_loss` and the device loss
    /// (`Gpu::dpo_loss`, one such row per pair) both fill the totals through this.
    pub fn add_pair(&mut self, row: &[f64; PAIR_STATS]) {
        let [share, reward_c, reward_r, logp_c, logp_r, nll] = *row;
        self.loss += share;
        self.pairs += 1;
        self.reward_chosen += reward_c;
        self.reward_rejected += reward_r;
        self.correct += usize::from(reward_c > reward_r);
        self.logp_chosen += logp_c;
        self.logp_rejected += logp_r;
        self.nll += nll;
    }

    /// TRL's metric names and meanings, averaged over the batch's pairs.
    pub fn metrics(&self, cfg: &DpoConfig) -> Map<String, Value> {
        let n = self.pairs.max(1) as f64;
        let mut m = Map::new();
        m.insert("loss".into(), json!(self.loss));
        m.insert("rewards/chosen".into(), json!(self.reward_chosen / n));
        m.insert("rewards/rejected".into(), json!(self.reward_rejected / n));
        m.insert("rewards/accuracies".into(), json!(self.correct as f64 / n));
        m.insert(
            "rewards/margins".into(),
            json!((self.reward_chosen - self.reward_rejected) / n),
        );
        m.insert("logps/chosen".into(), json!(self.logp_chosen / n));
        m.insert("logps/rejected".into(), json!(self.logp_rejected / n));
        if cfg.nll_alpha != 0.0 {
            m.insert("nll_loss".into(), json!(self.nll));
        }
        m
    }
}

/// Adds the token-mean negative log-likelihood of `logps` (summed over completions of
/// `batch_tokens` tokens in the optimizer batch) to `loss`; returns d(loss)/d(each sum).
pub fn sft_loss(logps: &[f64], batch_tokens: usize, loss: &mut f64) -> Vec<f64> {
    let per_token = 1.0 / batch_tokens as f64;
    logps
        .iter()
        .map(|lp| {
            *loss -= lp * per_token;
            -per_token
        })
        .collect()
}

/// log(sigmoid(x)) without overflow for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<PairLogps> {
        vec![
            PairLogps {
                chosen: -12.0,
                rejected: -15.5,
                ref_chosen: -13.0,
                ref_rejected: -14.0,
                n_chosen: 6,
                n_rejected: 9,
            },
            PairLogps {
                chosen: -30.25,
                rejected: -8.0,
                ref_chosen: -29.0,
                ref_rejected: -9.5,
                n_chosen: 11,
                n_rejected: 3,
            },
            PairLogps {
                chosen: -4.0,
                rejected: -40.0,
                ref_chosen: -20.0,
                ref_rejected: -10.0,
                n_chosen: 2,
                n_rejected: 17,
            },
        ]
    }

    fn batch_loss(p: &[PairLogps], cfg: &DpoConfig) -> f64 {
        let tokens = p.iter().map(|x| x.n_chosen).sum();
        let mut totals = DpoTotals::default();
        dpo_loss(p, cfg, p.len(), tokens, &mut totals);
        totals.loss
    }

    #[test]
    fn gradients_match_finite_differences_for_every_loss() {
        for (loss_type, beta, ls, alpha) in [
            (DpoLossType::Sigmoid, 0.1, 0.0, 0.0),
            (DpoLossType::Sigmoid, 0.5, 0.2, 1.0),
            (DpoLossType::Ipo, 0.2, 0.0, 0.0),
            (DpoLossType::Hinge, 0.5, 0.0, 0.5),
        ] {
            let cfg = DpoConfig {
                loss_type,
                beta,
                label_smoothing: ls,
                nll_alpha: alpha,
            };
            let p = pairs();
            let tokens = p.iter().map(|x| x.n_chosen).sum();
            let mut totals = DpoTotals::default();
            let grads = dpo_loss(&p, &cfg, p.len(), tokens, &mut totals);
            let h = 1e-6;
            for i in 0..p.len() {
                for side in 0..2 {
                    let bump = |d: f64| {
                        let mut q = p.clone();
                        if side == 0 {
                            q[i].chosen += d;
                        } else {
                            q[i].rejected += d;
                        }
                        batch_loss(&q, &cfg)
                    };
                    let numeric = (bump(h) - bump(-h)) / (2.0 * h);
                    let analytic = if side == 0 { grads[i].0 } else { grads[i].1 };
                    assert!(
                        (numeric - analytic).abs() < 1e-6,
                        "{loss_type:?} pair {i} side {side}: {analytic} vs {numeric}"
                    );
                }
            }
        }
    }

    #[test]
    fn sigmoid_loss_and_metrics_follow_the_definition() {
        let cfg = DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            nll_alpha: 0.0,
        };
        let p = pairs();
        let mut totals = DpoTotals::default();
        dpo_loss(&p, &cfg, 3, 19, &mut totals);
        let margins: Vec<f64> = p
            .iter()
            .map(|x| 0.1 * ((x.chosen - x.ref_chosen) - (x.rejected - x.ref_rejected)))
            .collect();
        let want: f64 = margins.iter().map(|z| (1.0 + (-z).exp()).ln()).sum::<f64>() / 3.0;
        let m = totals.metrics(&cfg);
        assert!((m["loss"].as_f64().unwrap() - want).abs() < 1e-12);
        // margins 0.25, -0.275, 4.6: two of three pairs prefer the chosen completion.
        assert!((m["rewards/accuracies"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let mean_margin = margins.iter().sum::<f64>() / 3.0;
        assert!((m["rewards/margins"].as_f64().unwrap() - mean_margin).abs() < 1e-12);
        assert!((m["logps/chosen"].as_f64().unwrap() - (-12.0 - 30.25 - 4.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn totals_added_row_by_row_give_the_metrics_averages() {
        let cfg = DpoConfig {
            loss_type: DpoLossType::Sigmoid,
            beta: 0.5,
            label_smoothing: 0.0,
            nll_alpha: 0.25,
        };
        let mut totals = DpoTotals::default();
        totals.add_pair(&[0.5, 1.0, -1.0, -10.0, -20.0, 2.0]);
        totals.add_pair(&[0.25, -2.0, 3.0, -30.0, -40.0, 4.0]);
        let m = totals.metrics(&cfg);
        assert_eq!(totals.pairs, 2);
        assert_eq!(m["loss"].as_f64(), Some(0.75));
        assert_eq!(m["rewards/chosen"].as_f64(), Some(-0.5));
        assert_eq!(m["rewards/rejected"].as_f64(), Some(1.0));
        // Only the first pair rewards its chosen completion above the rejected one.
        assert_eq!(m["rewards/accuracies"].as_f64(), Some(0.5));
        assert_eq!(m["rewards/margins"].as_f64(), Some(-1.5));
        assert_eq!(m["logps/chosen"].as_f64(), Some(-20.0));
        assert_eq!(m["logps/rejected"].as_f64(), Some(-30.0));
        assert_eq!(m["nll_loss"].as_f64(), Some(6.0));
    }

    #[test]
    fn dpo_loss_adds_each_pair_as_its_stats_row() {
        let cfg = DpoConfig {
            loss_type: DpoLossType::Ipo,
            beta: 0.2,
            label_smoothing: 0.0,
            nll_alpha: 0.5,
        };
        let p = pairs();
        let tokens: usize = p.iter().map(|x| x.n_chosen).sum();
        let mut totals = DpoTotals::default();
        dpo_loss(&p, &cfg, 4, tokens, &mut totals);
        // The same pairs as rows written from the definition: IPO on per-token means.
        let mut want = DpoTotals::default();
        for x in &p {
            let (nc, nr) = (x.n_chosen as f64, x.n_rejected as f64);
            let (pc, pr) = (x.chosen / nc, x.rejected / nr);
            let margin = (pc - x.ref_chosen / nc) - (pr - x.ref_rejected / nr);
            let ipo = (margin - 1.0 / (2.0 * 0.2)).powi(2);
            let nll = -x.chosen / tokens as f64;
            want.add_pair(&[
                ipo / 4.0 + 0.5 * nll,
                0.2 * (pc - x.ref_chosen / nc),
                0.2 * (pr - x.ref_rejected / nr),
                pc,
                pr,
                nll,
            ]);
        }
        let (got, want) = (totals.metrics(&cfg), want.metrics(&cfg));
        for (key, w) in &want {
            let g = got[key].as_f64().unwrap();
            let w = w.as_f64().unwrap();
            assert!(
                (g - w).abs() < 1e-12 * w.abs().max(1.0),
                "{key}: {g} vs {w}"
            );
        }
        assert_eq!(totals.pairs, 3);
    }

    #[test]
    fn extreme_margins_stay_finite() {
        assert!(log_sigmoid(-1000.0).is_finite() && log_sigmoid(1000.0) == 0.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
    }

    #[test]
    fn sft_loss_is_the_token_mean_nll() {
        let mut loss = 0.0;
        let g = sft_loss(&[-10.0, -2.0], 8, &mut loss);
        assert_eq!(loss, 1.5);
        assert_eq!(g, vec![-0.125, -0.125]);
    }
}
