// The bias of a linear layer (Qwen2's q/k/v projections): added after the cuBLAS product,
// and its gradient, the column sums of dout (glue.cu's column_sums). CPU twin: the bias parts of
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
