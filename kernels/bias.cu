// The bias of a linear layer (Qwen2's q/k/v projections): added after the cuBLAS product,
// and its gradient, the column sums of dout. CPU twin: the bias parts of
// src/backend/cpu/matmul.rs.
#include "common.cuh"

// out: (N, OC) += bias: (OC), elementwise.
template <typename T>
__device__ void add(T* out, const T* bias, long total, int oc) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(to_f32(out[i]) + to_f32(bias[i % oc]));
}

extern "C" __global__ void add_bias_f32(float* out, const float* bias, long total, int oc) {
    add(out, bias, total, oc);
}
extern "C" __global__ void add_bias_bf16(__nv_bfloat16* out, const __nv_bfloat16* bias, long total,
                                         int oc) {
    add(out, bias, total, oc);
}

// dbias: (OC) f32 += the sum over the N rows of dout: (N, OC), in row order: one thread per
// column, so the sum is the same on every run.
template <typename T>
__device__ void backward(float* dbias, const T* dout, int n, int oc) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= oc) return;
    float acc = 0.0f;
    for (int r = 0; r < n; r++) acc += to_f32(dout[(size_t)r * oc + col]);
    dbias[col] += acc;
}

extern "C" __global__ void bias_backward_f32(float* dbias, const float* dout, int n, int oc) {
    backward(dbias, dout, n, oc);
}
extern "C" __global__ void bias_backward_bf16(float* dbias, const __nv_bfloat16* dout, int n, int oc) {
    backward(dbias, dout, n, oc);
}
