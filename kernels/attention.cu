// Fused causal attention over a packed batch of whole sequences (training), forward and
// backward, FlashAttention-2 style: the (T, T) score matrix never exists in device memory.
// CPU twins: attention_forward / attention_backward in src/backend/cpu/attention.rs.
//
// Layout: sequences packed row after row without padding; starts: (S + 1) prefix offsets,
// sequence s holding rows starts[s]..starts[s + 1] at positions 0, 1, ... q, out, dq, dout:
// (N, H, D); k, v, dk, dv: (N, Hkv, D); lse, delta: (N, H) f32. Query head h reads kv head
// h / (H / Hkv). Scores are scaled by `scale` (1/sqrt(D)); lse is the natural log of each
// row's softmax normaliser. Storage is f32 or bf16; all arithmetic is f32.
//
// Design (a first version: clear tiles, one template per head dim D; the scalar kernels use
// FMA on tiles staged in f32 shared memory):
// - forward: one block of 128 threads per (query tile of 64 rows, head, sequence), grid
//   flattened as (tile, sequence) with the longest tiles (the last ones) scheduled first.
//   It walks the key tiles of 32 from 0 up to the diagonal (tiles above it are never
//   visited), computes S = Q K^T on a 16 x 8 thread grid (4 rows x 4 keys per thread),
//   masks keys past the query's position (the diagonal tile) or past the sequence end,
//   keeps the online-softmax max m and sum l per row in registers (the 8 threads of a row
//   are 8 neighbouring lanes: shuffles reduce over them), stages P in shared memory and
//   accumulates O += P V in registers (4 rows x D/8 columns per thread); finally O / l and
//   lse = m + ln l for the rows inside the sequence.
// - backward: delta = rowsum(dout * out) first (one warp per row and head), dq's f32
//   accumulator zeroed by the launcher. Then one block per (key tile of 32, kv head,
//   sequence), tile 0 (which sees every query) first. It keeps its K and V tiles in shared
//   memory and dK, dV in registers, and walks the query heads of its GQA group and the query
//   tiles of 32 from the diagonal to the end: recomputes P = exp(S scale - lse), dP = dO V^T,
//   dS = P (dP - delta); dV += P^T dO, dK += dS^T Q (registers, so dk/dv are written once,
//   without atomics, deterministically), and dQ += dS K scale by f32 atomicAdd into the
//   accumulator, which a last pass converts to the storage type.
// - forward in bf16 at head dims 64 and 128 (forward_mma): the same grid on tensor cores,
//   mma.sync m16n8k16 through inline PTX as the backward below, FlashAttention-2 style: 4
//   warps of 16 query rows each, Q as A fragments in registers (ldmatrix, once), key tiles
//   of 64 double-buffered in shared memory by cp.async, S = Q K^T, the online softmax
//   (exp2, quad shuffles), P as bf16 A fragments and O += P V all in registers; O / l and
//   lse at the end. Shared memory: two stages of K, V (64, D + 8) bf16, 68 KB at D = 128.
//   Registers (ptxas): 168 at D = 128 (capped for 3 blocks per SM), 128 at D = 64 (4).
// - backward in bf16 at head dims 64 and 128 (backward_tc): mma.sync m16n8k16 through inline
//   PTX (bf16 operands, f32 accumulators; sm_80 and newer), whose fragment layouts are
//   documented, so products stay in registers. One block of 4 warps per (key tile of 64,
//   kv head, sequence), grid and order as the scalar backward. K and V (bf16, rows padded to
//   D + 8) stay in shared memory; warp w owns keys 16 w .. 16 w + 15 and keeps their dK, dV
//   (16 x D each, f32) in accumulator registers for the whole block. The query tiles of 64
//   (each head of the GQA group, from the diagonal on) come in by cp.async, double-buffered
//   (tile i + 1 loads during tile i; element-wise loads where a base is not 16-byte
//   aligned), with their lse and delta. Per tile, in two halves of 32 queries (to bound the
//   live registers): S^T = K_w Q^T and dP^T = V_w dO^T (16 x 32 accumulators), P^T =
//   exp2(S^T scale log2e - lse log2e) masked, dS^T = P^T (dP^T - delta) in place, then
//   dV_w += P^T dO and dK_w += dS^T Q with P^T, dS^T converted to bf16 A fragments straight
//   from the accumulators; dS^T also goes to shared memory (bf16), and after a barrier warp
//   w computes dQ rows 16 w .. + 15 = dS K over all 64 keys, 32 columns at a time, added
//   (times scale) by f32 atomics into the accumulator. Shared memory: K, V (64, D + 8), two
//   stages of Q, dO (64, D + 8), dS^T (64, 72) in bf16, two stages of lse, delta: 112 KB at
//   D = 128 (two blocks per H100 SM), 64 KB at D = 64. Registers (ptxas, sm_80 / sm_90):
//   245 / 250 at D = 128, 157 / 163 at D = 64, no spills.
//   The scalar kernels serve f32 and the other head dims. Their bf16 builds at D = 64 and
//   128 are compiled but not dispatched (the tensor-core kernels take those); the tests hold
//   every path to the CPU twin.
//
// What would make it faster (the scalar paths are the reference, not the fast path): on
// Hopper, wgmma (sm_90a) with 64-row warpgroup tiles, operands from shared memory brought
// in by TMA (cp.async.bulk.tensor) on an mbarrier pipeline, and warp-specialised producers,
// as FlashAttention-3 does; in the backward, 8 warps and key tiles of 128 (more reuse of
// each Q/dO tile loaded), larger warp tiles for S^T/dP^T (each ldmatrix of Q/dO feeds only
// 16 keys now, so shared-memory bandwidth, not the tensor cores, bounds it), dQ by a
// separate pass over query tiles instead of atomics (deterministic, and no atomic traffic),
// and a persistent grid that balances the causal triangle.

#include <cstdint>

#include "common.cuh"

namespace attn {

constexpr int THREADS = 128;
constexpr int TX = 8;             // threads sharing one query row (neighbouring lanes)
constexpr int TY = THREADS / TX;  // 16 row groups

// The forward's tiles: 64 query rows, 32 keys.
constexpr int FWD_BQ = 64, FWD_BK = 32;
// The backward's tiles: 32 query rows, 32 keys.
constexpr int BWD_BQ = 32, BWD_BK = 32;

static_assert(FWD_BQ % TY == 0 && FWD_BK % TX == 0, "forward tiles split over the threads");
static_assert(BWD_BQ % TY == 0 && BWD_BK % TX == 0 && BWD_BK % TY == 0,
              "backward tiles split over the threads");

// Shared-memory rows are padded by one float so that threads reading down a column of
// neighbouring rows hit different banks.
template <int D> constexpr int fwd_smem_floats() {
    return FWD_BQ * (D + 1) + 2 * FWD_BK * (D + 1) + FWD_BQ * (FWD_BK + 1);
}
template <int D> constexpr int bwd_smem_floats() {
    return 2 * BWD_BQ * (D + 1) + 2 * BWD_BK * (D + 1) + 2 * BWD_BQ * (BWD_BK + 1) + 2 * BWD_BQ;
}

// Sequence s's first row and length, clamped to the N rows so that malformed offsets can
// only lose rows, never reach outside the buffers.
__device__ __forceinline__ void seq_bounds(const int* starts, int s, int n_rows, int& start,
                                           int& len) {
    start = min(max(starts[s], 0), n_rows);
    const int end = min(max(starts[s + 1], start), n_rows);
    len = end - start;
}

// Reductions over the TX neighbouring lanes of one query row.
__device__ __forceinline__ float row_max(float x) {
    for (int offset = TX / 2; offset > 0; offset >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}
__device__ __forceinline__ float row_sum(float x) {
    for (int offset = TX / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

// rows (R, D) of a (N, heads, D) buffer, from row0 of the sequence whose first row is base,
// into dst (R, D + 1) f32; rows at or past len are zeros.
template <typename T, int D, int R>
__device__ __forceinline__ void load_tile(float* dst, const T* base, size_t row_stride, int row0,
                                          int len) {
    for (int i = threadIdx.x; i < R * D; i += THREADS) {
        const int r = i / D, c = i % D;
        dst[r * (D + 1) + c] = row0 + r < len ? to_f32(base[(size_t)(row0 + r) * row_stride + c]) : 0.0f;
    }
}

// Launch: grid (q_tiles * n_seqs, H), THREADS threads, fwd_smem_floats<D>() * 4 bytes of
// dynamic shared memory; q_tiles = ceil(longest sequence / FWD_BQ).
template <typename T, int D>
__device__ void forward(T* out, float* lse, const T* q, const T* k, const T* v, const int* starts,
                        int n_seqs, int n_rows, int n_head, int n_kv_head, int q_tiles, float scale) {
    constexpr int BQ = FWD_BQ, BK = FWD_BK, DP = D + 1, PP = BK + 1;
    constexpr int RM = BQ / TY;             // query rows per thread
    constexpr int CN = BK / TX;             // keys per thread
    constexpr int DC = (D + TX - 1) / TX;   // output columns per thread
    extern __shared__ float smem[];
    float* qs = smem;           // (BQ, DP)
    float* ks = qs + BQ * DP;   // (BK, DP)
    float* vs = ks + BK * DP;   // (BK, DP)
    float* ps = vs + BK * DP;   // (BQ, PP)

    const int seq = blockIdx.x % n_seqs;
    const int tile = q_tiles - 1 - (int)(blockIdx.x / n_seqs);
    const int h = blockIdx.y;
    int start, len;
    seq_bounds(starts, seq, n_rows, start, len);
    const int q0 = tile * BQ;
    if (q0 >= len) return;  // the whole block leaves, before any barrier
    const int g = h / (n_head / n_kv_head);
    const size_t q_stride = (size_t)n_head * D, kv_stride = (size_t)n_kv_head * D;
    const T* qb = q + (size_t)start * q_stride + (size_t)h * D;
    const T* kb = k + (size_t)start * kv_stride + (size_t)g * D;
    const T* vb = v + (size_t)start * kv_stride + (size_t)g * D;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;

    load_tile<T, D, BQ>(qs, qb, q_stride, q0, len);

    float m[RM], l[RM], acc[RM][DC];
#pragma unroll
    for (int i = 0; i < RM; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < DC; c++) acc[i][c] = 0.0f;
    }

    // The last key any row of the tile sees: the tile's last row, or the sequence's.
    const int k_tiles = (min(q0 + BQ, len) - 1) / BK + 1;
    for (int kt = 0; kt < k_tiles; kt++) {
        const int k0 = kt * BK;
        __syncthreads();  // the previous tile's readers of ks, vs, ps are done
        load_tile<T, D, BK>(ks, kb, kv_stride, k0, len);
        load_tile<T, D, BK>(vs, vb, kv_stride, k0, len);
        __syncthreads();  // qs (first pass), ks, vs are in place

        float s[RM][CN];
#pragma unroll
        for (int i = 0; i < RM; i++)
#pragma unroll
            for (int j = 0; j < CN; j++) s[i][j] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < D; d++) {
            float qv[RM], kv[CN];
#pragma unroll
            for (int i = 0; i < RM; i++) qv[i] = qs[(ty * RM + i) * DP + d];
#pragma unroll
            for (int j = 0; j < CN; j++) kv[j] = ks[(tx + TX * j) * DP + d];
#pragma unroll
            for (int i = 0; i < RM; i++)
#pragma unroll
                for (int j = 0; j < CN; j++) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
        }

        // Online softmax: mask, new row max, rescale what came before, P into shared memory.
#pragma unroll
        for (int i = 0; i < RM; i++) {
            const int qpos = q0 + ty * RM + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < CN; j++) {
                const int kpos = k0 + tx + TX * j;
                s[i][j] = kpos <= qpos && kpos < len ? s[i][j] * scale : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = row_max(mx);
            const float m_new = fmaxf(m[i], mx);
            // Every row sees key 0 in the first tile, so m_new is finite; the guard keeps a
            // row that saw nothing yet at exp(-inf - 0) = 0 instead of NaN.
            const float base = m_new == -INFINITY ? 0.0f : m_new;
            const float alpha = expf(m[i] - base);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < CN; j++) {
                const float p = expf(s[i][j] - base);
                ps[(ty * RM + i) * PP + tx + TX * j] = p;
                rs += p;
            }
            l[i] = l[i] * alpha + row_sum(rs);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < DC; c++) acc[i][c] *= alpha;
        }
        __syncthreads();  // ps is complete

#pragma unroll 4
        for (int kk = 0; kk < BK; kk++) {
            float pv[RM];
#pragma unroll
            for (int i = 0; i < RM; i++) pv[i] = ps[(ty * RM + i) * PP + kk];
#pragma unroll
            for (int c = 0; c < DC; c++) {
                const int col = tx + TX * c;
                const float vv = col < D ? vs[kk * DP + col] : 0.0f;
#pragma unroll
                for (int i = 0; i < RM; i++) acc[i][c] = fmaf(pv[i], vv, acc[i][c]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RM; i++) {
        const int qpos = q0 + ty * RM + i;
        if (qpos >= len) continue;
        const size_t row = (size_t)(start + qpos) * n_head + h;
        const float inv = 1.0f / l[i];
        T* o = out + row * D;
#pragma unroll
        for (int c = 0; c < DC; c++) {
            const int col = tx + TX * c;
            if (col < D) o[col] = from_f32<T>(acc[i][c] * inv);
        }
        if (tx == 0) lse[row] = m[i] + logf(l[i]);
    }
}

// delta[r] = dout[r] . out[r] over rows (N * H) of D; one warp per row.
// Launch: any grid of blocks of 256 threads (grid-stride).
template <typename T>
__device__ void delta_rows(float* delta, const T* dout, const T* out, long rows, int d) {
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (long r = (long)blockIdx.x * warps + threadIdx.x / 32; r < rows; r += (long)gridDim.x * warps) {
        float s = 0.0f;
        for (int c = lane; c < d; c += 32) s += to_f32(dout[r * d + c]) * to_f32(out[r * d + c]);
        s = warp_sum(s);
        if (lane == 0) delta[r] = s;
    }
}

// dq_acc (N, H, D) f32 accumulated (zeroed by the launcher); dk, dv assigned.
// Launch: grid (k_tiles * n_seqs, Hkv), THREADS threads, bwd_smem_floats<D>() * 4 bytes of
// dynamic shared memory; k_tiles = ceil(longest sequence / BWD_BK).
template <typename T, int D>
__device__ void backward(float* dq_acc, T* dk, T* dv, const T* dout, const T* q, const T* k,
                         const T* v, const float* lse, const float* delta, const int* starts,
                         int n_seqs, int n_rows, int n_head, int n_kv_head, float scale) {
    constexpr int BQ = BWD_BQ, BK = BWD_BK, DP = D + 1, PP = BK + 1;
    constexpr int RQ = BQ / TY;             // query rows per thread (S, dP, dQ)
    constexpr int CK = BK / TX;             // keys per thread (S, dP)
    constexpr int RK = BK / TY;             // key rows per thread (dK, dV)
    constexpr int DC = (D + TX - 1) / TX;   // columns per thread (dK, dV, dQ)
    extern __shared__ float smem[];
    float* ks = smem;                // (BK, DP)
    float* vs = ks + BK * DP;        // (BK, DP)
    float* qs = vs + BK * DP;        // (BQ, DP)
    float* dos = qs + BQ * DP;       // (BQ, DP)
    float* ps = dos + BQ * DP;       // (BQ, PP)
    float* dss = ps + BQ * PP;       // (BQ, PP)
    float* lse_s = dss + BQ * PP;    // (BQ)
    float* delta_s = lse_s + BQ;     // (BQ)

    const int seq = blockIdx.x % n_seqs;
    const int tile = blockIdx.x / n_seqs;  // tile 0 sees every query: the longest, first
    const int g = blockIdx.y;
    int start, len;
    seq_bounds(starts, seq, n_rows, start, len);
    const int k0 = tile * BK;
    if (k0 >= len) return;  // the whole block leaves, before any barrier
    const int group = n_head / n_kv_head;
    const size_t q_stride = (size_t)n_head * D, kv_stride = (size_t)n_kv_head * D;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;

    load_tile<T, D, BK>(ks, k + (size_t)start * kv_stride + (size_t)g * D, kv_stride, k0, len);
    load_tile<T, D, BK>(vs, v + (size_t)start * kv_stride + (size_t)g * D, kv_stride, k0, len);

    float dk_acc[RK][DC], dv_acc[RK][DC];
#pragma unroll
    for (int i = 0; i < RK; i++)
#pragma unroll
        for (int c = 0; c < DC; c++) dk_acc[i][c] = dv_acc[i][c] = 0.0f;

    const int q_tiles = (len + BQ - 1) / BQ;
    for (int hh = 0; hh < group; hh++) {
        const int h = g * group + hh;
        const size_t head0 = (size_t)start * n_head + h;  // (row, head) index of the sequence's row 0
        const T* qb = q + head0 * D;
        const T* dob = dout + head0 * D;
        // Query tiles that end before k0 see none of these keys.
        for (int qt = k0 / BQ; qt < q_tiles; qt++) {
            const int q0 = qt * BQ;
            __syncthreads();  // the previous pass's readers of qs, dos, ps, dss are done
            load_tile<T, D, BQ>(qs, qb, q_stride, q0, len);
            load_tile<T, D, BQ>(dos, dob, q_stride, q0, len);
            for (int r = threadIdx.x; r < BQ; r += THREADS) {
                const bool in = q0 + r < len;
                lse_s[r] = in ? lse[head0 + (size_t)(q0 + r) * n_head] : 0.0f;
                delta_s[r] = in ? delta[head0 + (size_t)(q0 + r) * n_head] : 0.0f;
            }
            __syncthreads();  // ks, vs (first pass), qs, dos, lse_s, delta_s are in place

            // S = Q K^T and dP = dO V^T on the (BQ, BK) tile; then P and dS.
            float s[RQ][CK], dp[RQ][CK];
#pragma unroll
            for (int i = 0; i < RQ; i++)
#pragma unroll
                for (int j = 0; j < CK; j++) s[i][j] = dp[i][j] = 0.0f;
#pragma unroll 4
            for (int d = 0; d < D; d++) {
                float qv[RQ], dov[RQ], kv[CK], vv[CK];
#pragma unroll
                for (int i = 0; i < RQ; i++) {
                    qv[i] = qs[(ty * RQ + i) * DP + d];
                    dov[i] = dos[(ty * RQ + i) * DP + d];
                }
#pragma unroll
                for (int j = 0; j < CK; j++) {
                    kv[j] = ks[(tx + TX * j) * DP + d];
                    vv[j] = vs[(tx + TX * j) * DP + d];
                }
#pragma unroll
                for (int i = 0; i < RQ; i++)
#pragma unroll
                    for (int j = 0; j < CK; j++) {
                        s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
                        dp[i][j] = fmaf(dov[i], vv[j], dp[i][j]);
                    }
            }
#pragma unroll
            for (int i = 0; i < RQ; i++) {
                const int r = ty * RQ + i, qpos = q0 + r;
#pragma unroll
                for (int j = 0; j < CK; j++) {
                    const int c = tx + TX * j, kpos = k0 + c;
                    // kpos <= qpos < len: a key the query sees (so also kpos < len).
                    const float p = kpos <= qpos && qpos < len ? expf(s[i][j] * scale - lse_s[r]) : 0.0f;
                    ps[r * PP + c] = p;
                    dss[r * PP + c] = p * (dp[i][j] - delta_s[r]);
                }
            }
            __syncthreads();  // ps, dss are complete

            // dV += P^T dO, dK += dS^T Q (scaled once at the end).
#pragma unroll 2
            for (int qq = 0; qq < BQ; qq++) {
                float pv[RK], dsv[RK];
#pragma unroll
                for (int i = 0; i < RK; i++) {
                    pv[i] = ps[qq * PP + ty * RK + i];
                    dsv[i] = dss[qq * PP + ty * RK + i];
                }
#pragma unroll
                for (int c = 0; c < DC; c++) {
                    const int col = tx + TX * c;
                    if (col >= D) continue;
                    const float dov = dos[qq * DP + col], qv = qs[qq * DP + col];
#pragma unroll
                    for (int i = 0; i < RK; i++) {
                        dv_acc[i][c] = fmaf(pv[i], dov, dv_acc[i][c]);
                        dk_acc[i][c] = fmaf(dsv[i], qv, dk_acc[i][c]);
                    }
                }
            }

            // dQ += dS K scale, into the f32 accumulator shared with the other key tiles.
#pragma unroll
            for (int i = 0; i < RQ; i++) {
                const int r = ty * RQ + i, qpos = q0 + r;
                if (qpos >= len) continue;
                float* dq_row = dq_acc + (head0 + (size_t)qpos * n_head) * D;
#pragma unroll
                for (int c = 0; c < DC; c++) {
                    const int col = tx + TX * c;
                    if (col >= D) continue;
                    float a = 0.0f;
#pragma unroll 8
                    for (int kk = 0; kk < BK; kk++) a = fmaf(dss[r * PP + kk], ks[kk * DP + col], a);
                    atomicAdd(dq_row + col, a * scale);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RK; i++) {
        const int kpos = k0 + ty * RK + i;
        if (kpos >= len) continue;
        const size_t row = ((size_t)(start + kpos) * n_kv_head + g) * D;
#pragma unroll
        for (int c = 0; c < DC; c++) {
            const int col = tx + TX * c;
            if (col >= D) continue;
            dk[row + col] = from_f32<T>(dk_acc[i][c] * scale);
            dv[row + col] = from_f32<T>(dv_acc[i][c]);
        }
    }
}

// dst[i] = src[i] in the storage type, over n elements (grid-stride).
template <typename T>
__device__ void store_f32(T* dst, const float* src, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dst[i] = from_f32<T>(src[i]);
}

// ---------------------------------------------------------------------------------------
// The bf16 backward on tensor cores: mma.sync m16n8k16 (bf16 in, f32 accumulators) through
// inline PTX, with ldmatrix to bring fragments from shared memory. Unlike wmma, mma.sync's
// register layouts are documented (PTX ISA, "Matrix Fragments for mma.m16n8k16"), so the
// products' results stay in registers: S^T and dP^T become P^T and dS^T in place and feed
// the next products as A fragments directly.
//
// Fragment layouts (lane = 4 * gid + tig, gid = lane / 4, tig = lane % 4):
// - A (16 x 16, row-major), 4 regs of 2 bf16: a0 = A[gid][2 tig, +1], a1 = A[gid + 8][2 tig,
//   +1], a2 = A[gid][2 tig + 8, +9], a3 = A[gid + 8][2 tig + 8, +9] (lower column in the low
//   half).
// - B (16 x 8, "col"), 2 regs: b0 = B[2 tig, +1][gid], b1 = B[2 tig + 8, +9][gid].
// - C (16 x 8, f32), 4 floats: c0, c1 = C[gid][2 tig, +1], c2, c3 = C[gid + 8][2 tig, +1].
// - ldmatrix .x4: lane l gives the address of row l % 8 of 8 x 8 matrix l / 8 (16-byte
//   aligned rows); register i of every lane receives matrix i, lane l getting row l / 4,
//   columns 2 (l % 4), +1; with .trans, column l / 4, rows 2 (l % 4), +1 (the transpose).
//   So, for a 16 x 16 block at (r0, c0) of a row-major bf16 array with pitch P:
//   - A from a [m][k] array:         row r0 + l % 16,            col c0 + (l / 16) * 8
//   - A from a [k][m] array (.trans): row r0 + (l / 16) * 8 + l % 8, col c0 + (l / 8 % 2) * 8
//   - B from a [n][k] array:         row r0 + (l / 16) * 8 + l % 8, col c0 + (l / 8 % 2) * 8
//     (regs 0, 1: the n-tile of columns n0..n0+7, regs 2, 3: n0+8..n0+15)
//   - B from a [k][n] array (.trans): row r0 + l % 16,            col c0 + (l / 16) * 8
//     (the same split of the registers over the two n-tiles).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// c += a b for one 16 x 8 tile.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats as bf16x2, lo in the low half (the lower column of a fragment register).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}
// 16 bytes global -> shared without registers; src_bytes 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most n of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// The backward's tiles on tensor cores: 64 keys a block (16 per warp), query tiles of 64
// (16 rows per warp in the dQ product). Row pitches (bf16 elements) padded by 8 (16 bytes):
// rows stay 16-byte aligned for ldmatrix and cp.async, and the 8 rows of an 8 x 8 matrix
// fall in 8 different 16-byte bank groups (pitch = 16 mod 128 bytes).
constexpr int BTC_BK = 64, BTC_BQ = 64;
static_assert(BTC_BK == 16 * (THREADS / 32) && BTC_BQ == 16 * (THREADS / 32),
              "a warp per 16 keys (dK, dV) and per 16 query rows (dQ)");
template <int D> struct BwdTcLayout {
    static constexpr int P = D + 8;        // K, V, Q, dO (bf16)
    static constexpr int SP = BTC_BQ + 8;  // dS^T (bf16)
    // bf16: K, V (BK, P); two stages of Q, dO (BQ, P); dS^T (BK, SP). Then f32: two stages
    // of lse, delta (BQ).
    static constexpr int KV = BTC_BK * P, QD = BTC_BQ * P;
    static constexpr int BF16_ELEMS = 2 * KV + 4 * QD + BTC_BK * SP;
    static constexpr int BYTES = 2 * BF16_ELEMS + 4 * 4 * BTC_BQ;
    static_assert((2 * P) % 16 == 0 && (2 * SP) % 16 == 0 && (2 * BF16_ELEMS) % 16 == 0,
                  "rows and regions start 16-byte aligned");
};

// R rows of D bf16 of a (N, heads, D) buffer, from row0 of the sequence at base, into dst
// (pitch P); rows at or past len are zeros. vec: base is 16-byte aligned (so is every row:
// strides are multiples of 8 elements), and the 16-byte pieces go by cp.async (the caller
// commits and waits); otherwise element by element, visible after the next __syncthreads.
template <int D, int R, int P>
__device__ __forceinline__ void load_rows_tc(__nv_bfloat16* dst, const __nv_bfloat16* base,
                                             size_t row_stride, int row0, int len, bool vec) {
    constexpr int CH = D / 8;  // 16-byte pieces per row
    static_assert((R * CH) % THREADS == 0, "whole rounds of pieces");
#pragma unroll
    for (int i = threadIdx.x; i < R * CH; i += THREADS) {
        const int r = i / CH, c = (i % CH) * 8;
        const bool in = row0 + r < len;
        // Rows past the end read nothing; their address is the sequence's row 0 (len > 0).
        const __nv_bfloat16* src = base + (size_t)(in ? row0 + r : 0) * row_stride + c;
        __nv_bfloat16* d = dst + r * P + c;
        if (vec) {
            cp_async16(d, src, in ? 16 : 0);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) d[e] = in ? src[e] : __float2bfloat16_rn(0.0f);
        }
    }
}

// Launch: grid (k_tiles * n_seqs, Hkv) with k_tiles = ceil(longest sequence / BTC_BK),
// THREADS threads, BwdTcLayout<D>::BYTES of dynamic shared memory. Same outputs as
// `backward`: dq_acc (N, H, D) f32 accumulated (zeroed by the launcher), dk, dv assigned.
//
// Warp w owns keys k0 + 16 w .. + 15 of the block's tile and keeps their dK, dV (16 x D
// each) in mma accumulators. For each query tile (every head of the GQA group, the tiles
// from the diagonal on), double-buffered by cp.async (tile i + 1 loads while tile i
// computes):
//   S^T = K_w Q^T and dP^T = V_w dO^T  (16 x BQ, accumulators)
//   P^T = exp(S^T scale - lse) masked (kpos <= qpos < len), dS^T = P^T (dP^T - delta)
//   dV_w += P^T dO, dK_w += dS^T Q      (P^T, dS^T as bf16 A fragments from the registers)
//   dS^T to shared memory (bf16); barrier; warp w: dQ rows 16 w .. + 15 = dS K (over the 64
//   keys), 32 columns at a time, atomicAdd'ed (times scale) into dq_acc.
template <int D>
__device__ void backward_tc(float* dq_acc, __nv_bfloat16* dk, __nv_bfloat16* dv,
                            const __nv_bfloat16* dout, const __nv_bfloat16* q,
                            const __nv_bfloat16* k, const __nv_bfloat16* v, const float* lse,
                            const float* delta, const int* starts, int n_seqs, int n_rows,
                            int n_head, int n_kv_head, float scale) {
    using L = BwdTcLayout<D>;
    constexpr int BK = BTC_BK, BQ = BTC_BQ, P = L::P, SP = L::SP;
    constexpr int QH = 32;      // queries per half tile (S^T, dP^T in registers at once)
    constexpr int NQ = QH / 8;  // 8-query n-tiles of S^T, dP^T
    static_assert(BQ % QH == 0 && QH % 16 == 0, "halves of whole k-steps");
    constexpr int ND = D / 8;   // 8-column n-tiles of dK, dV
    static_assert(D % 32 == 0, "dQ goes 32 columns at a time");
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(128) unsigned char smem_btc[];
    __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem_btc);  // (BK, P)
    __nv_bfloat16* vs = ks + L::KV;                                   // (BK, P)
    __nv_bfloat16* qd0 = vs + L::KV;  // stage s: Q at qd0 + 2 s QD, dO at + QD, (BQ, P) each
    __nv_bfloat16* dst = qd0 + 4 * L::QD;                             // dS^T (BK, SP)
    float* stat0 = reinterpret_cast<float*>(dst + BK * SP);  // stage s: lse, delta at + 2 s BQ

    const int seq = blockIdx.x % n_seqs;
    const int tile = blockIdx.x / n_seqs;  // tile 0 sees every query: the longest, first
    const int g = blockIdx.y;
    int start, len;
    seq_bounds(starts, seq, n_rows, start, len);
    const int k0 = tile * BK;
    if (k0 >= len) return;  // the whole block leaves, before any barrier
    const int group = n_head / n_kv_head;
    const size_t q_stride = (size_t)n_head * D, kv_stride = (size_t)n_kv_head * D;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gid = lane / 4, tig = lane % 4;
    const float scale_log2 = scale * LOG2E;
    // 16-byte copies need 16-byte aligned bases (views into larger buffers may not be).
    const bool kv_vec = ((reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v)) & 15) == 0;
    const bool q_vec = (reinterpret_cast<uintptr_t>(q) & 15) == 0;
    const bool do_vec = (reinterpret_cast<uintptr_t>(dout) & 15) == 0;

    // Work items: (head hh of the group, query tile qt from the diagonal's on), flattened.
    const int qt0 = k0 / BQ;                  // the first query tile with a query >= k0
    const int per_head = (len + BQ - 1) / BQ - qt0;  // >= 1, as k0 < len
    const int n_items = group * per_head;

    // Issues the loads of item it into stage it % 2: Q, dO rows, lse, delta (zeros past len).
    auto issue = [&](int it) {
        const int h = g * group + it / per_head, q0 = (qt0 + it % per_head) * BQ;
        const size_t head0 = (size_t)start * n_head + h;
        __nv_bfloat16* qs = qd0 + (it & 1) * 2 * L::QD;
        load_rows_tc<D, BQ, P>(qs, q + head0 * D, q_stride, q0, len, q_vec);
        load_rows_tc<D, BQ, P>(qs + L::QD, dout + head0 * D, q_stride, q0, len, do_vec);
        float* stat = stat0 + (it & 1) * 2 * BQ;
        for (int i = threadIdx.x; i < 2 * BQ; i += THREADS) {
            const int r = i % BQ;
            const bool in = q0 + r < len;
            const float* src = (i < BQ ? lse : delta) + head0 + (size_t)(in ? q0 + r : 0) * n_head;
            cp_async4(stat + i, src, in ? 4 : 0);
        }
    };

    load_rows_tc<D, BK, P>(ks, k + (size_t)start * kv_stride + (size_t)g * D, kv_stride, k0, len, kv_vec);
    load_rows_tc<D, BK, P>(vs, v + (size_t)start * kv_stride + (size_t)g * D, kv_stride, k0, len, kv_vec);
    issue(0);
    cp_async_commit();  // group 0: K, V and item 0

    float dk_acc[ND][4], dv_acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

    const int kw = 16 * warp;  // the warp's first key within the tile
    for (int it = 0; it < n_items; it++) {
        // Stage (it + 1) % 2 was last read before the previous item's second barrier, which
        // every thread has passed.
        if (it + 1 < n_items) issue(it + 1);
        cp_async_commit();  // (possibly empty) so that the wait below always means item it
        cp_async_wait<1>();
        __syncthreads();  // item it (and K, V) in place for every warp; the previous dQ's
                          // reads of dS^T are done

        const int h = g * group + it / per_head, q0 = (qt0 + it % per_head) * BQ;
        const size_t head0 = (size_t)start * n_head + h;
        const __nv_bfloat16* qs = qd0 + (it & 1) * 2 * L::QD;
        const __nv_bfloat16* dos = qs + L::QD;
        const float* lse_s = stat0 + (it & 1) * 2 * BQ;
        const float* delta_s = lse_s + BQ;

        // In two halves of QH queries (fewer live registers: S^T, dP^T of a half are 32).
#pragma unroll 1
        for (int q_half = 0; q_half < BQ; q_half += QH) {
            // S^T = K_w Q^T, dP^T = V_w dO^T: (16 keys, QH queries) in NQ n-tiles.
            float s[NQ][4], dp[NQ][4];
#pragma unroll
            for (int j = 0; j < NQ; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
            for (int kd = 0; kd < D / 16; kd++) {
                uint32_t ka[4], va[4];
                const int ar = kw + lane % 16, ac = kd * 16 + (lane / 16) * 8;  // A from [m][k]
                ldsm_x4(ka, ks + ar * P + ac);
                ldsm_x4(va, vs + ar * P + ac);
#pragma unroll
                for (int np = 0; np < QH / 16; np++) {
                    uint32_t qb[4], db[4];
                    // B from [n][k]: Q, dO rows are the queries (n), columns the dims (k).
                    const int br = q_half + np * 16 + (lane / 16) * 8 + lane % 8;
                    const int bc = kd * 16 + (lane / 8 % 2) * 8;
                    ldsm_x4(qb, qs + br * P + bc);
                    ldsm_x4(db, dos + br * P + bc);
                    mma_bf16(s[2 * np], ka, qb[0], qb[1]);
                    mma_bf16(s[2 * np + 1], ka, qb[2], qb[3]);
                    mma_bf16(dp[2 * np], va, db[0], db[1]);
                    mma_bf16(dp[2 * np + 1], va, db[2], db[3]);
                }
            }

            // P^T and dS^T in place: element e of n-tile j is key kw + gid + 8 (e / 2), query
            // q_half + 8 j + 2 tig + e % 2 of the tile.
#pragma unroll
            for (int j = 0; j < NQ; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int kpos = k0 + kw + gid + 8 * (e / 2);
                    const int ql = q_half + 8 * j + 2 * tig + e % 2, qpos = q0 + ql;
                    // kpos <= qpos < len: a key the query sees (so also kpos < len). A select,
                    // so that whatever the masked exponent is never reaches p.
                    const float p = kpos <= qpos && qpos < len
                                        ? exp2f(fmaf(s[j][e], scale_log2, -lse_s[ql] * LOG2E))
                                        : 0.0f;
                    s[j][e] = p;
                    dp[j][e] = p * (dp[j][e] - delta_s[ql]);
                }

            // dV_w += P^T dO, dK_w += dS^T Q: A fragments from the accumulators (n-tiles 2 kk,
            // 2 kk + 1 are the k-step kk of 16 queries), B from [k][n] arrays by .trans.
#pragma unroll
            for (int kk = 0; kk < QH / 16; kk++) {
                const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                        pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                        pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                const uint32_t da[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]),
                                        pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                                        pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                        pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                const int q16 = q_half + 16 * kk;  // the k-step's first query
                // dS^T to shared memory for dQ, the same bf16 values as da: da[2 t + half]
                // holds key kw + gid + 8 half, queries q16 + 8 t + 2 tig, +1.
#pragma unroll
                for (int t = 0; t < 2; t++)
#pragma unroll
                    for (int half = 0; half < 2; half++) {
                        const int kl = kw + gid + 8 * half, ql = q16 + 8 * t + 2 * tig;
                        *reinterpret_cast<uint32_t*>(dst + kl * SP + ql) = da[2 * t + half];
                    }
#pragma unroll
                for (int np = 0; np < D / 16; np++) {
                    uint32_t b[4];
                    const int br = q16 + lane % 16, bc = np * 16 + (lane / 16) * 8;  // [k][n]
                    ldsm_x4_trans(b, dos + br * P + bc);
                    mma_bf16(dv_acc[2 * np], pa, b[0], b[1]);
                    mma_bf16(dv_acc[2 * np + 1], pa, b[2], b[3]);
                    ldsm_x4_trans(b, qs + br * P + bc);
                    mma_bf16(dk_acc[2 * np], da, b[0], b[1]);
                    mma_bf16(dk_acc[2 * np + 1], da, b[2], b[3]);
                }
            }
        }
        __syncthreads();  // dS^T complete

        // dQ rows 16 warp .. + 15 of the tile = dS (BQ, BK) K (BK, D); dS^T is [k][m], K [k][n].
        uint32_t dsa[BK / 16][4];
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
            ldsm_x4_trans(dsa[kk], dst + (kk * 16 + (lane / 16) * 8 + lane % 8) * SP + 16 * warp +
                                       (lane / 8 % 2) * 8);
#pragma unroll
        for (int nc = 0; nc < D / 32; nc++) {
            float acc[4][4];
#pragma unroll
            for (int t = 0; t < 4; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[t][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++)
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    uint32_t b[4];
                    const int br = kk * 16 + lane % 16, bc = nc * 32 + np * 16 + (lane / 16) * 8;
                    ldsm_x4_trans(b, ks + br * P + bc);
                    mma_bf16(acc[2 * np], dsa[kk], b[0], b[1]);
                    mma_bf16(acc[2 * np + 1], dsa[kk], b[2], b[3]);
                }
#pragma unroll
            for (int t = 0; t < 4; t++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qpos = q0 + 16 * warp + gid + 8 * (e / 2);
                    const int col = nc * 32 + t * 8 + 2 * tig + e % 2;
                    if (qpos < len)
                        atomicAdd(dq_acc + (head0 + (size_t)qpos * n_head) * D + col, acc[t][e] * scale);
                }
        }
    }

    // dK, dV of the warp's keys: element e of n-tile n is key kw + gid + 8 (e / 2), column
    // 8 n + 2 tig + e % 2.
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int kpos = k0 + kw + gid + 8 * (e / 2);
            if (kpos >= len) continue;
            const size_t at = ((size_t)(start + kpos) * n_kv_head + g) * D + 8 * n + 2 * tig + e % 2;
            dk[at] = __float2bfloat16_rn(dk_acc[n][e] * scale);
            dv[at] = __float2bfloat16_rn(dv_acc[n][e]);
        }
}

// ---------------------------------------------------------------------------------------
// The bf16 forward on tensor cores, FlashAttention-2 style on mma.sync m16n8k16 (the
// helpers, fragment layouts and load_rows_tc above). Same grid and outputs as `forward`:
// one block of 4 warps per (query tile of FWD_BQ = 64 rows, head, sequence), the longest
// tiles first; warp w owns query rows 16 w .. 16 w + 15 of the tile.
//
// Tiles and registers (per lane; D = 128, in brackets D = 64):
// - Q_w (16 x D) as A fragments, loaded once by ldmatrix: D / 16 k-steps x 4 regs, 32 [16].
// - Key tiles of FTC_BK = 64, walked from 0 up to the one holding the tile's last row (or
//   the sequence's last key): the tiles above the diagonal are never visited, and only the
//   last tile needs masks (kpos <= qpos, kpos < len; every earlier key precedes every row).
// - S = Q_w K^T: 16 x 64 f32 in 8 n-tiles of accumulators, 32 regs. Element e of n-tile j
//   is row gid + 8 (e / 2), key 8 j + 2 tig + e % 2 (lane = 4 gid + tig), so each row's 64
//   keys sit in the 4 lanes of a quad: its max takes two xor-shuffles (1, 2).
// - The online softmax in log2 units: m (per row half, raw scores), p = exp2(s scale log2e
//   - m scale log2e), alpha = exp2((m_old - m_new) scale log2e) rescales O and l in
//   registers. l is kept per lane (its 16 keys of each tile) and summed over the quad once,
//   at the end (alpha is the same in the 4 lanes of a row).
// - P to bf16 A fragments straight from the S accumulators (n-tiles 2 kk, 2 kk + 1 are the
//   k-step kk of 16 keys), as backward_tc repacks dS^T.
// - O += P V: 16 x D f32 in D / 8 n-tiles, 64 [32] regs; V's B fragments by ldmatrix.trans
//   from the row-major (keys, D) tile.
// - At the end O / l as bf16 for the rows inside the sequence, and lse = m scale + ln l
//   (natural log of the normaliser of the scaled scores, as `forward`).
// Shared memory: two stages of K and V (64, D + 8) bf16, 69 632 B at D = 128, 36 864 B at
// D = 64; Q comes in through stage 1's K region before the loop (it is read into registers
// once, and stage 1 is first filled after a barrier that follows). Pitch D + 8 (16 bytes of
// padding): rows 16-byte aligned for cp.async and ldmatrix, and the 8 rows of an 8 x 8
// matrix in 8 different bank groups. Pipeline, one barrier a tile: wait for tile kt's
// copies, barrier (tile kt visible to all; every warp is done with tile kt - 1), issue tile
// kt + 1 into the other stage by cp.async (zero-filled past len, so padded keys hold zeros:
// P is 0 there, and 0 x V stays 0), compute tile kt.
// Occupancy: shared memory allows 3 blocks (12 warps) per H100/H200 SM at D = 128 (2 on an
// A100's 164 KB), 6 at D = 64. Registers: the entry points cap them through
// __launch_bounds__ (ATTENTION_FORWARD_TC below) at 168 for 3 blocks at D = 128 (ptxas,
// sm_90: 168, no spills; uncapped it takes 172, which allows only 2 blocks; sm_80: 168 with
// one 4-byte spill, stored once before the key loop and reloaded once after it) and at 128
// for 4 blocks at D = 64 (ptxas sm_80 / sm_90: 127 / 128, no spills). Per warp and key tile
// of 64: D / 2 ldmatrix.x4 (half of K, half of V by .trans), D mma.m16n8k16 (128 at
// D = 128) and 34 ex2.
//
// What would make it faster: on Hopper, wgmma (sm_90a) with a warpgroup of 4 warps per 64
// query rows and K, V read by the tensor cores straight from shared memory (no ldmatrix,
// which bounds this kernel: every warp reads all of K and V of each tile), brought in by
// TMA (cp.async.bulk.tensor) on an mbarrier pipeline of 2-3 stages with a producer warp
// (warp specialisation, setmaxnreg), 128-row query tiles for 2 consumer warpgroups, and the
// softmax of one tile overlapped with the products of the next (FlashAttention-3). On
// mma.sync itself: 8 warps and 128-row query tiles (K, V read once per 128 rows), O written
// through shared memory as 16-byte rows, the diagonal tile's fully
// masked n-tiles skipped per warp, copy loops with compile-time trip counts (load_rows_tc's
// loop stays rolled), and a persistent grid over the causal triangle.
constexpr int FTC_BK = 64;
static_assert(FWD_BQ == 16 * (THREADS / 32), "a warp per 16 query rows");
static_assert(FTC_BK == FWD_BQ, "Q borrows a K/V stage, which holds FWD_BQ rows");
template <int D> struct FwdTcLayout {
    static constexpr int P = D + 8;             // K, V, Q rows (bf16)
    static constexpr int KV = FTC_BK * P;       // one K or V tile (elements)
    static constexpr int BYTES = 2 * 2 * KV * 2;  // two stages of K and V
    static_assert((2 * P) % 16 == 0, "rows start 16-byte aligned");
};

// Launch: grid (q_tiles * n_seqs, H), THREADS threads, FwdTcLayout<D>::BYTES of dynamic
// shared memory; q_tiles = ceil(longest sequence / FWD_BQ).
template <int D>
__device__ void forward_mma(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q,
                            const __nv_bfloat16* k, const __nv_bfloat16* v, const int* starts,
                            int n_seqs, int n_rows, int n_head, int n_kv_head, int q_tiles,
                            float scale) {
    using L = FwdTcLayout<D>;
    constexpr int BQ = FWD_BQ, BK = FTC_BK, P = L::P;
    constexpr int NK = BK / 8;  // 8-key n-tiles of S
    constexpr int ND = D / 8;   // 8-column n-tiles of O
    static_assert(D % 16 == 0, "whole k-steps of Q K^T and n-tile pairs of O");
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(128) unsigned char smem_ftc[];
    // Stage s: K at kv0 + 2 s KV, V at + KV. Q (BQ, P) at stage 1's K before the loop.
    __nv_bfloat16* kv0 = reinterpret_cast<__nv_bfloat16*>(smem_ftc);

    const int seq = blockIdx.x % n_seqs;
    const int tile = q_tiles - 1 - (int)(blockIdx.x / n_seqs);
    const int h = blockIdx.y;
    int start, len;
    seq_bounds(starts, seq, n_rows, start, len);
    const int q0 = tile * BQ;
    if (q0 >= len) return;  // the whole block leaves, before any barrier
    const int g = h / (n_head / n_kv_head);
    const size_t q_stride = (size_t)n_head * D, kv_stride = (size_t)n_kv_head * D;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gid = lane / 4, tig = lane % 4;
    const float scale_log2 = scale * LOG2E;
    const __nv_bfloat16* kb = k + (size_t)start * kv_stride + (size_t)g * D;
    const __nv_bfloat16* vb = v + (size_t)start * kv_stride + (size_t)g * D;
    // 16-byte copies need 16-byte aligned bases (views into larger buffers may not be).
    const bool kv_vec = ((reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v)) & 15) == 0;
    const bool q_vec = (reinterpret_cast<uintptr_t>(q) & 15) == 0;

    // Key tile kt into stage kt % 2 (zeros past len).
    auto issue = [&](int kt) {
        __nv_bfloat16* ks = kv0 + (kt & 1) * 2 * L::KV;
        load_rows_tc<D, BK, P>(ks, kb, kv_stride, kt * BK, len, kv_vec);
        load_rows_tc<D, BK, P>(ks + L::KV, vb, kv_stride, kt * BK, len, kv_vec);
    };
    __nv_bfloat16* qs = kv0 + 2 * L::KV;
    load_rows_tc<D, BQ, P>(qs, q + (size_t)start * q_stride + (size_t)h * D, q_stride, q0, len,
                           q_vec);
    issue(0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();  // Q and key tile 0 in place

    // Q_w as A fragments from the [m][k] array: k-step kd is columns 16 kd .. + 15.
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kd = 0; kd < D / 16; kd++)
        ldsm_x4(qa[kd], qs + (16 * warp + lane % 16) * P + kd * 16 + (lane / 16) * 8);

    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    // Per row half r (rows gid, gid + 8): the running max of the raw scores, and the
    // lane's part of the normaliser.
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const int row0 = q0 + 16 * warp + gid;  // the position of the lane's row half 0

    // The last key any row of the tile sees: the tile's last row, or the sequence's.
    const int k_tiles = (min(q0 + BQ, len) - 1) / BK + 1;
#pragma unroll 1
    for (int kt = 0; kt < k_tiles; kt++) {
        const int k0 = kt * BK;
        cp_async_wait<0>();
        __syncthreads();  // tile kt in place for every warp; every warp is done with the
                          // other stage (tile kt - 1, or Q before the loop)
        if (kt + 1 < k_tiles) {
            issue(kt + 1);
            cp_async_commit();
        }
        const __nv_bfloat16* ks = kv0 + (kt & 1) * 2 * L::KV;
        const __nv_bfloat16* vs = ks + L::KV;

        // S = Q_w K^T: K rows are the keys (n), columns the dims (k).
        float s[NK][4];
#pragma unroll
        for (int j = 0; j < NK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
#pragma unroll
        for (int kd = 0; kd < D / 16; kd++)
#pragma unroll
            for (int np = 0; np < NK / 2; np++) {
                uint32_t b[4];
                ldsm_x4(b, ks + (np * 16 + (lane / 16) * 8 + lane % 8) * P + kd * 16 +
                               (lane / 8 % 2) * 8);
                mma_bf16(s[2 * np], qa[kd], b[0], b[1]);
                mma_bf16(s[2 * np + 1], qa[kd], b[2], b[3]);
            }

        // Masks, on the last tile only: it alone may hold keys past a row's position (the
        // diagonal) or past the sequence. A select, so masked scores are exactly -inf.
        if (k0 + BK - 1 > q0 || k0 + BK > len) {
#pragma unroll
            for (int j = 0; j < NK; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int kpos = k0 + 8 * j + 2 * tig + e % 2, qpos = row0 + 8 * (e / 2);
                    s[j][e] = kpos <= qpos && kpos < len ? s[j][e] : -INFINITY;
                }
        }

        // Online softmax per row half r.
        float alpha[2], mb[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = m[r];
#pragma unroll
            for (int j = 0; j < NK; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // Every row sees key 0 in tile 0, so mx is finite; the guard keeps a row that saw
            // nothing yet at exp2(-inf - 0) = 0 instead of NaN, as in `forward`.
            mb[r] = mx == -INFINITY ? 0.0f : mx * scale_log2;
            alpha[r] = exp2f(m[r] * scale_log2 - mb[r]);  // m[r] = -inf: 0
            m[r] = mx;
        }
#pragma unroll
        for (int j = 0; j < NK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = exp2f(fmaf(s[j][e], scale_log2, -mb[e / 2]));
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < NK; j++) rs += s[j][2 * r] + s[j][2 * r + 1];
            l[r] = l[r] * alpha[r] + rs;
        }
#pragma unroll
        for (int n = 0; n < ND; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[n][e] *= alpha[e / 2];

        // O += P V: P's A fragments from the accumulators, V's B fragments from the [k][n]
        // array by .trans (regs 0, 1: columns 16 np .. + 7; 2, 3: + 8 .. + 15).
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                    pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                uint32_t b[4];
                ldsm_x4_trans(b, vs + (kk * 16 + lane % 16) * P + np * 16 + (lane / 16) * 8);
                mma_bf16(o[2 * np], pa, b[0], b[1]);
                mma_bf16(o[2 * np + 1], pa, b[2], b[3]);
            }
        }
    }

    // O / l and lse for the lane's rows inside the sequence: element e of n-tile n is row
    // half e / 2, column 8 n + 2 tig + e % 2.
    const bool out_vec = (reinterpret_cast<uintptr_t>(out) & 3) == 0;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const int qpos = row0 + 8 * r;
        if (qpos >= len) continue;
        const size_t at = (size_t)(start + qpos) * n_head + h;
        const float inv = 1.0f / lr;
        __nv_bfloat16* orow = out + at * D + 2 * tig;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            const float a = o[n][2 * r] * inv, b = o[n][2 * r + 1] * inv;
            if (out_vec) {
                *reinterpret_cast<__nv_bfloat162*>(orow + 8 * n) = __floats2bfloat162_rn(a, b);
            } else {
                orow[8 * n] = __float2bfloat16_rn(a);
                orow[8 * n + 1] = __float2bfloat16_rn(b);
            }
        }
        if (tig == 0) lse[at] = m[r] * scale + logf(lr);
    }
}

}  // namespace attn

// Entry points: attention_forward_d{D}_{f32,bf16}, attention_backward_d{D}_{f32,bf16} for
// each supported head dim, and the dtype-only passes delta and dq conversion. The launcher
// (src/backend/cuda/attention.rs) lists the same head dims and tile sizes.
#define ATTENTION_ENTRIES(D, SUFFIX, T)                                                          \
    extern "C" __global__ void __launch_bounds__(attn::THREADS)                                  \
        attention_forward_d##D##_##SUFFIX(T* out, float* lse, const T* q, const T* k,            \
                                          const T* v, const int* starts, int n_seqs, int n_rows, \
                                          int n_head, int n_kv_head, int q_tiles, float scale) { \
        attn::forward<T, D>(out, lse, q, k, v, starts, n_seqs, n_rows, n_head, n_kv_head,        \
                            q_tiles, scale);                                                     \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(attn::THREADS) attention_backward_d##D##_##SUFFIX( \
        float* dq_acc, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,          \
        const float* lse, const float* delta, const int* starts, int n_seqs, int n_rows,         \
        int n_head, int n_kv_head, float scale) {                                                \
        attn::backward<T, D>(dq_acc, dk, dv, dout, q, k, v, lse, delta, starts, n_seqs, n_rows,  \
                             n_head, n_kv_head, scale);                                          \
    }

#define ATTENTION_HEAD_DIM(D)                  \
    ATTENTION_ENTRIES(D, f32, float)           \
    ATTENTION_ENTRIES(D, bf16, __nv_bfloat16)

ATTENTION_HEAD_DIM(4)
ATTENTION_HEAD_DIM(8)
ATTENTION_HEAD_DIM(16)
ATTENTION_HEAD_DIM(32)
ATTENTION_HEAD_DIM(64)
ATTENTION_HEAD_DIM(96)
ATTENTION_HEAD_DIM(128)

// The bf16 forward on tensor cores: attention_forward_tc_d{D}_bf16, same arguments as
// attention_forward_d{D}_bf16. BLOCKS: the blocks per SM its registers are capped for
// (65 536 / (128 BLOCKS) a thread, 168 at 3, 128 at 4): at D = 128 three blocks fit an
// H100's shared memory (3 x 68 KB; an A100's fits 2), at D = 64 four; ptxas keeps both
// without spills on sm_90 (sm_80: one 4-byte spill at D = 128, outside the key loop).
#define ATTENTION_FORWARD_TC(D, BLOCKS)                                                          \
    extern "C" __global__ void __launch_bounds__(attn::THREADS, BLOCKS)                          \
        attention_forward_tc_d##D##_bf16(                                                        \
        __nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,          \
        const __nv_bfloat16* v, const int* starts, int n_seqs, int n_rows, int n_head,           \
        int n_kv_head, int q_tiles, float scale) {                                               \
        attn::forward_mma<D>(out, lse, q, k, v, starts, n_seqs, n_rows, n_head, n_kv_head,       \
                             q_tiles, scale);                                                     \
    }
ATTENTION_FORWARD_TC(64, 4)
ATTENTION_FORWARD_TC(128, 3)

// The bf16 backward on tensor cores: attention_backward_tc_d{D}_bf16, same arguments as
// attention_backward_d{D}_bf16.
#define ATTENTION_BACKWARD_TC(D)                                                                  \
    extern "C" __global__ void __launch_bounds__(attn::THREADS) attention_backward_tc_d##D##_bf16( \
        float* dq_acc, __nv_bfloat16* dk, __nv_bfloat16* dv, const __nv_bfloat16* dout,         \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,                 \
        const float* lse, const float* delta, const int* starts, int n_seqs, int n_rows,         \
        int n_head, int n_kv_head, float scale) {                                                \
        attn::backward_tc<D>(dq_acc, dk, dv, dout, q, k, v, lse, delta, starts, n_seqs, n_rows,  \
                             n_head, n_kv_head, scale);                                          \
    }
ATTENTION_BACKWARD_TC(64)
ATTENTION_BACKWARD_TC(128)

// delta: (N, H); dout, out: (N, H, D) as rows = N * H rows of d.
extern "C" __global__ void attention_delta_f32(float* delta, const float* dout, const float* out,
                                               long rows, int d) {
    attn::delta_rows(delta, dout, out, rows, d);
}
extern "C" __global__ void attention_delta_bf16(float* delta, const __nv_bfloat16* dout,
                                                const __nv_bfloat16* out, long rows, int d) {
    attn::delta_rows(delta, dout, out, rows, d);
}

// dq: (N, H, D) from its f32 accumulator, n elements.
extern "C" __global__ void attention_dq_store_f32(float* dq, const float* dq_acc, long n) {
    attn::store_f32(dq, dq_acc, n);
}
extern "C" __global__ void attention_dq_store_bf16(__nv_bfloat16* dq, const float* dq_acc, long n) {
    attn::store_f32(dq, dq_acc, n);
}
