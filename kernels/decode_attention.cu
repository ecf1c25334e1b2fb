// Decode attention: one new query row per sequence attends over its whole key/value cache,
// with grouped-query heads. CPU twin: attention_forward in src/backend/cpu/attention.rs with
// one row per sequence at position len - 1.
//
// Cache layout: k, v: (B, Tmax, Hkv, D), sequence b holding lens[b] positions. A first,
// simple version: one block per (sequence, head); the scores go through a global scratch
// (B, H, Tmax), so any length fits; each thread takes whole keys, then whole output lanes.
#include "common.cuh"

template <typename T>
__device__ void decode(T* out, float* lse, float* scratch, const T* q, const T* k, const T* v,
                       const int* lens, int n_head, int n_kv_head, int d, int t_max, float scale) {
    const int b = blockIdx.x / n_head, h = blockIdx.x % n_head;
    const int g = h / (n_head / n_kv_head);
    const int len = lens[b];
    const T* qh = q + ((size_t)b * n_head + h) * d;
    float* s = scratch + ((size_t)b * n_head + h) * t_max;
    const size_t kv_row = (size_t)n_kv_head * d;
    const T* kb = k + (size_t)b * t_max * kv_row + (size_t)g * d;
    const T* vb = v + (size_t)b * t_max * kv_row + (size_t)g * d;

    float m = -INFINITY;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const T* kt = kb + t * kv_row;
        float dot = 0.0f;
        for (int i = 0; i < d; i++) dot += to_f32(qh[i]) * to_f32(kt[i]);
        s[t] = dot * scale;
        m = fmaxf(m, s[t]);
    }
    m = block_max(m);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const float e = expf(s[t] - m);
        s[t] = e;
        sum += e;
    }
    sum = block_sum(sum);  // its __syncthreads also publishes s[] to the block
    const float inv = 1.0f / sum;
    T* oh = out + ((size_t)b * n_head + h) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < len; t++) acc += s[t] * to_f32(vb[t * kv_row + i]);
        oh[i] = from_f32<T>(acc * inv);
    }
    if (threadIdx.x == 0) lse[b * n_head + h] = m + logf(sum);
}

// out: (B, H, D); lse: (B, H); scratch: (B, H, Tmax) f32; q: (B, H, D); k, v: (B, Tmax, Hkv, D);
// lens: (B), each in 1..=Tmax. Launch: B * H blocks.
extern "C" __global__ void decode_attention_f32(float* out, float* lse, float* scratch,
                                                const float* q, const float* k, const float* v,
                                                const int* lens, int n_head, int n_kv_head, int d,
                                                int t_max, float scale) {
    decode(out, lse, scratch, q, k, v, lens, n_head, n_kv_head, d, t_max, scale);
}
extern "C" __global__ void decode_attention_bf16(__nv_bfloat16* out, float* lse, float* scratch,
                                                 const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                 const __nv_bfloat16* v, const int* lens,
                                                 int n_head, int n_kv_head, int d, int t_max,
                                                 float scale) {
    decode(out, lse, scratch, q, k, v, lens, n_head, n_kv_head, d, t_max, scale);
}
