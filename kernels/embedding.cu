// Token embedding lookup and its backward. CPU twin: src/backend/cpu/embedding.rs.
#include "common.cuh"

// out: (N, C), tokens: (N), table: (V, C); ids checked by the caller. One block per row.
template <typename T>
__device__ void forward(T* out, const unsigned* tokens, const T* table, int c) {
    const T* src = table + (size_t)tokens[blockIdx.x] * c;
    T* dst = out + (size_t)blockIdx.x * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void embedding_forward_f32(float* out, const unsigned* tokens,
                                                 const float* table, int c) {
    forward(out, tokens, table, c);
}
extern "C" __global__ void embedding_forward_bf16(__nv_bfloat16* out, const unsigned* tokens,
                                                  const __nv_bfloat16* table, int c) {
    forward(out, tokens, table, c);
}

// dtable: (V, C) f32 accumulated; dout: (N, C). The rows come grouped by token: the rows of
// the u-th distinct token are order[starts[u] .. starts[u+1]], in row order, and the token is
// ids[u]. One block per distinct token, threads over the columns: each element of dtable is
// written by one thread, which adds the token's rows in row order onto it, so the sum is the
// CPU twin's, bit for bit, whatever the scheduling.
template <typename T>
__device__ void backward(float* dtable, const T* dout, const int* order, const int* starts,
                         const unsigned* ids, int c) {
    const int u = blockIdx.x;
    float* dst = dtable + (size_t)ids[u] * c;
    for (int col = threadIdx.x; col < c; col += blockDim.x) {
        float acc = dst[col];
        for (int i = starts[u]; i < starts[u + 1]; i++) acc += to_f32(dout[(size_t)order[i] * c + col]);
        dst[col] = acc;
    }
}

extern "C" __global__ void embedding_backward_f32(float* dtable, const float* dout,
                                                  const int* order, const int* starts,
                                                  const unsigned* ids, int c) {
    backward(dtable, dout, order, starts, ids, c);
}
extern "C" __global__ void embedding_backward_bf16(float* dtable, const __nv_bfloat16* dout,
                                                   const int* order, const int* starts,
                                                   const unsigned* ids, int c) {
    backward(dtable, dout, order, starts, ids, c);
}
