// The LoRA side of a projection: y += (alpha / r) * (x A^T) B^T. The products are cuBLAS GEMMs
// on [rows, d_in] x [r, d_in]^T and [rows, r] x [d_out, r]^T; these kernels do what is left.
//
// Launch (both): grid = ceil(n / 256), block = 256.
#include "common.cuh"

// y [n] += scale * t [n]: adds the scaled LoRA product into the frozen projection's output
// (n = rows * d_out), or the scaled dx of the LoRA path into dx in the backward.
extern "C" __global__ void lora_axpy(const float* __restrict__ t, float scale, long long n,
                                     float* __restrict__ y) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += scale * t[i];
}

// Sum of squares of g [n] into out[0] (atomically; out zeroed by the host): the global
// gradient norm for clipping, accumulated over every LoRA tensor before AdamW.
extern "C" __global__ void sum_squares(const float* __restrict__ g, long long n,
                                       float* __restrict__ out) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) atomicAdd(out, s);
}
