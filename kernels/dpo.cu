// The DPO loss over per-sequence summed log-probs, one thread per pair, its scalar math in
// f64 exactly as the CPU twin (dpo_loss in src/train/loss.rs) writes it: sigmoid with label
// smoothing, IPO on per-token means, hinge; an optional NLL term on the chosen completion;
// each pair's share of the optimizer batch's mean.

// log(sigmoid(x)) without overflow for large |x|.
__device__ double log_sigmoid(double x) { return fmin(x, 0.0) - log1p(exp(-fabs(x))); }

__device__ double sigmoid(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}

// The loss types, as DpoLossType on the host.
#define DPO_SIGMOID 0
#define DPO_IPO 1
#define DPO_HINGE 2

// policy, reference: (2P) summed completion log-probs, chosen and rejected of each pair
// interleaved [c0, r0, c1, r1, ...]; n_tokens: (2P) completion lengths, in the same order;
// dseq: (2P) d(loss)/d(policy sum) assigned; stats: (P, 6) assigned, per pair: loss share
// (NLL term included), reward_chosen, reward_rejected, logp_chosen, logp_rejected, nll (the
// row DpoTotals::add_pair takes). per_pair is 1 / batch pairs; chosen_tokens the batch's
// chosen completion tokens. Grid-stride over pairs.
extern "C" __global__ void dpo_loss(float* dseq, double* stats, const float* policy,
                                    const float* reference, const int* n_tokens, int pairs,
                                    int loss_type, double beta, double label_smoothing,
                                    double nll_alpha, double per_pair, double chosen_tokens) {
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += gridDim.x * blockDim.x) {
        const double chosen = policy[2 * p], rejected = policy[2 * p + 1];
        double scale_c = 1.0, scale_r = 1.0;
        if (loss_type == DPO_IPO) {
            scale_c = 1.0 / (double)n_tokens[2 * p];
            scale_r = 1.0 / (double)n_tokens[2 * p + 1];
        }
        const double pc = chosen * scale_c, pr = rejected * scale_r;
        const double rc = (double)reference[2 * p] * scale_c;
        const double rr = (double)reference[2 * p + 1] * scale_r;
        const double margin = (pc - rc) - (pr - rr);
        double loss, dmargin;
        if (loss_type == DPO_SIGMOID) {
            const double z = beta * margin, eps = label_smoothing;
            loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
            dmargin = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z));
        } else if (loss_type == DPO_HINGE) {
            const double z = beta * margin;
            loss = z < 1.0 ? 1.0 - z : 0.0;
            dmargin = z < 1.0 ? -beta : 0.0;
        } else {
            const double d = margin - 1.0 / (2.0 * beta);
            loss = d * d;
            dmargin = 2.0 * d;
        }
        double share = loss * per_pair;
        double dchosen = dmargin * scale_c * per_pair;
        const double drejected = -dmargin * scale_r * per_pair;
        double nll = 0.0;
        if (nll_alpha != 0.0) {
            nll = -chosen / chosen_tokens;
            share += nll_alpha * nll;
            dchosen -= nll_alpha / chosen_tokens;
        }
        dseq[2 * p] = (float)dchosen;
        dseq[2 * p + 1] = (float)drejected;
        double* row = stats + 6 * (size_t)p;
        row[0] = share;
        row[1] = beta * (pc - rc);
        row[2] = beta * (pr - rr);
        row[3] = pc;
        row[4] = pr;
        row[5] = nll;
    }
}
