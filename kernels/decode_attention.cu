// Decode attention: one new query row per sequence attends over its whole key/value cache,
// with grouped-query heads. CPU twin: attention_forward in src/backend/cpu/attention.rs with
// one row per sequence at position len - 1.
//
// Layout: q, out: (B, H, D); lse: (B, H) f32, the natural log of each softmax's normaliser
// (scores scaled by `scale`, 1/sqrt(D)); k, v: (B, Tmax, Hkv, D), sequence b holding
// positions 0..lens[b], lens[b] in 1..=Tmax. Query head h reads kv head h / (H / Hkv).
// Storage is f32 or bf16; all arithmetic is f32. D is at most 256.
//
// Design (flash-decoding): the work is memory-bound (each K/V element is used by the G =
// H / Hkv query heads of its group and nothing else), so every K/V row is read from device
// memory once, by one block, with 16-byte coalesced loads, and the cache's positions are
// split so that small batches still fill the GPU.
// - split kernel: one block of 128 threads (4 warps) per (split of split_len positions, kv
//   head g and chunk of up to GM of its query heads, sequence b); grid (splits, Hkv *
//   chunks, B). GM (1, 2, 4 or 8) is the group size rounded up to a power of two, capped at
//   8: a group of more than 8 heads takes several chunks (each re-reading its K/V rows,
//   mostly from L2). A split at or beyond lens[b] returns at once.
//   The block stages its GM query vectors in shared memory once (f32, pre-multiplied by
//   scale * log2(e), so the softmax runs in base 2 with exp2f; rows zero-padded, heads past
//   the group zero). Lanes split D, E = 8 elements each (one 16-byte load of bf16, two of
//   f32): lpk = the power of two >= D / 8 lanes (at most 32) take one key, so a warp takes
//   kpw = 32 / lpk keys at a time and the block runs 4 * kpw independent "streams". Each
//   stream walks its keys of the split, U = 2 keys per step (both rows' K and V loads
//   issued before use), the dot products reduced over the lpk lanes with xor shuffles (so
//   every lane of the key's lanes holds the same score), and keeps, per query head, an online
//   softmax (running max m, sum l) and the unnormalised output for its 8 elements of D in
//   registers: each K and V element is loaded once and used by all GM heads. Keys past the
//   split's end are not loaded (zero) and score -inf.
//   At the split's end the streams of a warp merge by xor shuffles (rescaled to the warp's
//   max), the 4 warps through shared memory in a fixed order, and threads over (head,
//   element) write the split's partial (max m, sum l, unnormalised out) to the scratch; or,
//   when there is only one split (n_split == 1), the final out = o / l and lse directly, with
//   no combine.
// - combine kernel (only when n_split > 1): one block of 128 threads per (head, sequence)
//   merges that sequence's ceil(len / split_len) partials in split order: M = max m_s,
//   L = sum l_s 2^(m_s - M), out = sum o_s 2^(m_s - M) / L, lse = (M + log2 L) ln 2.
//   No atomics anywhere, so the result does not depend on scheduling: deterministic.
// Scratch: (B, H, n_split) maxima, then as many sums, then (B, H, n_split, D) outputs, f32;
// unused (may be empty) with one split. The launcher (src/backend/cuda/decode_attention.rs)
// picks n_split from Tmax, B, Hkv and the SM count, and owns the scratch size formula.
// Keys whose rows are not 16-byte aligned (D * sizeof(T) not a multiple of 16, or an
// unaligned base) take the scalar-load instantiation (VEC = false), same arithmetic.
//
// What would make it faster: cp.async / TMA double-buffering of K/V tiles so more bytes are
// in flight per warp; fusing the combine into the split kernel (last block per head by an
// atomic counter, merging in split order to stay deterministic) to save a launch; a
// persistent grid balanced over the actual lens (the split count follows Tmax, so short
// sequences leave blocks that exit at once).
#include "common.cuh"

namespace dec {

constexpr int THREADS = 128;
constexpr int WARPS = THREADS / 32;
constexpr int E = 8;            // elements of D per lane
constexpr int U = 2;            // keys per stream per step
constexpr int MAX_SPLITS = 256; // the launcher's cap (the combine's shared weights)
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// x = p[d0 .. d0 + 8) in f32; zero where the index is >= d or when !ok (nothing is read).
// VEC: p + d0 is 16-byte aligned and d a multiple of 16 / sizeof(element).
template <bool VEC>
__device__ __forceinline__ void load8(float (&x)[E], const float* p, int d0, int d, bool ok) {
    if (VEC) {
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f), c = a;
        if (ok && d0 < d) a = __ldg(reinterpret_cast<const float4*>(p + d0));
        if (ok && d0 + 4 < d) c = __ldg(reinterpret_cast<const float4*>(p + d0 + 4));
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
        x[4] = c.x, x[5] = c.y, x[6] = c.z, x[7] = c.w;
    } else {
#pragma unroll
        for (int e = 0; e < E; e++) x[e] = ok && d0 + e < d ? __ldg(p + d0 + e) : 0.0f;
    }
}
template <bool VEC>
__device__ __forceinline__ void load8(float (&x)[E], const __nv_bfloat16* p, int d0, int d,
                                      bool ok) {
    if (VEC) {
        uint4 r = make_uint4(0u, 0u, 0u, 0u);
        if (ok && d0 < d) r = __ldg(reinterpret_cast<const uint4*>(p + d0));
        const unsigned w[4] = {r.x, r.y, r.z, r.w};
        // bf16 -> f32 is exact: the 16 bits are the top half of the f32.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            x[2 * i] = __uint_as_float(w[i] << 16);
            x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int e = 0; e < E; e++) x[e] = ok && d0 + e < d ? __bfloat162float(p[d0 + e]) : 0.0f;
    }
}

// The lanes that take one key: the power of two >= d / E (d <= 256, so at most 32).
__device__ __forceinline__ int lanes_per_key(int d) {
    int lpk = 1;
    while (lpk * E < d) lpk <<= 1;
    return lpk;
}

// Dynamic shared memory (floats): q [GM][lpk * E], acc [WARPS][GM][d], m and l [WARPS][GM]
// each. The launcher computes the same size.
template <typename T, bool VEC, int GM>
__device__ void split(T* out, float* lse, float* part, const T* q, const T* k, const T* v,
                      const int* lens, int batch, int n_head, int n_kv_head, int d, int t_max,
                      float scale, int split_len, int n_split) {
    // GM <= 4: the query vectors live in registers too; GM = 8 reads them from shared
    // memory for each key (registers would spill).
    constexpr bool Q_REGS = GM <= 4;
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int group = n_head / n_kv_head;
    const int chunks = (group + GM - 1) / GM;
    const int s_idx = blockIdx.x, g = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const int b = blockIdx.z;
    const int len = min(lens[b], t_max);
    const int t_begin = s_idx * split_len;
    if (t_begin >= len) return;  // the whole block: no barrier is skipped by only some
    const int t_end = min(t_begin + split_len, len);
    const int h0 = g * group + c * GM;      // this block's first query head
    const int gb = min(GM, group - c * GM); // its heads

    const int lpk = lanes_per_key(d), kpw = 32 / lpk, dq = lpk * E;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kg = lane / lpk, d0 = (lane % lpk) * E;
    const int streams = WARPS * kpw, stream = warp * kpw + kg;

    float* s_q = smem;                        // [GM][dq]
    float* s_acc = s_q + GM * dq;             // [WARPS][GM][d]
    float* s_m = s_acc + WARPS * GM * d;      // [WARPS][GM]
    float* s_l = s_m + WARPS * GM;            // [WARPS][GM]
    const float qs = scale * LOG2E;
    for (int i = threadIdx.x; i < GM * dq; i += THREADS) {
        const int j = i / dq, x = i % dq;
        s_q[i] = j < gb && x < d ? to_f32(q[((size_t)b * n_head + h0 + j) * d + x]) * qs : 0.0f;
    }
    __syncthreads();
    float qr[Q_REGS ? GM : 1][E];
    if constexpr (Q_REGS) {
#pragma unroll
        for (int j = 0; j < GM; j++)
#pragma unroll
            for (int e = 0; e < E; e++) qr[j][e] = s_q[j * dq + d0 + e];
    }

    const size_t kv_row = (size_t)n_kv_head * d;
    const T* kb = k + ((size_t)b * t_max * n_kv_head + g) * d;
    const T* vb = v + ((size_t)b * t_max * n_kv_head + g) * d;
    float m[GM], l[GM], acc[GM][E];
#pragma unroll
    for (int j = 0; j < GM; j++) {
        m[j] = -INFINITY;
        l[j] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[j][e] = 0.0f;
    }

    // Every lane of the block runs the same steps (the bound is block-uniform), so the
    // full-warp shuffles are safe.
    for (int t0 = t_begin; t0 < t_end; t0 += streams * U) {
        float kf[U][E], vf[U][E];
        bool ok[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int t = t0 + u * streams + stream;
            ok[u] = t < t_end;
            const size_t row = (size_t)(ok[u] ? t : t_begin) * kv_row;
            load8<VEC>(kf[u], kb + row, d0, d, ok[u]);
            load8<VEC>(vf[u], vb + row, d0, d, ok[u]);
        }
        float s[U][GM];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int j = 0; j < GM; j++) {
                float x = 0.0f;
                if constexpr (Q_REGS) {
#pragma unroll
                    for (int e = 0; e < E; e++) x = fmaf(qr[j][e], kf[u][e], x);
                } else {
                    const float4* qj = reinterpret_cast<const float4*>(s_q + j * dq + d0);
                    const float4 a = qj[0], c4 = qj[1];
                    x = fmaf(a.x, kf[u][0], x);
                    x = fmaf(a.y, kf[u][1], x);
                    x = fmaf(a.z, kf[u][2], x);
                    x = fmaf(a.w, kf[u][3], x);
                    x = fmaf(c4.x, kf[u][4], x);
                    x = fmaf(c4.y, kf[u][5], x);
                    x = fmaf(c4.z, kf[u][6], x);
                    x = fmaf(c4.w, kf[u][7], x);
                }
                for (int o = lpk >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
                s[u][j] = ok[u] ? x : -INFINITY;
            }
#pragma unroll
        for (int j = 0; j < GM; j++) {
            float mx = s[0][j];
#pragma unroll
            for (int u = 1; u < U; u++) mx = fmaxf(mx, s[u][j]);
            const float mn = fmaxf(m[j], mx);
            const float ms = mn == -INFINITY ? 0.0f : mn;  // no key yet: keep exp2 finite
            const float cf = exp2f(m[j] - ms);
            l[j] *= cf;
#pragma unroll
            for (int e = 0; e < E; e++) acc[j][e] *= cf;
#pragma unroll
            for (int u = 0; u < U; u++) {
                const float p = exp2f(s[u][j] - ms);
                l[j] += p;
#pragma unroll
                for (int e = 0; e < E; e++) acc[j][e] = fmaf(p, vf[u][e], acc[j][e]);
            }
            m[j] = mn;
        }
    }

    // The warp's streams (lanes lpk apart hold the same elements of D) merge: rescaled to
    // the warp's max, then summed; every lane ends with the warp's values.
#pragma unroll
    for (int j = 0; j < GM; j++) {
        float mw = m[j];
        for (int o = lpk; o < 32; o <<= 1) mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, o));
        const float f = exp2f(m[j] - (mw == -INFINITY ? 0.0f : mw));
        float lw = l[j] * f;
        for (int o = lpk; o < 32; o <<= 1) lw += __shfl_xor_sync(0xffffffffu, lw, o);
#pragma unroll
        for (int e = 0; e < E; e++) {
            float a = acc[j][e] * f;
            for (int o = lpk; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            acc[j][e] = a;
        }
        m[j] = mw;
        l[j] = lw;
    }
    if (kg == 0) {
#pragma unroll
        for (int j = 0; j < GM; j++)
#pragma unroll
            for (int e = 0; e < E; e++)
                if (d0 + e < d) s_acc[(warp * GM + j) * d + d0 + e] = acc[j][e];
    }
    if (lane == 0) {
#pragma unroll
        for (int j = 0; j < GM; j++) {
            s_m[warp * GM + j] = m[j];
            s_l[warp * GM + j] = l[j];
        }
    }
    __syncthreads();
    // The warps merge in order. Warp 0's first stream holds key t_begin, so the max is
    // finite; a warp that saw no key has m = -inf and weight 0.
    for (int i = threadIdx.x; i < gb * d; i += THREADS) {
        const int j = i / d, x = i % d;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, s_m[w * GM + j]);
        float o = 0.0f, sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float f = exp2f(s_m[w * GM + j] - mx);
            o = fmaf(f, s_acc[(w * GM + j) * d + x], o);
            sum = fmaf(f, s_l[w * GM + j], sum);
        }
        const int bh = b * n_head + h0 + j;
        if (n_split == 1) {
            out[(size_t)bh * d + x] = from_f32<T>(o / sum);
            if (x == 0) lse[bh] = (mx + log2f(sum)) * LN2;
        } else {
            const size_t r = (size_t)bh * n_split + s_idx;
            const size_t rows = (size_t)batch * n_head * n_split;
            part[2 * rows + r * d + x] = o;
            if (x == 0) {
                part[r] = mx;
                part[rows + r] = sum;
            }
        }
    }
}

// One block per (head, sequence): merges the sequence's partials in split order.
template <typename T>
__device__ void combine(T* out, float* lse, const float* part, const int* lens, int batch,
                        int n_head, int d, int t_max, int split_len, int n_split) {
    __shared__ float w[MAX_SPLITS];
    const int h = blockIdx.x, b = blockIdx.y;
    const int len = min(lens[b], t_max);
    const int ns = min((len + split_len - 1) / split_len, n_split);
    const int bh = b * n_head + h;
    const size_t rows = (size_t)batch * n_head * n_split, r0 = (size_t)bh * n_split;
    const float* pm = part + r0;
    const float* pl = part + rows + r0;
    const float* po = part + 2 * rows + r0 * d;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < ns; s += blockDim.x) mx = fmaxf(mx, pm[s]);
    mx = block_max(mx);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < ns; s += blockDim.x) {
        const float f = exp2f(pm[s] - mx);
        w[s] = f;
        sum += f * pl[s];
    }
    sum = block_sum(sum);  // its __syncthreads also publishes w[] to the block
    const float inv = 1.0f / sum;
    for (int x = threadIdx.x; x < d; x += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < ns; s++) o = fmaf(w[s], po[(size_t)s * d + x], o);
        out[(size_t)bh * d + x] = from_f32<T>(o * inv);
    }
    if (threadIdx.x == 0) lse[bh] = (mx + log2f(sum)) * LN2;
}

}  // namespace dec

// split: grid (n_split, Hkv * chunks, B), 128 threads, dynamic shared memory as dec::split
// says. combine: grid (H, B), 128 threads. Arguments as the header says; part is the scratch.
#define DECODE_SPLIT(NAME, T, VEC, GM)                                                         \
    extern "C" __global__ void __launch_bounds__(dec::THREADS)                                 \
        NAME(T* out, float* lse, float* part, const T* q, const T* k, const T* v,             \
             const int* lens, int batch, int n_head, int n_kv_head, int d, int t_max,         \
             float scale, int split_len, int n_split) {                                        \
        dec::split<T, VEC, GM>(out, lse, part, q, k, v, lens, batch, n_head, n_kv_head, d,   \
                               t_max, scale, split_len, n_split);                              \
    }
#define DECODE_SPLITS(T, SUFFIX)                                                               \
    DECODE_SPLIT(decode_attention_split_g1_vec_##SUFFIX, T, true, 1)                           \
    DECODE_SPLIT(decode_attention_split_g2_vec_##SUFFIX, T, true, 2)                           \
    DECODE_SPLIT(decode_attention_split_g4_vec_##SUFFIX, T, true, 4)                           \
    DECODE_SPLIT(decode_attention_split_g8_vec_##SUFFIX, T, true, 8)                           \
    DECODE_SPLIT(decode_attention_split_g1_scalar_##SUFFIX, T, false, 1)                       \
    DECODE_SPLIT(decode_attention_split_g2_scalar_##SUFFIX, T, false, 2)                       \
    DECODE_SPLIT(decode_attention_split_g4_scalar_##SUFFIX, T, false, 4)                       \
    DECODE_SPLIT(decode_attention_split_g8_scalar_##SUFFIX, T, false, 8)                       \
    extern "C" __global__ void __launch_bounds__(dec::THREADS)                                 \
        decode_attention_combine_##SUFFIX(T* out, float* lse, const float* part,               \
                                          const int* lens, int batch, int n_head, int d,       \
                                          int t_max, int split_len, int n_split) {             \
        dec::combine<T>(out, lse, part, lens, batch, n_head, d, t_max, split_len, n_split);    \
    }

DECODE_SPLITS(float, f32)
DECODE_SPLITS(__nv_bfloat16, bf16)
