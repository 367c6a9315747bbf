// Shared helpers for the edge-sft CUDA kernels (issue 18). NVRTC compiles each kernels/*.cu on
// its own with this header on the include path; no host code lives here.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// NVRTC has no <math.h>; +inf as its bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Max over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Reduce over a block of blockDim.x threads (a multiple of 32, at most 1024) with the warp
// reduction WARP_OP; every thread gets the result. `scratch` holds 32 floats of shared memory;
// `identity` fills the lanes past the last warp.
template <float (*WARP_OP)(float)>
__device__ __forceinline__ float block_reduce(float v, float* scratch, float identity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = WARP_OP(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? scratch[lane] : identity;
    return WARP_OP(v);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    return block_reduce<warp_sum>(v, scratch, 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    return block_reduce<warp_max>(v, scratch, -INFINITY);
}

// An IEEE half stored as its 16 bits in a GGUF block (ggml_fp16_t), to f32.
__device__ __forceinline__ float f16_bits_to_f32(u16 bits) {
    return __half2float(__ushort_as_half(bits));
}

// Little-endian u16 at a byte address that may be unaligned (GGUF blocks are packed).
__device__ __forceinline__ u16 load_u16(const u8* p) {
    return (u16)p[0] | ((u16)p[1] << 8);
}
