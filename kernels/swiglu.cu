// The gated MLP activation, out = silu(gate) * up, and its backward, on the rows of the
// fused gate/up projection: gate_up (N, 2I), each row gate then up; out (N, I). CPU twin:
// src/backend/cpu/swiglu.rs on each row's halves (dgate and dup assigned). Elementwise over
// the N x I outputs: a grid-stride loop.
#include "common.cuh"

template <typename T>
__device__ void forward(T* out, const T* gate_up, long n, long im) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long g_at = i / im * 2 * im + i % im;
        const float g = to_f32(gate_up[g_at]), u = to_f32(gate_up[g_at + im]);
        out[i] = from_f32<T>(g / (1.0f + expf(-g)) * u);
    }
}

// With s = sigmoid(g): d silu(g) / dg = s (1 + g (1 - s)).
template <typename T>
__device__ void backward(T* dgate_up, const T* dout, const T* gate_up, long n, long im) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long g_at = i / im * 2 * im + i % im;
        const float g = to_f32(gate_up[g_at]), u = to_f32(gate_up[g_at + im]), d = to_f32(dout[i]);
        const float s = 1.0f / (1.0f + expf(-g));
        dgate_up[g_at + im] = from_f32<T>(d * g * s);
        dgate_up[g_at] = from_f32<T>(d * u * s * (1.0f + g * (1.0f - s)));
    }
}

// n = N x I outputs; im = I.
extern "C" __global__ void swiglu_forward_f32(float* out, const float* gate_up, long n, long im) {
    forward(out, gate_up, n, im);
}
extern "C" __global__ void swiglu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* gate_up,
                                               long n, long im) {
    forward(out, gate_up, n, im);
}
extern "C" __global__ void swiglu_backward_f32(float* dgate_up, const float* dout,
                                               const float* gate_up, long n, long im) {
    backward(dgate_up, dout, gate_up, n, im);
}
extern "C" __global__ void swiglu_backward_bf16(__nv_bfloat16* dgate_up, const __nv_bfloat16* dout,
                                                const __nv_bfloat16* gate_up, long n, long im) {
    backward(dgate_up, dout, gate_up, n, im);
}
