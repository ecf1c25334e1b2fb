// AdamW over all parameters in one launch: f32 master weights and moments, as torch's
// AdamW (decoupled decay) and the CPU twin src/backend/cpu/adamw.rs: the weights before the
// update are copied to `previous` (for the trainer's roll-back) in the same pass. The host
// computes the bias corrections: step_size = lr / (1 - beta1^t), inv_sqrt_bias2 =
// 1 / sqrt(1 - beta2^t), decay = 1 - lr * weight_decay (1 where a tensor takes no decay is
// the trainer's business: it launches per decay group). `weights`, when not null, receives
// the new weights in the storage type, the copy the forward reads.
#include "common.cuh"

template <typename T>
__device__ void adamw(float* params, float* previous, float* m, float* v, const float* grads,
                      T* weights, long n, float beta1, float beta2, float eps, float decay,
                      float step_size, float inv_sqrt_bias2, float grad_scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float p = params[i];
        previous[i] = p;
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p = p * decay - step_size * mi / (sqrtf(vi) * inv_sqrt_bias2 + eps);
        params[i] = p;
        if (weights) weights[i] = from_f32<T>(p);
    }
}

extern "C" __global__ void adamw_update_f32(float* params, float* previous, float* m, float* v,
                                            const float* grads, float* weights, long n,
                                            float beta1, float beta2, float eps, float decay,
                                            float step_size, float inv_sqrt_bias2, float grad_scale) {
    adamw(params, previous, m, v, grads, weights, n, beta1, beta2, eps, decay, step_size,
          inv_sqrt_bias2, grad_scale);
}

extern "C" __global__ void adamw_update_bf16(float* params, float* previous, float* m, float* v,
                                             const float* grads, __nv_bfloat16* weights, long n,
                                             float beta1, float beta2, float eps, float decay,
                                             float step_size, float inv_sqrt_bias2, float grad_scale) {
    adamw(params, previous, m, v, grads, weights, n, beta1, beta2, eps, decay, step_size,
          inv_sqrt_bias2, grad_scale);
}
