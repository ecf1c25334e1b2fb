// The row pass of the fused LM-head log-probs, on a chunk of logits that cuBLAS computed
// (hidden @ W^T for the rows that predict a completion token): log-softmax and gather in one
// pass over each row, then, for training, the gradient written over the logits in place.
// Only one chunk of logits ever exists. CPU twin: src/backend/cpu/logprobs.rs (the same
// math on its chunk buffer).
#include "common.cuh"

// logits: (R, V); targets: (R); logp, lse: (R). One block per row.
extern "C" __global__ void logprob_rows(float* logp, float* lse, const float* logits,
                                        const unsigned* targets, int v) {
    const float* row = logits + (size_t)blockIdx.x * v;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += expf(row[i] - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float l = m + logf(s);
        lse[blockIdx.x] = l;
        logp[blockIdx.x] = row[targets[blockIdx.x]] - l;
    }
}

// logits (R, V) become d(loss)/d(logits) = upstream[r] * (onehot(target) - softmax), in
// place (d logp_t / d z_j = [j = t] - softmax_j); lse from logprob_rows; upstream: (R),
// d(loss)/d(logp of row r). One block per row.
extern "C" __global__ void logprob_grad_rows(float* logits, const unsigned* targets,
                                             const float* lse, const float* upstream, int v) {
    float* row = logits + (size_t)blockIdx.x * v;
    const float l = lse[blockIdx.x], up = upstream[blockIdx.x];
    const unsigned t = targets[blockIdx.x];
    for (int i = threadIdx.x; i < v; i += blockDim.x)
        row[i] = up * ((i == (int)t ? 1.0f : 0.0f) - expf(row[i] - l));
}
