//! Token sampling: greedy, temperature, top-k and top-p (nucleus), with a seeded RNG.
//!
//! Logits are never modified in place: the weights live in a scratch buffer, so callers
//! keep the raw distribution. The filters apply in the order transformers applies them:
//! temperature, then top-k, then top-p over what top-k kept. Ties at a cutoff are broken
//! toward the lowest token ids (top-k keeps exactly k tokens; transformers keeps every
//! token tied with the k-th).

use super::math::{exp, max};
use crate::backend::rng::Rng;
use crate::backend::settings::SamplingParams;

/// The first index of the largest logit (torch.argmax's tie rule).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Reusable buffers of the sampler: per-token weights, a copy that selection reorders, and the
/// draw's per-block masses.
#[derive(Default, Debug, Clone)]
pub struct SamplerScratch {
    weights: Vec<f32>,
    select: Vec<(f32, u32)>,
    /// The draw's blocks: (kept mass, ties kept before the block).
    blocks: Vec<(f32, usize)>,
}

/// Which tokens survive top-k and top-p: every weight above `cutoff`, and the first `ties`
/// tokens (in id order) whose weight equals it. Walking tokens in id order against this
/// rule, rather than the order selection left them in, keeps seeded draws identical across
/// standard-library versions.
struct Kept {
    cutoff: f32,
    ties: usize,
}

/// Fills `scratch.weights` with the unnormalised temperature-scaled probabilities and
/// decides which tokens top-k and top-p keep.
fn filter(logits: &[f32], params: &SamplingParams, scratch: &mut SamplerScratch) -> Kept {
    let max = max(logits);
    let t = params.temperature;
    scratch.weights.clear();
    scratch
        .weights
        .extend(logits.iter().map(|&l| exp((l - max) / t)));
    let top_k = params.top_k > 0 && params.top_k < logits.len();
    if !top_k && params.top_p >= 1.0 {
        return Kept {
            cutoff: f32::NEG_INFINITY,
            ties: 0,
        };
    }
    if !top_k {
        return nucleus_by_buckets(&scratch.weights, params.top_p, &mut scratch.select);
    }
    let c = &mut scratch.select;
    c.clear();
    c.extend(
        scratch
            .weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (w, i as u32)),
    );
    c.select_nth_unstable_by(params.top_k - 1, descending);
    let mut n = params.top_k;
    if params.top_p < 1.0 {
        let total: f32 = c[..n].iter().map(|x| x.0).sum();
        n = nucleus_len(&mut c[..n], params.top_p * total);
    }
    kept_of(&c[..n])
}

/// The rule that keeps exactly `kept` (the largest weights): its smallest weight is the
/// cutoff, and the ties at the cutoff it holds are taken in id order.
fn kept_of(kept: &[(f32, u32)]) -> Kept {
    let cutoff = kept.iter().map(|x| x.0).fold(f32::INFINITY, f32::min);
    let above = kept.iter().filter(|x| x.0 > cutoff).count();
    Kept {
        cutoff,
        ties: kept.len() - above,
    }
}

/// Weight buckets: the top bits of a positive f32 order it, 16 buckets per octave; weights
/// are in (0, 1], so 2048 buckets cover them (NaN lands in the last).
const BUCKETS: usize = 2048;

fn bucket(w: f32) -> usize {
    ((w.to_bits() >> 19) as usize).min(BUCKETS - 1)
}

/// Top-p alone, in O(V) with small constants: sum the mass of each weight bucket, walk the
/// buckets down to the one where the nucleus ends, and select only within that bucket.
/// Every weight of a higher bucket is larger than any in it, so the nucleus is the higher
/// buckets plus the largest few of this one.
fn nucleus_by_buckets(weights: &[f32], top_p: f32, select: &mut Vec<(f32, u32)>) -> Kept {
    // Four interleaved histograms, so that runs of weights in one bucket do not wait on
    // each other's additions; summed bucket by bucket after.
    let mut lanes = [[0.0f32; BUCKETS]; 4];
    let chunks = weights.chunks_exact(4);
    for &w in chunks.remainder() {
        lanes[0][bucket(w)] += w;
    }
    for c in chunks {
        for (lane, &w) in lanes.iter_mut().zip(c) {
            lane[bucket(w)] += w;
        }
    }
    let mut mass = [0.0f32; BUCKETS];
    for (b, m) in mass.iter_mut().enumerate() {
        *m = (lanes[0][b] + lanes[1][b]) + (lanes[2][b] + lanes[3][b]);
    }
    let target = top_p * mass.iter().sum::<f32>();
    // Rounding may leave `target` a hair above the running sum: stop at the lowest bucket.
    let lowest = mass.iter().position(|&m| m > 0.0).unwrap_or(0);
    let (mut above, mut b) = (0.0f32, BUCKETS - 1);
    while b > lowest && (mass[b] == 0.0 || above + mass[b] < target) {
        above += mass[b];
        b -= 1;
    }
    select.clear();
    select.extend(
        weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| bucket(w) == b)
            .map(|(i, &w)| (w, i as u32)),
    );
    let n = nucleus_len(select, target - above);
    kept_of(&select[..n])
}

/// Calls `f(token, weight)` for each surviving token, in id order.
fn for_each_kept(weights: &[f32], kept: &Kept, mut f: impl FnMut(u32, f32) -> bool) {
    let mut ties = kept.ties;
    for (i, &w) in weights.iter().enumerate() {
        let keep = if w > kept.cutoff {
            true
        } else if w == kept.cutoff && ties > 0 {
            ties -= 1;
            true
        } else {
            false
        };
        if keep && !f(i as u32, w) {
            return;
        }
    }
}

/// The tokens that survive temperature, top-k and top-p, in id order, with their
/// unnormalised weights.
pub fn candidates(
    logits: &[f32],
    params: &SamplingParams,
    scratch: &mut SamplerScratch,
) -> Vec<(u32, f32)> {
    let kept = filter(logits, params, scratch);
    let mut out = vec![];
    for_each_kept(&scratch.weights, &kept, |id, w| {
        out.push((id, w));
        true
    });
    out
}

fn descending(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0)
}

/// Reorders `c` so its first n entries are the smallest set of largest weights whose mass
/// reaches `target`, and returns n. Expected O(len): quickselect halves the open range.
fn nucleus_len(c: &mut [(f32, u32)], target: f32) -> usize {
    // Invariant: c[..lo] is in the nucleus and holds less than `target`; the nucleus ends
    // in lo+1..=hi; `need` is the mass still missing.
    let (mut lo, mut hi, mut need) = (0, c.len(), target);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        c[lo..hi].select_nth_unstable_by(mid - lo, descending);
        let upper: f32 = c[lo..mid].iter().map(|x| x.0).sum();
        if upper >= need {
            hi = mid;
        } else {
            need -= upper;
            lo = mid;
        }
    }
    hi
}

/// Chooses the next token. Greedy when temperature is 0; otherwise one uniform draw from
/// `rng` over the surviving candidates, walked in token-id order.
pub fn sample(
    logits: &[f32],
    params: &SamplingParams,
    rng: &mut Rng,
    scratch: &mut SamplerScratch,
) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let kept = filter(logits, params, scratch);
    draw(&scratch.weights, &kept, rng.uniform(), &mut scratch.blocks)
}

/// Tokens per block of the draw's walk.
const DRAW_BLOCK: usize = 512;

/// The surviving token at which the running mass (in id order) first exceeds u times the
/// total. Block by block: each block's kept mass is summed in 8 lanes, whole blocks below
/// the draw are skipped, and only the block that holds it is walked token by token.
/// `blocks` is scratch.
fn draw(weights: &[f32], kept: &Kept, u: f32, blocks: &mut Vec<(f32, usize)>) -> u32 {
    blocks.clear();
    let mut ties = kept.ties;
    for b in weights.chunks(DRAW_BLOCK) {
        let mut acc = [0.0f32; 8];
        let mut at_cutoff = 0usize;
        let lanes = b.chunks_exact(8);
        let tail = lanes.remainder();
        for c in lanes {
            for i in 0..8 {
                acc[i] += if c[i] > kept.cutoff { c[i] } else { 0.0 };
                at_cutoff += usize::from(c[i] == kept.cutoff);
            }
        }
        let mut mass = acc.iter().sum::<f32>();
        for &w in tail {
            mass += if w > kept.cutoff { w } else { 0.0 };
            at_cutoff += usize::from(w == kept.cutoff);
        }
        let tied = at_cutoff.min(ties);
        if tied > 0 {
            mass += tied as f32 * kept.cutoff;
        }
        blocks.push((mass, ties));
        ties -= tied;
    }
    let total: f32 = blocks.iter().map(|b| b.0).sum();
    let r = u * total;
    let block_of = |i: usize| {
        let tokens = &weights[i * DRAW_BLOCK..((i + 1) * DRAW_BLOCK).min(weights.len())];
        let rule = Kept {
            cutoff: kept.cutoff,
            ties: blocks[i].1,
        };
        (tokens, rule)
    };
    let (mut acc, mut last_block) = (0.0f32, 0);
    for (i, &(mass, _)) in blocks.iter().enumerate() {
        if mass == 0.0 {
            continue;
        }
        last_block = i;
        if acc + mass <= r {
            acc += mass;
            continue;
        }
        let (tokens, rule) = block_of(i);
        let mut found = None;
        for_each_kept(tokens, &rule, |id, w| {
            acc += w;
            found = (r < acc).then_some(id);
            found.is_none()
        });
        if let Some(id) = found {
            return (i * DRAW_BLOCK) as u32 + id;
        }
        // The walk's sum fell a rounding short of the block's: the draw lies further on.
    }
    // Rounding can leave r at or past every kept token's running mass: the last is chosen.
    let (tokens, rule) = block_of(last_block);
    let mut last = 0;
    for_each_kept(tokens, &rule, |id, _| {
        last = id;
        true
    });
    (last_block * DRAW_BLOCK) as u32 + last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64: softmax(l / T), keep the top k, then the smallest prefix of
    /// the descending order whose mass reaches top_p; renormalise. Returns (token, prob).
    fn reference(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
        let t = p.temperature as f64;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            probs.truncate(p.top_k);
        }
        let z: f64 = probs.iter().map(|x| x.1).sum();
        let mut cum = 0.0;
        let mut keep = 0;
        for x in &probs {
            keep += 1;
            cum += x.1 / z;
            if cum >= p.top_p as f64 {
                break;
            }
        }
        probs.truncate(keep);
        let z: f64 = probs.iter().map(|x| x.1).sum();
        probs.iter().map(|&(i, w)| (i, w / z)).collect()
    }

    fn kept_set(logits: &[f32], p: &SamplingParams) -> Vec<u32> {
        candidates(logits, p, &mut SamplerScratch::default())
            .iter()
            .map(|c| c.0)
            .collect()
    }

    #[test]
    fn surviving_set_matches_the_definition_on_random_logits() {
        let mut rng = Rng::new(3);
        for trial in 0..200 {
            let v = 1 + trial % 97;
            let logits: Vec<f32> = (0..v).map(|_| 3.0 * rng.normal()).collect();
            for &(temperature, top_p, top_k) in &[
                (1.0, 1.0, 0),
                (0.8, 0.95, 0),
                (0.5, 0.5, 0),
                (1.3, 0.9, 5),
                (1.0, 1.0, 3),
                (0.7, 0.01, 0),
            ] {
                let p = SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                };
                let mut want: Vec<u32> = reference(&logits, &p).iter().map(|x| x.0).collect();
                want.sort();
                assert_eq!(kept_set(&logits, &p), want, "trial {trial}, params {p:?}");
            }
        }
    }

    #[test]
    fn ties_at_the_boundary_keep_the_lowest_ids() {
        let logits = [0.5f32, 1.0, 1.0, 2.0, 1.0, 1.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 3,
        };
        assert_eq!(kept_set(&logits, &p), vec![1, 2, 3]);
        let mut want: Vec<u32> = reference(&logits, &p).iter().map(|x| x.0).collect();
        want.sort();
        assert_eq!(kept_set(&logits, &p), want);
        let flat = [1.0f32; 4];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            top_k: 0,
        };
        assert_eq!(kept_set(&flat, &p), vec![0, 1]);
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.99999994,
            top_k: 0,
        };
        assert_eq!(kept_set(&flat, &p), vec![0, 1, 2, 3]);
    }

    #[test]
    fn sampled_frequencies_follow_the_filtered_distribution() {
        let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, -3.0];
        let p = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            top_k: 0,
        };
        let want = reference(&logits, &p);
        let mut rng = Rng::new(42);
        let mut scratch = SamplerScratch::default();
        let draws = 200_000;
        let mut counts = [0usize; 6];
        for _ in 0..draws {
            counts[sample(&logits, &p, &mut rng, &mut scratch) as usize] += 1;
        }
        for (id, prob) in &want {
            let freq = counts[*id as usize] as f64 / draws as f64;
            let sigma = (prob * (1.0 - prob) / draws as f64).sqrt();
            assert!(
                (freq - prob).abs() < 5.0 * sigma + 1e-4,
                "token {id}: {freq} vs {prob}"
            );
        }
        let kept: Vec<u32> = want.iter().map(|x| x.0).collect();
        for (id, &c) in counts.iter().enumerate() {
            if !kept.contains(&(id as u32)) {
                assert_eq!(c, 0, "token {id} was filtered out but sampled");
            }
        }
    }

    /// The draw by definition: the first kept token (in id order) whose running mass, in
    /// f64, exceeds u times the kept total; None where u * total is within `slack` of a
    /// token's boundary (rounding may put the draw on either side).
    fn drawn_by_definition(weights: &[f32], kept: &Kept, u: f64, slack: f64) -> Option<u32> {
        let mut kept_w = vec![];
        for_each_kept(weights, kept, |id, w| {
            kept_w.push((id, w as f64));
            true
        });
        let total: f64 = kept_w.iter().map(|x| x.1).sum();
        let r = u * total;
        let mut acc = 0.0;
        for &(id, w) in &kept_w {
            acc += w;
            if (r - acc).abs() < slack * total {
                return None;
            }
            if r < acc {
                return Some(id);
            }
        }
        kept_w.last().map(|x| x.0)
    }

    #[test]
    fn block_walk_draws_the_token_the_running_mass_gives() {
        let mut rng = Rng::new(11);
        let mut scratch = SamplerScratch::default();
        let mut compared = 0;
        for (v, top_p, top_k) in [
            (3000, 0.95, 0),
            (5000, 1.0, 0),
            (1100, 0.5, 0),
            (700, 0.9, 40),
            (7, 0.9, 0),
        ] {
            let logits: Vec<f32> = (0..v).map(|_| 0.7 * rng.normal()).collect();
            let p = SamplingParams {
                temperature: 0.8,
                top_p,
                top_k,
            };
            let kept = filter(&logits, &p, &mut scratch);
            let weights = scratch.weights.clone();
            for i in 0..400 {
                let u = (i as f32 + 0.5) / 400.0;
                let got = draw(&weights, &kept, u, &mut vec![]);
                if let Some(want) = drawn_by_definition(&weights, &kept, u as f64, 1e-5) {
                    assert_eq!(got, want, "V {v}, top-p {top_p}, top-k {top_k}, u {u}");
                    compared += 1;
                }
            }
            // A draw at the very top of the mass takes the last kept token.
            let last = drawn_by_definition(&weights, &kept, 1.0, 0.0).unwrap();
            assert_eq!(
                draw(&weights, &kept, 1.0 - f32::EPSILON / 2.0, &mut vec![]),
                last
            );
        }
        assert!(
            compared > 1900,
            "only {compared} draws away from a boundary"
        );
        // Ties at the cutoff: the flat row keeps its first half, so every draw lands there,
        // and spread evenly over it (1,200 tokens over three blocks).
        let weights = vec![0.25f32; 2400];
        let kept = Kept {
            cutoff: 0.25,
            ties: 1200,
        };
        for i in 0..100 {
            let u = (i as f32 + 0.5) / 100.0;
            let want = (u * 1200.0) as u32;
            assert_eq!(draw(&weights, &kept, u, &mut vec![]), want, "u {u}");
        }
    }

    #[test]
    fn temperature_sharpens_and_greedy_takes_the_first_maximum() {
        let logits = [1.0f32, 3.0, 3.0, 2.0];
        assert_eq!(argmax(&logits), 1);
        let mut rng = Rng::new(1);
        let mut scratch = SamplerScratch::default();
        assert_eq!(
            sample(&logits, &SamplingParams::GREEDY, &mut rng, &mut scratch),
            1
        );
        for temperature in [0.05, 1e-30, 1e-40] {
            let cold = SamplingParams {
                temperature,
                top_p: 0.9,
                top_k: 0,
            };
            for _ in 0..100 {
                let t = sample(&logits, &cold, &mut rng, &mut scratch);
                assert!(t == 1 || t == 2, "temperature {temperature} drew {t}");
            }
        }
    }

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let draw = |mut r: Rng| (0..8).map(|_| r.next_u64()).collect::<Vec<_>>();
        assert_eq!(
            draw(Rng::for_stream(7, 1, 2)),
            draw(Rng::for_stream(7, 1, 2))
        );
        assert_ne!(
            draw(Rng::for_stream(7, 1, 2)),
            draw(Rng::for_stream(7, 2, 1))
        );
        assert_ne!(draw(Rng::new(0)), draw(Rng::new(1)));
    }
}
