// Rotary position embedding in the "rotate half" layout, in place, and its backward (the
// rotation by the opposite angle). CPU twin: src/backend/cpu/rope.rs. The host builds the
// (N, D/2) cos and sin tables (RopeTable) and uploads them.
#include "common.cuh"

// x: (N, heads, D) in place; cos, sin: (N, D/2); direction 1 (forward) or -1 (backward).
// One thread per (row, head, i < D/2) pair.
template <typename T>
__device__ void rotate(T* x, const float* cos_t, const float* sin_t, int n, int heads, int half,
                       float direction) {
    const long total = (long)n * heads * half;
    for (long k = blockIdx.x * (long)blockDim.x + threadIdx.x; k < total; k += (long)gridDim.x * blockDim.x) {
        const int i = k % half;
        const long rh = k / half;  // row * heads + head
        const long row = rh / heads;
        T* head = x + rh * 2 * half;
        const float c = cos_t[row * half + i], s = direction * sin_t[row * half + i];
        const float x1 = to_f32(head[i]), x2 = to_f32(head[i + half]);
        head[i] = from_f32<T>(x1 * c - x2 * s);
        head[i + half] = from_f32<T>(x2 * c + x1 * s);
    }
}

extern "C" __global__ void rope_f32(float* x, const float* cos_t, const float* sin_t, int n,
                                    int heads, int half, float direction) {
    rotate(x, cos_t, sin_t, n, heads, half, direction);
}
extern "C" __global__ void rope_bf16(__nv_bfloat16* x, const float* cos_t, const float* sin_t,
                                     int n, int heads, int half, float direction) {
    rotate(x, cos_t, sin_t, n, heads, half, direction);
}
