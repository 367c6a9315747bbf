// AdamW on the LoRA parameters (the frozen weights have no optimizer state), as PyTorch's
// torch.optim.AdamW: decoupled weight decay, bias-corrected moments.
//
// Launch: grid = ceil(n / 256), block = 256. Buffers: p, g, m, v [n] (one LoRA tensor, f32).
// clip = min(1, max_norm / |g|) from sum_squares over all LoRA tensors (1 when not clipping);
// bc1 = 1 - beta1^t, bc2 = 1 - beta2^t for step t (from 1), computed on the host in f64.
#include "common.cuh"

extern "C" __global__ void adamw_step(float* __restrict__ p, const float* __restrict__ g,
                                      float* __restrict__ m, float* __restrict__ v, long long n,
                                      float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bc1, float bc2, float clip) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[i] * clip;
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] * (1.0f - lr * weight_decay);
    p[i] = pi - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}
