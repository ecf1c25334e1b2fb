// The row passes of the fused LM-head log-probs, on a chunk of logits that cuBLAS computed
// (hidden @ W^T for the rows that predict a completion token): log-softmax and gather in one
// pass over each row, and, for training, the gradient rows in the storage type the next two
// products read. Only one chunk of logits ever exists. The per-sequence sums of the
// log-probs are the host's (src/model/graph/logprobs.rs), from the M row log-probs.
// CPU twin: src/backend/cpu/logprobs.rs.
#include "common.cuh"

// The row passes stream the chunk's logits once, so they are bound by memory bandwidth only
// if the whole GPU takes part. The forward reads each row once (max and sum of exp online);
// where a chunk has too few rows for one block per row to keep enough loads in flight (the
// launcher's rule: fewer than 2 blocks per SM), it splits each row over several blocks and
// combines the splits in a second, tiny kernel. The gradient pass is elementwise over R x V.
// Loads are 16-byte float4 where the address allows: a row of an odd V starts anywhere
// within 16 bytes, so each row (or the flat array) is an unaligned scalar head of up to 3
// elements, an aligned float4 body and a scalar tail of up to 3. Every reduction has a fixed
// order (per thread, the butterfly in a warp, then the warps in order; the splits in order),
// so the results do not depend on scheduling.

// float4 loads each thread issues before it uses the first one: 32 KB (forward) and 16 KB
// (gradient) in flight per block of 256 threads, 4 blocks per SM (the launch bounds).
constexpr int kRowUnroll = 8, kGradUnroll = 4;

// (m, s): the max of a set of logits and the sum of exp(x - m) over it; empty: (-inf, 0).
// The exponent's base is m, or 0 while m = -inf (every value seen is -inf): each term is then
// exp(-inf) = 0, not exp(-inf - -inf) = NaN. A NaN logit makes s NaN (fmaxf skips it in m).
__device__ __forceinline__ float exp_base(float m) { return m == -INFINITY ? 0.0f : m; }

__device__ __forceinline__ void add1(float& m, float& s, float x) {
    if (x > m) {
        s *= expf(m - x);
        m = x;
    }
    s += expf(x - exp_base(m));
}

// Four values: one rescale (when the max grows), four exps.
__device__ __forceinline__ void add4(float& m, float& s, float4 x) {
    const float mx = fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w));
    if (mx > m) {
        s *= expf(m - mx);
        m = mx;
    }
    const float b = exp_base(m);
    s += (expf(x.x - b) + expf(x.y - b)) + (expf(x.z - b) + expf(x.w - b));
}

// (m, s) of the union of two sets; commutative bit for bit.
__device__ __forceinline__ void merge(float& m, float& s, float om, float os) {
    const float mx = fmaxf(m, om), b = exp_base(mx);
    s = s * expf(m - b) + os * expf(om - b);
    m = mx;
}

// (m, s) over the block (blockDim.x a multiple of 32, at most 1024); thread 0 gets it.
__device__ __forceinline__ void block_max_sum(float& m, float& s) {
    __shared__ float pm[32], ps[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, offset);
        const float os = __shfl_xor_sync(0xffffffffu, s, offset);
        merge(m, s, om, os);
    }
    if (lane == 0) {
        pm[warp] = m;
        ps[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? pm[lane] : -INFINITY;
        s = lane < warps ? ps[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float om = __shfl_xor_sync(0xffffffffu, m, offset);
            const float os = __shfl_xor_sync(0xffffffffu, s, offset);
            merge(m, s, om, os);
        }
    }
}

// logits: (R, V); targets: (R); logp, lse: (R); partials: (R, splits, 2). Block b of the
// R x splits in the grid takes split s = b % splits of row r = b / splits: the row's float4
// body (from its first 16-byte aligned element) cut into `splits` equal runs, split 0 also
// taking the scalar head and tail. It reduces its part to (max, sum of exp(x - max)), written
// to partials[r][s]; with one split it finishes the row itself: lse[r] = max + log(sum),
// logp[r] = row[target] - lse[r] (logprob_row_combine is then not launched).
extern "C" __global__ void __launch_bounds__(256, 4)
    logprob_row_partials(float* partials, float* logp, float* lse, const float* logits,
                         const unsigned* targets, int v, int splits) {
    const int r = blockIdx.x / splits, split = blockIdx.x % splits;
    const float* row = logits + (size_t)r * v;
    // Rows start at 4-byte boundaries: 0 to 3 scalars up to the first 16-byte one.
    const int head = min((int)(((16 - ((size_t)row & 15)) & 15) >> 2), v);
    const int nvec = (v - head) >> 2, tail = head + 4 * nvec;
    const int per = (nvec + splits - 1) / splits;
    const int k0 = min(split * per, nvec), k1 = min(k0 + per, nvec);
    float m = -INFINITY, s = 0.0f;
    if (split == 0) {
        if ((int)threadIdx.x < head) add1(m, s, row[threadIdx.x]);
        if ((int)threadIdx.x < v - tail) add1(m, s, row[tail + threadIdx.x]);
    }
    const float4* body = reinterpret_cast<const float4*>(row + head);
    const int step = blockDim.x;
    for (int k = k0 + threadIdx.x; k < k1; k += kRowUnroll * step) {
        float4 x[kRowUnroll];
#pragma unroll
        for (int j = 0; j < kRowUnroll; ++j)
            if (k + j * step < k1) x[j] = __ldg(body + k + j * step);
#pragma unroll
        for (int j = 0; j < kRowUnroll; ++j)
            if (k + j * step < k1) add4(m, s, x[j]);
    }
    block_max_sum(m, s);
    if (threadIdx.x == 0) {
        if (splits == 1) {
            const float l = m + logf(s);
            lse[r] = l;
            logp[r] = row[targets[r]] - l;
        } else {
            partials[2 * (size_t)blockIdx.x] = m;
            partials[2 * (size_t)blockIdx.x + 1] = s;
        }
    }
}

// lse[r] = max + log(sum) of the row's partials merged in split order, logp[r] =
// logits[r][target] - lse[r]. One thread per row, grid-stride.
extern "C" __global__ void logprob_row_combine(float* logp, float* lse, const float* partials,
                                               const float* logits, const unsigned* targets,
                                               int v, int rows, int splits) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
        const float* p = partials + 2 * (size_t)r * splits;
        float m = -INFINITY, s = 0.0f;
        for (int i = 0; i < splits; ++i) merge(m, s, p[2 * i], p[2 * i + 1]);
        const float l = m + logf(s);
        lse[r] = l;
        logp[r] = logits[(size_t)r * v + targets[r]] - l;
    }
}

// One gradient element: upstream * ([c = target] - exp(x - lse)) of row r, column c.
__device__ __forceinline__ float grad_of(float x, unsigned c, unsigned t, float l, float up) {
    return up * ((c == t ? 1.0f : 0.0f) - expf(x - l));
}

// dlogits[e] for flat element e = r V + c, dividing.
template <typename T>
__device__ __forceinline__ void grad_one(T* dlogits, const float* logits, const unsigned* targets,
                                         const float* lse, const float* upstream, unsigned v,
                                         long long e) {
    const long long r = e / v;
    const unsigned c = (unsigned)(e - r * v);
    dlogits[e] = from_f32<T>(grad_of(logits[e], c, targets[r], lse[r], upstream[r]));
}

// 16 (f32) or 8 (bf16) aligned bytes in one store: the intrinsic pins the vector width (a
// plain float4 store came out of the compiler split into narrower ones).
__device__ __forceinline__ void store4(float* p, const float* g) {
    __stwb(reinterpret_cast<float4*>(p), make_float4(g[0], g[1], g[2], g[3]));
}

__device__ __forceinline__ void store4(__nv_bfloat16* p, const float* g) {
    // .x is the low half: the element at the lower address.
    const __nv_bfloat162 lo = __floats2bfloat162_rn(g[0], g[1]);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(g[2], g[3]);
    uint2 u;
    memcpy(&u.x, &lo, 4);
    memcpy(&u.y, &hi, 4);
    __stwb(reinterpret_cast<uint2*>(p), u);
}

// dlogits (R, V) = upstream[r] * (onehot(target) - softmax), d logp_t / d z_j being
// [j = t] - softmax_j; logits: (R, V) f32; lse from logprob_rows; upstream: (R),
// d(loss)/d(logp of row r); n = R V. Elementwise over the flat array, grid-stride: thread g
// takes float4 g, g + G, g + 2G, ... of the aligned body (G threads in the grid, kGradUnroll of
// them loaded at once), tracking the (row, column) of each vector's first element by adding
// the stride's (rows, columns) rather than dividing; a vector that crosses a row end
// switches to the next row's lse, upstream and target there. dlogits may be logits itself
// (f32): each element is read, then written, by the same thread, so neither pointer is
// __restrict__ (nor read through the non-coherent path). Where the gradient rows' address
// at the logits' first aligned element is not aligned to 4 of T (views at unrelated offsets;
// never the chunked pass, whose buffers start at allocations), it goes scalar throughout.
template <typename T>
__device__ void grad_rows(T* dlogits, const float* logits, const unsigned* targets,
                          const float* lse, const float* upstream, unsigned v, long long n) {
    const long long threads = (long long)gridDim.x * blockDim.x;
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long head = min((long long)(((16 - ((size_t)logits & 15)) & 15) >> 2), n);
    if (((size_t)(dlogits + head) & (4 * sizeof(T) - 1)) != 0) {
        for (long long e = g; e < n; e += threads)
            grad_one(dlogits, logits, targets, lse, upstream, v, e);
        return;
    }
    const long long nvec = (n - head) >> 2, tail = head + 4 * nvec;
    if (g < head) grad_one(dlogits, logits, targets, lse, upstream, v, g);
    if (g < n - tail) grad_one(dlogits, logits, targets, lse, upstream, v, tail + g);
    const float4* in = reinterpret_cast<const float4*>(logits + head);
    T* out = dlogits + head;
    // (r, c) of element head + 4 k, and what one stride of 4 G elements adds to it.
    const long long first = head + 4 * g;
    long long r = first / v;
    unsigned c = (unsigned)(first - r * v);
    const long long stride_r = 4 * threads / v;
    const unsigned stride_c = (unsigned)(4 * threads - stride_r * v);
    for (long long k = g; k < nvec; k += kGradUnroll * threads) {
        float4 x[kGradUnroll];
        long long rs[kGradUnroll];
        unsigned cs[kGradUnroll];
#pragma unroll
        for (int j = 0; j < kGradUnroll; ++j) {
            if (k + j * threads < nvec) x[j] = in[k + j * threads];
            rs[j] = r;
            cs[j] = c;
            // c + stride_c < 2 V <= 2^32 - 2: no overflow in unsigned.
            r += stride_r;
            c += stride_c;
            if (c >= v) {
                c -= v;
                ++r;
            }
        }
#pragma unroll
        for (int j = 0; j < kGradUnroll; ++j) {
            if (k + j * threads >= nvec) continue;
            long long rr = rs[j];
            unsigned cc = cs[j];
            float l = lse[rr], up = upstream[rr];
            unsigned t = targets[rr];
            const float xs[4] = {x[j].x, x[j].y, x[j].z, x[j].w};
            float gs[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (cc == v) {  // the vector crosses into the next row (more than once when V < 4)
                    cc = 0;
                    ++rr;
                    l = lse[rr];
                    up = upstream[rr];
                    t = targets[rr];
                }
                gs[i] = grad_of(xs[i], cc, t, l, up);
                ++cc;
            }
            store4(out + 4 * (k + j * threads), gs);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 4)
    logprob_grad_rows_f32(float* dlogits, const float* logits, const unsigned* targets,
                          const float* lse, const float* upstream, int v, long long n) {
    grad_rows(dlogits, logits, targets, lse, upstream, (unsigned)v, n);
}

extern "C" __global__ void __launch_bounds__(256, 4)
    logprob_grad_rows_bf16(__nv_bfloat16* dlogits, const float* logits, const unsigned* targets,
                           const float* lse, const float* upstream, int v, long long n) {
    grad_rows(dlogits, logits, targets, lse, upstream, (unsigned)v, n);
}
