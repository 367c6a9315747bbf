// Gated MLP activations: SwiGLU (Llama, Qwen) h = silu(g) * u and GeGLU (Gemma 3) h =
// gelu_tanh(g) * u, forward and backward.
//
// Launch (all): grid = ceil(n / 256), block = 256; n = rows * d_ff. Buffers: g, u, h, dh, dg,
// du [rows, d_ff].
#include "common.cuh"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_C 0.044715f

extern "C" __global__ void swiglu_fwd(const float* __restrict__ g, const float* __restrict__ u,
                                      long long n, float* __restrict__ h) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float sig = 1.0f / (1.0f + __expf(-g[i]));
    h[i] = g[i] * sig * u[i];
}

// d silu(g) / dg = sig * (1 + g * (1 - sig)).
extern "C" __global__ void swiglu_bwd(const float* __restrict__ g, const float* __restrict__ u,
                                      const float* __restrict__ dh, long long n,
                                      float* __restrict__ dg, float* __restrict__ du) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float sig = 1.0f / (1.0f + __expf(-g[i]));
    const float silu = g[i] * sig;
    du[i] = dh[i] * silu;
    dg[i] = dh[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
}

extern "C" __global__ void geglu_fwd(const float* __restrict__ g, const float* __restrict__ u,
                                     long long n, float* __restrict__ h) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = g[i];
    const float t = tanhf(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    h[i] = 0.5f * x * (1.0f + t) * u[i];
}

// d gelu_tanh(x) / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2).
extern "C" __global__ void geglu_bwd(const float* __restrict__ g, const float* __restrict__ u,
                                     const float* __restrict__ dh, long long n,
                                     float* __restrict__ dg, float* __restrict__ du) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = g[i];
    const float t = tanhf(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    const float gelu = 0.5f * x * (1.0f + t);
    const float dgelu =
        0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
    du[i] = dh[i] * gelu;
    dg[i] = dh[i] * u[i] * dgelu;
}
