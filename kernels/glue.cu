// The data movement around the math kernels: residual adds, column blocks of row-major
// buffers, scaled (the fused q/k/v projection split into q, k and v and joined back, LoRA's
// scaled blocks), and rows gathered or scattered by index (the scored rows of a batch, new
// rows of a KV cache).
// CPU twins: src/backend/cpu/glue.rs and src/backend/cpu/residual.rs.
#include "common.cuh"

// x += y over n elements.
template <typename T>
__device__ void add(T* x, const T* y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(y[i]));
}
extern "C" __global__ void residual_forward_f32(float* x, const float* y, long n) { add(x, y, n); }
extern "C" __global__ void residual_forward_bf16(__nv_bfloat16* x, const __nv_bfloat16* y, long n) {
    add(x, y, n);
}

// dst[r, dst_off + j] = (add ? dst[r, dst_off + j] : 0) + scale * src[r, src_off + j]: a block
// of columns scaled into another buffer's (LoRA's scaled update of a fused projection's block,
// and the block of its gradient). Sums in f32.
template <typename T>
__device__ void scale_cols(T* dst, long dst_stride, long dst_off, const T* src, long src_stride,
                           long src_off, long rows, long width, float scale, int add) {
    const long n = rows * width;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long r = i / width, j = i % width;
        T* d = dst + r * dst_stride + dst_off + j;
        const float v = scale * to_f32(src[r * src_stride + src_off + j]);
        *d = from_f32<T>(add ? to_f32(*d) + v : v);
    }
}
extern "C" __global__ void scale_columns_f32(float* dst, long dst_stride, long dst_off,
                                             const float* src, long src_stride, long src_off,
                                             long rows, long width, float scale, int add) {
    scale_cols(dst, dst_stride, dst_off, src, src_stride, src_off, rows, width, scale, add);
}
extern "C" __global__ void scale_columns_bf16(__nv_bfloat16* dst, long dst_stride, long dst_off,
                                              const __nv_bfloat16* src, long src_stride,
                                              long src_off, long rows, long width, float scale,
                                              int add) {
    scale_cols(dst, dst_stride, dst_off, src, src_stride, src_off, rows, width, scale, add);
}

// dst[i] = (add ? dst[i] : 0) + (u_i >= p ? src[i] / (1 - p) : 0): inverted dropout (LoRA's, on
// an adapted Linear's input) whose mask is a function of (seed, i) alone, u_i the top 24
// bits of splitmix64(seed ^ i * golden) over 2^24, so the backward draws it again. CPU twin:
// src/backend/cpu/dropout.rs.
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
template <typename T>
__device__ void drop(T* dst, const T* src, long n, float p, unsigned long long seed, int add) {
    const float scale = 1.0f / (1.0f - p);
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const unsigned long long bits = mix64(seed ^ ((unsigned long long)i * 0x9e3779b97f4a7c15ULL));
        const float u = (float)(bits >> 40) * (1.0f / 16777216.0f);
        const float v = u >= p ? to_f32(src[i]) * scale : 0.0f;
        dst[i] = from_f32<T>(add ? to_f32(dst[i]) + v : v);
    }
}
extern "C" __global__ void dropout_f32(float* dst, const float* src, long n, float p,
                                       unsigned long long seed, int add) {
    drop(dst, src, n, p, seed, add);
}
extern "C" __global__ void dropout_bf16(__nv_bfloat16* dst, const __nv_bfloat16* src, long n,
                                        float p, unsigned long long seed, int add) {
    drop(dst, src, n, p, seed, add);
}

// Row m of dst (M, C) = row idx[m] of src (gather); row idx[m] of dst = row m of src
// (scatter). One block per m.
template <typename T>
__device__ void gather(T* dst, const T* src, const int* idx, int c) {
    const T* s = src + (size_t)idx[blockIdx.x] * c;
    T* d = dst + (size_t)blockIdx.x * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) d[i] = s[i];
}
template <typename T>
__device__ void scatter(T* dst, const T* src, const int* idx, int c) {
    const T* s = src + (size_t)blockIdx.x * c;
    T* d = dst + (size_t)idx[blockIdx.x] * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) d[i] = s[i];
}
extern "C" __global__ void gather_rows_f32(float* dst, const float* src, const int* idx, int c) {
    gather(dst, src, idx, c);
}
extern "C" __global__ void gather_rows_bf16(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                            const int* idx, int c) {
    gather(dst, src, idx, c);
}
extern "C" __global__ void scatter_rows_f32(float* dst, const float* src, const int* idx, int c) {
    scatter(dst, src, idx, c);
}
extern "C" __global__ void scatter_rows_bf16(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                             const int* idx, int c) {
    scatter(dst, src, idx, c);
}

// partial[block] = the sum of x[i]^2 over the elements this block's grid-stride loop visits,
// in f64 (as the CPU twin sums them; the host adds the partials: the gradient norm).
// Launch: at most 8192 blocks.
extern "C" __global__ void sum_squares_partial(double* partial, const float* x, long n) {
    double acc = 0.0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        acc += (double)x[i] * x[i];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Column sums of x: (N, C) in two deterministic passes. First, partial: (R, C) with
// partial[r, col] = the sum of x[row, col] over rows r*seg .. min((r+1)*seg, N), in row
// order; grid (ceil(C / blockDim.x), R). Then out[col] += the sum of partial[0..R, col] in
// order. Many blocks share the rows, so a long batch no longer runs on C threads alone.
template <typename T>
__device__ void column_partial(float* partial, const T* x, int n, int c, int seg) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    const int r0 = blockIdx.y * seg, r1 = min(n, r0 + seg);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += to_f32(x[(size_t)r * c + col]);
    partial[(size_t)blockIdx.y * c + col] = acc;
}
extern "C" __global__ void column_sums_partial_f32(float* partial, const float* x, int n, int c,
                                                   int seg) {
    column_partial(partial, x, n, c, seg);
}
extern "C" __global__ void column_sums_partial_bf16(float* partial, const __nv_bfloat16* x, int n,
                                                    int c, int seg) {
    column_partial(partial, x, n, c, seg);
}
extern "C" __global__ void column_sums_finish(float* out, const float* partial, int r, int c) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float acc = 0.0f;
    for (int i = 0; i < r; i++) acc += partial[(size_t)i * c + col];
    out[col] += acc;
}
