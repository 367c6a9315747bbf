// RMSNorm forward and backward (the norm weights are frozen: only dx is needed).
// y = x * rsqrt(mean(x^2) + eps) * (w + w_offset); w_offset is 0 for Llama/Qwen, 1 for Gemma
// (which stores w - 1).
//
// Launch (both): grid = rows, block = 256. Buffers: x, y, dy, dx [rows, d]; w [d];
// inv_rms [rows] (saved by the forward for the backward).
#include "common.cuh"

extern "C" __global__ void rmsnorm_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                       float w_offset, float eps, int d, float* __restrict__ y,
                                       float* __restrict__ inv_rms) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += x[base + j] * x[base + j];
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / (float)d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) y[base + j] = x[base + j] * r * (w[j] + w_offset);
    if (threadIdx.x == 0) inv_rms[blockIdx.x] = r;
}

// dx = r * g - x * r^3 * mean(g * x), with g = dy * (w + w_offset).
extern "C" __global__ void rmsnorm_bwd(const float* __restrict__ x, const float* __restrict__ w,
                                       float w_offset, const float* __restrict__ inv_rms,
                                       const float* __restrict__ dy, int d,
                                       float* __restrict__ dx) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    const float r = inv_rms[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += dy[base + j] * (w[j] + w_offset) * x[base + j];
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / (float)d;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        dx[base + j] = r * dy[base + j] * (w[j] + w_offset) - x[base + j] * c;
}
