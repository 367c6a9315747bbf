// Frozen weights stay in their GGUF blocks on the device; these kernels decode a tile of whole
// rows of one weight to f16, bf16 or f32 just before a tensor-core (cuBLAS) GEMM reads it.
//
// Launch: grid = ceil(n / 256), block = 256; one thread per output value.
// Buffers: src  = the tile's blocks, bytes [rows * cols / QK * block_bytes], row-major as in the
//                 GGUF file (a row's blocks are contiguous, rows follow each other);
//          dst  = [rows, cols] row-major, n = rows * cols values.
// A tile is whole rows and cols is a multiple of the block size (32, or 256 for the K-quants),
// so no block (or 256-value K-quant super-block) straddles two tiles.
#include "common.cuh"

// Q4_0: 18 bytes = f16 d, 16 bytes of nibbles; value j < 16 is the low nibble of byte j, value
// j + 16 its high nibble; x = d * (q - 8).
__device__ __forceinline__ float q4_0_at(const u8* b, int i) {
    const float d = f16_bits_to_f32(load_u16(b));
    const u8 q = b[2 + (i & 15)];
    const int v = i < 16 ? (q & 0xF) : (q >> 4);
    return d * (float)(v - 8);
}

// Q4_1: 20 bytes = f16 d, f16 m, 16 bytes of nibbles; x = d * q + m.
__device__ __forceinline__ float q4_1_at(const u8* b, int i) {
    const float d = f16_bits_to_f32(load_u16(b)), m = f16_bits_to_f32(load_u16(b + 2));
    const u8 q = b[4 + (i & 15)];
    const int v = i < 16 ? (q & 0xF) : (q >> 4);
    return d * (float)v + m;
}

// Q5_0: 22 bytes = f16 d, u32 of fifth bits (bit i for value i), 16 bytes of nibbles;
// x = d * (q - 16).
__device__ __forceinline__ float q5_0_at(const u8* b, int i) {
    const float d = f16_bits_to_f32(load_u16(b));
    const u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
    const u8 q = b[6 + (i & 15)];
    const int lo = i < 16 ? (q & 0xF) : (q >> 4);
    const int v = lo | (int)(((qh >> i) & 1u) << 4);
    return d * (float)(v - 16);
}

// Q5_1: 24 bytes = f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; x = d * q + m.
__device__ __forceinline__ float q5_1_at(const u8* b, int i) {
    const float d = f16_bits_to_f32(load_u16(b)), m = f16_bits_to_f32(load_u16(b + 2));
    const u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
    const u8 q = b[8 + (i & 15)];
    const int lo = i < 16 ? (q & 0xF) : (q >> 4);
    const int v = lo | (int)(((qh >> i) & 1u) << 4);
    return d * (float)v + m;
}

// Q8_0: 34 bytes = f16 d, 32 signed bytes; x = d * q.
__device__ __forceinline__ float q8_0_at(const u8* b, int i) {
    return f16_bits_to_f32(load_u16(b)) * (float)(i8)b[2 + i];
}

// The 6-bit scale and min of sub-block j (0..8) packed in a K-quant's 12 scale bytes.
__device__ __forceinline__ void k_scale_min(const u8* s, int j, int* sc, int* mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K and Q5_K share their head: f16 d, f16 dmin, 12 scale bytes; 8 sub-blocks of 32 values,
// sub-blocks 2p and 2p+1 sharing 32 nibble bytes (low nibbles, then high ones) at `qs`.
// x = d * scale(sub) * (nibble + high) - dmin * min(sub), with `high` the Q5_K fifth bit.
__device__ __forceinline__ float k_at(const u8* b, int i, const u8* qs, int high) {
    const float d = f16_bits_to_f32(load_u16(b)), dmin = f16_bits_to_f32(load_u16(b + 2));
    const int sub = i >> 5, l = i & 31;
    int sc, mn;
    k_scale_min(b + 4, sub, &sc, &mn);
    const u8 q = qs[32 * (sub >> 1) + l];
    const int v = ((sub & 1) ? (q >> 4) : (q & 0xF)) + high;
    return d * (float)sc * (float)v - dmin * (float)mn;
}

// Q4_K: 144 bytes, nibbles at 16.
__device__ __forceinline__ float q4_k_at(const u8* b, int i) { return k_at(b, i, b + 16, 0); }

// Q5_K: 176 bytes, 32 bytes of fifth bits at 16 (bit `sub` of byte l for value l of sub-block
// `sub`), nibbles at 48.
__device__ __forceinline__ float q5_k_at(const u8* b, int i) {
    return k_at(b, i, b + 48, ((b[16 + (i & 31)] >> (i >> 5)) & 1) ? 16 : 0);
}

// Q6_K: 210 bytes = 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales (one per
// 16 values), f16 d last; x = d * scale * (q - 32). Each half of 128 values uses 64 low bytes
// and 32 high bytes: quarter k (32 values, l = 0..32) takes the low nibble (k = 0, 1) or the
// high nibble (k = 2, 3) of low byte l (k even) or l + 32 (k odd), and bits 2k, 2k + 1 of high
// byte l.
__device__ __forceinline__ float q6_k_at(const u8* b, int i) {
    const int half = i >> 7, r = i & 127, k = r >> 5, l = r & 31;
    const u8* ql = b + 64 * half;
    const u8* qh = b + 128 + 32 * half;
    const i8* sc = (const i8*)(b + 192) + 8 * half;
    const float d = f16_bits_to_f32(load_u16(b + 208));
    const u8 lowbyte = ql[l + ((k & 1) ? 32 : 0)];
    const int lo = (k & 2) ? (lowbyte >> 4) : (lowbyte & 0xF);
    const int hi = (qh[l] >> (2 * k)) & 3;
    const int q = (lo | (hi << 4)) - 32;
    return d * (float)sc[(l >> 4) + 2 * k] * (float)q;
}

#define DEQUANT_KERNEL(NAME, AT, QK, BYTES, OUT_T, CONVERT)                                   \
    extern "C" __global__ void NAME(const u8* __restrict__ src, OUT_T* __restrict__ dst,     \
                                    long long n) {                                           \
        const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;              \
        if (idx >= n) return;                                                                \
        const u8* blk = src + (idx / QK) * BYTES;                                            \
        dst[idx] = CONVERT(AT(blk, (int)(idx % QK)));                                        \
    }

#define TO_F32(x) (x)
#define DEQUANT_ALL_OUTPUTS(TYPE, AT, QK, BYTES)                                              \
    DEQUANT_KERNEL(dequant_##TYPE##_f32, AT, QK, BYTES, float, TO_F32)                       \
    DEQUANT_KERNEL(dequant_##TYPE##_f16, AT, QK, BYTES, __half, __float2half_rn)             \
    DEQUANT_KERNEL(dequant_##TYPE##_bf16, AT, QK, BYTES, __nv_bfloat16, __float2bfloat16_rn)

DEQUANT_ALL_OUTPUTS(q4_0, q4_0_at, 32, 18)
DEQUANT_ALL_OUTPUTS(q4_1, q4_1_at, 32, 20)
DEQUANT_ALL_OUTPUTS(q5_0, q5_0_at, 32, 22)
DEQUANT_ALL_OUTPUTS(q5_1, q5_1_at, 32, 24)
DEQUANT_ALL_OUTPUTS(q8_0, q8_0_at, 32, 34)
DEQUANT_ALL_OUTPUTS(q4_k, q4_k_at, 256, 144)
DEQUANT_ALL_OUTPUTS(q5_k, q5_k_at, 256, 176)
DEQUANT_ALL_OUTPUTS(q6_k, q6_k_at, 256, 210)
