// The row passes of the fused LM-head log-probs, on a chunk of logits that cuBLAS computed
// (hidden @ W^T for the rows that predict a completion token): log-softmax and gather in one
// pass over each row, and, for training, the gradient rows in the storage type the next two
// products read. Only one chunk of logits ever exists. Also the per-sequence sums of the
// log-probs and their backward (a sequence's upstream copied to each of its rows).
// CPU twins: src/backend/cpu/logprobs.rs and sums_per_sequence in src/model/training.rs.
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

// dlogits (R, V) = upstream[r] * (onehot(target) - softmax), d logp_t / d z_j being
// [j = t] - softmax_j; logits: (R, V) f32; lse from logprob_rows; upstream: (R),
// d(loss)/d(logp of row r). One block per row. dlogits may be logits itself (f32): each
// element is read, then written, by the same thread, so neither pointer is __restrict__.
template <typename T>
__device__ void grad_rows(T* dlogits, const float* logits, const unsigned* targets,
                          const float* lse, const float* upstream, int v) {
    const size_t base = (size_t)blockIdx.x * v;
    const float l = lse[blockIdx.x], up = upstream[blockIdx.x];
    const int t = (int)targets[blockIdx.x];
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float g = up * ((i == t ? 1.0f : 0.0f) - expf(logits[base + i] - l));
        dlogits[base + i] = from_f32<T>(g);
    }
}

extern "C" __global__ void logprob_grad_rows_f32(float* dlogits, const float* logits,
                                                 const unsigned* targets, const float* lse,
                                                 const float* upstream, int v) {
    grad_rows(dlogits, logits, targets, lse, upstream, v);
}

extern "C" __global__ void logprob_grad_rows_bf16(__nv_bfloat16* dlogits, const float* logits,
                                                  const unsigned* targets, const float* lse,
                                                  const float* upstream, int v) {
    grad_rows(dlogits, logits, targets, lse, upstream, v);
}

// Sum over the block in f64 (blockDim.x a multiple of 32, at most 1024); thread 0 gets it.
// The tree is fixed, so the result does not depend on scheduling.
__device__ double block_sum_f64(double x) {
    __shared__ double partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    x = lane < warps ? partial[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// sums: (S) = the sum of logp over rows row_starts[s]..row_starts[s+1]; row_starts: (S + 1).
// One block per sequence, accumulated in f64 (as the CPU twin does), no atomics.
extern "C" __global__ void sequence_sums(double* sums, const float* logp, const int* row_starts) {
    const int s = blockIdx.x, begin = row_starts[s], end = row_starts[s + 1];
    double acc = 0.0;
    for (int r = begin + threadIdx.x; r < end; r += blockDim.x) acc += (double)logp[r];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) sums[s] = acc;
}

// dlogp: (M) = dseq[s] for the rows of sequence s (row_starts: (S + 1), nondecreasing), 0 for
// a row outside every sequence. One thread per row, grid-stride; s by binary search.
extern "C" __global__ void expand_per_row(float* dlogp, const float* dseq, const int* row_starts,
                                          int s_count, int m) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < m; r += gridDim.x * blockDim.x) {
        float d = 0.0f;
        if (s_count > 0 && r >= row_starts[0] && r < row_starts[s_count]) {
            // The last s with row_starts[s] <= r: then r < row_starts[s + 1].
            int lo = 0, hi = s_count;  // row_starts[lo] <= r < row_starts[hi]
            while (hi - lo > 1) {
                const int mid = (lo + hi) / 2;
                if (row_starts[mid] <= r) lo = mid; else hi = mid;
            }
            d = dseq[lo];
        }
        dlogp[r] = d;
    }
}
