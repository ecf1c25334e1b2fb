// RMSNorm, y = x / sqrt(mean(x^2) + eps) * w, and its backward. CPU twin:
// src/backend/cpu/rmsnorm.rs (same conventions: dinp assigned, dweight accumulated, 1/rms
// recomputed in the backward). dweight is summed over the rows by glue.cu's column sums,
// in a fixed order, so the result does not depend on scheduling.
//
// Launch: one block per row (forward, backward), blockDim.x a multiple of 32.
#include "common.cuh"

template <typename T>
__device__ void forward(T* out, const T* inp, const T* weight, float eps, int c) {
    const T* x = inp + (size_t)blockIdx.x * c;
    T* y = out + (size_t)blockIdx.x * c;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float v = to_f32(x[i]);
        ss += v * v;
    }
    const float rstd = rsqrtf(block_sum(ss) / c + eps);
    for (int i = threadIdx.x; i < c; i += blockDim.x)
        y[i] = from_f32<T>(to_f32(x[i]) * rstd * to_f32(weight[i]));
}

// out, inp: (N, C); weight: (C).
extern "C" __global__ void rmsnorm_forward_f32(float* out, const float* inp, const float* weight,
                                               float eps, int c) {
    forward(out, inp, weight, eps, c);
}
extern "C" __global__ void rmsnorm_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp,
                                                const __nv_bfloat16* weight, float eps, int c) {
    forward(out, inp, weight, eps, c);
}

// dinp (N, C) assigned; dweight_rows (N, C) f32: each row's dy * x * rstd, summed over
// the rows by column_sums (glue.cu). With r = 1/rms: dx = r (w dy) - x r^3 / C * sum(w dy x).
template <typename T>
__device__ void backward(T* dinp, float* dweight_rows, const T* dout, const T* inp,
                         const T* weight, float eps, int c) {
    const size_t row = (size_t)blockIdx.x * c;
    float ss = 0.0f, dot = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float x = to_f32(inp[row + i]);
        ss += x * x;
        dot += to_f32(weight[i]) * to_f32(dout[row + i]) * x;
    }
    ss = block_sum(ss);
    dot = block_sum(dot);
    const float rstd = rsqrtf(ss / c + eps);
    const float k = dot * rstd * rstd * rstd / c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float x = to_f32(inp[row + i]), dy = to_f32(dout[row + i]);
        dinp[row + i] = from_f32<T>(rstd * to_f32(weight[i]) * dy - x * k);
        dweight_rows[row + i] = dy * x * rstd;
    }
}

extern "C" __global__ void rmsnorm_backward_f32(float* dinp, float* dweight_rows,
                                                const float* dout, const float* inp,
                                                const float* weight, float eps, int c) {
    backward(dinp, dweight_rows, dout, inp, weight, eps, c);
}
extern "C" __global__ void rmsnorm_backward_bf16(__nv_bfloat16* dinp, float* dweight_rows,
                                                 const __nv_bfloat16* dout,
                                                 const __nv_bfloat16* inp,
                                                 const __nv_bfloat16* weight, float eps, int c) {
    backward(dinp, dweight_rows, dout, inp, weight, eps, c);
}
