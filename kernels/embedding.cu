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

// dtable: (V, C) f32 accumulated; dout: (N, C); tokens: (N). One thread per column walks the
// rows in order, so a repeated token's gradients add up in the same order on every run (as
// the CPU twin). Simple, not yet fast: every thread reads all N rows of its column.
template <typename T>
__device__ void backward(float* dtable, const T* dout, const unsigned* tokens, int n, int c) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    for (int r = 0; r < n; r++)
        dtable[(size_t)tokens[r] * c + col] += to_f32(dout[(size_t)r * c + col]);
}

extern "C" __global__ void embedding_backward_f32(float* dtable, const float* dout,
                                                  const unsigned* tokens, int n, int c) {
    backward(dtable, dout, tokens, n, c);
}
extern "C" __global__ void embedding_backward_bf16(float* dtable, const __nv_bfloat16* dout,
                                                   const unsigned* tokens, int n, int c) {
    backward(dtable, dout, tokens, n, c);
}
