// The gated MLP activation, out = silu(gate) * up, and its backward. CPU twin:
// src/backend/cpu/swiglu.rs (dgate and dup assigned). Elementwise: a grid-stride loop.
#include "common.cuh"

template <typename T>
__device__ void forward(T* out, const T* gate, const T* up, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
    }
}

// With s = sigmoid(g): d silu(g) / dg = s (1 + g (1 - s)).
template <typename T>
__device__ void backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
        float s = 1.0f / (1.0f + expf(-g));
        dup[i] = from_f32<T>(d * g * s);
        dgate[i] = from_f32<T>(d * u * s * (1.0f + g * (1.0f - s)));
    }
}

// out, gate, up: (N, I) flattened to n elements.
extern "C" __global__ void swiglu_forward_f32(float* out, const float* gate, const float* up, long n) {
    forward(out, gate, up, n);
}
extern "C" __global__ void swiglu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* gate,
                                               const __nv_bfloat16* up, long n) {
    forward(out, gate, up, n);
}
extern "C" __global__ void swiglu_backward_f32(float* dgate, float* dup, const float* dout,
                                               const float* gate, const float* up, long n) {
    backward(dgate, dup, dout, gate, up, n);
}
extern "C" __global__ void swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup,
                                                const __nv_bfloat16* dout,
                                                const __nv_bfloat16* gate,
                                                const __nv_bfloat16* up, long n) {
    backward(dgate, dup, dout, gate, up, n);
}
