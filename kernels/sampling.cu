// Token sampling on the device, one block per row: greedy, or temperature, top-k, then top-p
// over what top-k kept, and one draw from the host's uniform. The twin of `sample` in
// src/backend/cpu/sampling.rs, with its rules: ties at a cutoff go to the lowest ids, and
// the draw walks the kept tokens in id order.
//
// Weights w = exp((l - max) / T) lie in (0, 1] (0 after underflow), and non-negative floats
// order like their bit patterns, so each cutoff is found by a radix search over the bits,
// most significant digit first (11, 11, then 10 bits), with a shared-memory histogram per
// digit. Masses are summed in fixed point (floor(w * 2^40) as 64-bit integers), so every
// sum is exact and the same whatever order the threads add in: a seed gives the same
// tokens run after run. Weights are recomputed from the logits in every pass (the same
// operations, so the same bits), and logits must be finite.
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define MAX_BINS 2048
#define FULL_MASK 0xffffffffu

typedef unsigned long long u64;

__device__ __forceinline__ float sample_weight(float l, float mx, float t) {
    return expf((l - mx) / t);
}

// floor(w * 2^40): exact in double for an f32 w, and 2^24 weights of at most 1 sum below 2^64.
// Anything not above 0 (the -inf of "no cutoff" included) has no mass.
__device__ __forceinline__ u64 fixed_mass(float w) {
    return w > 0.0f ? (u64)((double)w * 1099511627776.0) : 0;
}

template <typename U> __device__ __forceinline__ U warp_sum_int(U x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

// Sum over the block; every thread gets it.
__device__ u64 block_sum_u64(u64 x) {
    __shared__ u64 partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_sum_int(x);
    __syncthreads();
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    x = lane < warps ? partial[lane] : 0;
    return warp_sum_int(x);
}

// Called by the 32 lanes of one warp over hist[0..bins) (bins a multiple of 32): the highest
// bin b whose suffix sum hist[b] + hist[b + 1] + ... reaches need (need >= 1), or -1 when
// even the whole sum falls short. Every lane gets it.
template <typename U> __device__ int pick_bin(const U* hist, int bins, U need) {
    const int lane = threadIdx.x % 32, per = bins / 32, first = lane * per;
    U local = 0;
    for (int j = 0; j < per; ++j) local += hist[first + j];
    U suffix = local;  // inclusive suffix sum over lanes
    for (int offset = 1; offset < 32; offset <<= 1) {
        const U other = __shfl_down_sync(FULL_MASK, suffix, offset);
        if (lane + offset < 32) suffix += other;
    }
    int b = -1;
    const U above = suffix - local;
    if (above < need && need <= suffix) {
        U acc = above;
        for (int j = per - 1; j >= 0; --j) {
            acc += hist[first + j];
            if (acc >= need) {
                b = first + j;
                break;
            }
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) b = max(b, __shfl_xor_sync(FULL_MASK, b, offset));
    return b;
}

// Called by one warp: hist[b + 1] + ... + hist[bins - 1]. Every lane gets it.
template <typename U> __device__ U sum_above(const U* hist, int bins, int b) {
    U s = 0;
    for (int i = b + 1 + (int)(threadIdx.x % 32); i < bins; i += 32) s += hist[i];
    return warp_sum_int(s);
}

// The radix digits: pass p looks at bits [shift, shift + width) of the weight's bits.
__device__ __forceinline__ int digit_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__device__ __forceinline__ int digit_width(int pass) { return pass == 2 ? 10 : 11; }
// The bits above the digit, which must equal the prefix found so far.
__device__ __forceinline__ unsigned high_mask(int pass) {
    return pass == 0 ? 0u : ~((1u << (digit_shift(pass) + digit_width(pass))) - 1u);
}

// tokens: (B) written; kept: (B, V) 0/1 written when not null (which tokens survived the
// filters: tests and diagnostics); logits: (B, V); uniforms: (B) in [0, 1). temperature <= 0
// is greedy (the first index of the largest logit); top_k 0 or >= V and top_p >= 1 keep
// every token. One block of SAMPLE_THREADS per row.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(unsigned* tokens, unsigned char* kept, const float* logits,
                const float* uniforms, float temperature, float top_p, int top_k, int v) {
    __shared__ unsigned hist_n[MAX_BINS];
    __shared__ u64 hist_m[MAX_BINS];
    __shared__ int s_bin;
    __shared__ unsigned s_n;
    __shared__ u64 s_m;
    __shared__ unsigned warp_ties[32];
    __shared__ u64 warp_mass[32];
    __shared__ unsigned s_tie_base[32];
    __shared__ u64 s_mass_base[32], s_mass_end[32], s_x;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
    const float* row = logits + (size_t)blockIdx.x * v;
    unsigned char* kept_row = kept ? kept + (size_t)blockIdx.x * v : nullptr;

    if (temperature <= 0.0f) {
        // The first index of the largest logit: (value, index) pairs, larger value first,
        // then the lower index.
        float best = -INFINITY;
        int best_i = INT_MAX;
        for (int i = tid; i < v; i += blockDim.x) {
            const float l = row[i];
            if (l > best || (l == best && i < best_i)) best = l, best_i = i;
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float ob = __shfl_xor_sync(FULL_MASK, best, offset);
            const int oi = __shfl_xor_sync(FULL_MASK, best_i, offset);
            if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
        }
        __shared__ float wb[32];
        __shared__ int wi[32];
        if (lane == 0) wb[warp] = best, wi[warp] = best_i;
        __syncthreads();
        if (warp == 0) {
            best = lane < warps ? wb[lane] : -INFINITY;
            best_i = lane < warps ? wi[lane] : INT_MAX;
            for (int offset = 16; offset > 0; offset >>= 1) {
                const float ob = __shfl_xor_sync(FULL_MASK, best, offset);
                const int oi = __shfl_xor_sync(FULL_MASK, best_i, offset);
                if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
            }
            // Every logit NaN leaves INT_MAX: token 0, as the CPU's argmax gives.
            if (lane == 0) tokens[blockIdx.x] = best_i == INT_MAX ? 0u : (unsigned)best_i;
            if (lane == 0) s_bin = best_i == INT_MAX ? 0 : best_i;
        }
        if (kept_row) {
            __syncthreads();
            for (int i = tid; i < v; i += blockDim.x) kept_row[i] = i == s_bin;
        }
        return;
    }

    float mx = -INFINITY;
    for (int i = tid; i < v; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = block_max(mx);
    const float t = temperature;

    // The kept rule, as the CPU's `Kept`: every weight above `cutoff`, and the first `ties`
    // tokens in id order whose weight equals it.
    float cutoff = -INFINITY;
    unsigned ties = 0;
    const bool use_k = top_k > 0 && top_k < v;

    if (use_k) {
        // The top_k-th largest weight: count histograms, digit by digit from the top.
        unsigned prefix = 0, need = (unsigned)top_k;
        for (int pass = 0; pass < 3; ++pass) {
            const int shift = digit_shift(pass), bins = 1 << digit_width(pass);
            const unsigned hi = high_mask(pass);
            for (int b = tid; b < bins; b += blockDim.x) hist_n[b] = 0;
            __syncthreads();
            for (int i = tid; i < v; i += blockDim.x) {
                const unsigned bits = __float_as_uint(sample_weight(row[i], mx, t));
                if ((bits & hi) == prefix) atomicAdd(&hist_n[(bits >> shift) & (bins - 1)], 1u);
            }
            __syncthreads();
            if (warp == 0) {
                const int b = pick_bin(hist_n, bins, need);
                const unsigned above = sum_above(hist_n, bins, b);
                if (lane == 0) s_bin = b, s_n = above;
            }
            __syncthreads();
            prefix |= (unsigned)s_bin << shift;
            need -= s_n;
        }
        // `need` of the tokens equal to the cutoff complete the top k.
        cutoff = __uint_as_float(prefix);
        ties = need;
    }

    if (top_p < 1.0f) {
        // The set top-k kept (K): every weight above `cutoff`, and `ties` tokens equal to it
        // (with no top-k, every token). Its mass, then the smallest set of its largest
        // weights whose mass reaches top_p times that: a mass search, digit by digit.
        const u64 tie_mass = use_k ? (u64)ties * fixed_mass(cutoff) : 0;
        u64 part = 0;
        for (int i = tid; i < v; i += blockDim.x) {
            const float w = sample_weight(row[i], mx, t);
            if (w > cutoff) part += fixed_mass(w);
        }
        const double target = (double)top_p * (double)(block_sum_u64(part) + tie_mass);
        const unsigned cut_bits = __float_as_uint(cutoff);
        unsigned prefix = 0;
        u64 above = 0;  // the mass of K above the prefix's range
        for (int pass = 0; pass < 3; ++pass) {
            const int shift = digit_shift(pass), bins = 1 << digit_width(pass);
            const unsigned hi = high_mask(pass);
            for (int b = tid; b < bins; b += blockDim.x) hist_n[b] = 0, hist_m[b] = 0;
            __syncthreads();
            for (int i = tid; i < v; i += blockDim.x) {
                const float w = sample_weight(row[i], mx, t);
                const unsigned bits = __float_as_uint(w);
                if (w > cutoff && (bits & hi) == prefix) {
                    const int d = (bits >> shift) & (bins - 1);
                    atomicAdd(&hist_n[d], 1u);
                    atomicAdd(&hist_m[d], fixed_mass(w));
                }
            }
            // The top-k ties, counted once where their value falls.
            if (tid == 0 && use_k && (cut_bits & hi) == prefix) {
                const int d = (cut_bits >> shift) & (bins - 1);
                atomicAdd(&hist_n[d], ties);
                atomicAdd(&hist_m[d], tie_mass);
            }
            __syncthreads();
            if (warp == 0) {
                const double need = target - (double)above;
                int b;
                if (need <= 0.0) {
                    b = pick_bin(hist_n, bins, 1u);  // nothing missing: the largest value
                } else {
                    b = pick_bin(hist_m, bins, (u64)ceil(need));
                    // Rounding left the target above the whole mass: the smallest value.
                    if (b < 0) b = pick_bin(hist_n, bins, sum_above(hist_n, bins, -1));
                }
                const u64 m_above = sum_above(hist_m, bins, b);
                if (lane == 0) s_bin = b, s_m = m_above, s_n = hist_n[b];
            }
            __syncthreads();
            prefix |= (unsigned)s_bin << shift;
            above += s_m;
        }
        // The nucleus: every weight of K above the value found, and as many of the tokens
        // equal to it (count s_n, each of mass w) as the target still needs, at least one.
        const float w = __uint_as_float(prefix);
        const u64 fw = fixed_mass(w);
        const double need = target - (double)above;
        unsigned take = s_n;
        if (fw > 0) {
            const double j = need <= 0.0 ? 1.0 : ceil(need / (double)fw);
            if (j < (double)s_n) take = max(1u, (unsigned)j);
        }
        cutoff = w;
        ties = take;
    }

    // The draw: warp w walks ids [w * seg, (w + 1) * seg). Per warp, the ties it holds and
    // the mass of its weights above the cutoff; then the kept mass before each warp.
    const int seg = ((v + warps - 1) / warps + 31) / 32 * 32;
    const int begin = min(v, warp * seg), end = min(v, begin + seg);
    {
        unsigned n_ties = 0;
        u64 mass = 0;
        for (int i = begin + lane; i < end; i += 32) {
            const float w = sample_weight(row[i], mx, t);
            if (w > cutoff) mass += fixed_mass(w);
            n_ties += w == cutoff;
        }
        n_ties = warp_sum_int(n_ties);
        mass = warp_sum_int(mass);
        if (lane == 0) warp_ties[warp] = n_ties, warp_mass[warp] = mass;
    }
    __syncthreads();
    if (warp == 0) {
        // Exclusive scans over the warps, in id order: ties first (the first `ties` ties are
        // kept), then the kept mass.
        const unsigned my_ties = lane < warps ? warp_ties[lane] : 0;
        unsigned tie_incl = my_ties;
        for (int offset = 1; offset < 32; offset <<= 1) {
            const unsigned o = __shfl_up_sync(FULL_MASK, tie_incl, offset);
            if (lane >= offset) tie_incl += o;
        }
        const unsigned tie_excl = tie_incl - my_ties;
        const unsigned kept_ties = tie_excl >= ties ? 0u : min(my_ties, ties - tie_excl);
        const u64 my_mass =
            (lane < warps ? warp_mass[lane] : 0) + (u64)kept_ties * fixed_mass(cutoff);
        u64 mass_incl = my_mass;
        for (int offset = 1; offset < 32; offset <<= 1) {
            const u64 o = __shfl_up_sync(FULL_MASK, mass_incl, offset);
            if (lane >= offset) mass_incl += o;
        }
        const u64 total = __shfl_sync(FULL_MASK, mass_incl, 31);
        s_tie_base[lane] = tie_excl;
        s_mass_base[lane] = mass_incl - my_mass;
        s_mass_end[lane] = mass_incl;
        if (lane == 0) {
            // The token whose kept mass, in id order, covers r * total.
            const double x = (double)uniforms[blockIdx.x] * (double)total;
            s_x = total == 0 ? 0 : min((u64)x, total - 1);
            tokens[blockIdx.x] = 0;  // overwritten below; only non-finite logits leave it
        }
    }
    __syncthreads();
    const u64 x = s_x;
    u64 run_mass = s_mass_base[warp];
    unsigned run_ties = s_tie_base[warp];
    // Only the warp whose range covers x needs to walk, unless the kept mask is wanted.
    if (!kept_row && !(run_mass <= x && x < s_mass_end[warp])) return;
    for (int base = begin; base < end; base += 32) {
        if (!kept_row && run_mass > x) break;
        const int i = base + lane;
        const float w = i < end ? sample_weight(row[i], mx, t) : -INFINITY;
        const bool tie = i < end && w == cutoff;
        const unsigned tie_bits = __ballot_sync(FULL_MASK, tie);
        const unsigned rank = run_ties + __popc(tie_bits & ((1u << lane) - 1u));
        const bool keep = i < end && (w > cutoff || (tie && rank < ties));
        const u64 m = keep ? fixed_mass(w) : 0;
        u64 incl = m;
        for (int offset = 1; offset < 32; offset <<= 1) {
            const u64 o = __shfl_up_sync(FULL_MASK, incl, offset);
            if (lane >= offset) incl += o;
        }
        const u64 start = run_mass + incl - m;
        if (m > 0 && start <= x && x < start + m) tokens[blockIdx.x] = (unsigned)i;
        if (kept_row && i < end) kept_row[i] = keep;
        run_mass += __shfl_sync(FULL_MASK, incl, 31);
        run_ties += __popc(tie_bits);
    }
}
