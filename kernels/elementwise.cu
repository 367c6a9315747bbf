// The small pieces of a training step that the other files leave to the host or to cuBLAS:
// bias rows, row gathers and scatters, column copies (head padding for attention.cu), RoPE from
// host-computed cos/sin tables, the RMSNorm backward that adds into (or overwrites in place)
// its gradient, and f16 / bf16 weights to f32.
#include "common.cuh"

// y [n] += b [i % cols]: the projection bias on every row of y [n / cols, cols].
// Launch: grid = ceil(n / 256), block = 256. Buffers: y [n], b [cols].
extern "C" __global__ void add_bias_rows(float* __restrict__ y, const float* __restrict__ b,
                                         long long n, int cols) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % cols];
}

// dst [k, width] = src rows idx[k] of src [.., width], n = k * width.
// Launch: grid = ceil(n / 256), block = 256. Buffers: src [max(idx) + 1, width], idx [k],
// dst [k, width].
extern "C" __global__ void gather_rows(const float* __restrict__ src, const int* __restrict__ idx,
                                       int width, long long n, float* __restrict__ dst) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long k = i / width, c = i % width;
    dst[i] = src[(long long)idx[k] * width + c];
}

// dst rows idx[k] = src [k, width], n = k * width; other rows of dst untouched (idx distinct).
// Launch: grid = ceil(n / 256), block = 256. Buffers: src [k, width], idx [k],
// dst [max(idx) + 1, width].
extern "C" __global__ void scatter_rows(const float* __restrict__ src,
                                        const int* __restrict__ idx, int width, long long n,
                                        float* __restrict__ dst) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long k = i / width, c = i % width;
    dst[(long long)idx[k] * width + c] = src[i];
}

// dst [rows, dst_w] columns 0 .. w = src [rows, src_w] columns 0 .. w, n = rows * w; the
// other columns of dst untouched (w <= src_w, w <= dst_w).
// Launch: grid = ceil(n / 256), block = 256.
extern "C" __global__ void copy_cols(const float* __restrict__ src, int src_w, int w, long long n,
                                     int dst_w, float* __restrict__ dst) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const long long r = i / w, c = i % w;
    dst[r * dst_w + c] = src[r * src_w + c];
}

// Rotary position embedding in place from per-row tables, forward (sign = +1) or its transpose
// (sign = -1): for each pair (a, b) of a head, x_a' = x_a c - x_b s, x_b' = x_b c + x_a s with
// s = sign * sin. neox pairs (i, i + half), otherwise (2i, 2i + 1).
// Launch: grid = (rows, heads), block = head_dim / 2. Buffers: x [rows, heads, head_dim];
// cos_t, sin_t [rows, head_dim / 2].
extern "C" __global__ void rope_table(float* __restrict__ x, const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, int heads, int head_dim,
                                      int neox, float sign) {
    const int row = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    const int half = head_dim >> 1;
    if (i >= half) return;
    float* v = x + ((long long)row * heads + head) * head_dim;
    const float c = cos_t[(long long)row * half + i];
    const float s = sign * sin_t[(long long)row * half + i];
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x1 * c + x0 * s;
}

// RMSNorm backward with frozen weight w: g = r * dy * w - x * r^3 * mean(dy * w * x) per row;
// dx += g when accumulate, dx = g otherwise. dy and dx may be the same buffer (in place, with
// accumulate = 0): each value of dy is read before its own thread overwrites it.
// Launch: grid = rows, block = 256. Buffers: x, dy, dx [rows, d]; w [d]; inv_rms [rows].
extern "C" __global__ void rmsnorm_bwd_acc(const float* __restrict__ x,
                                           const float* __restrict__ w,
                                           const float* __restrict__ inv_rms, const float* dy,
                                           int d, int accumulate, float* dx) {
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * d;
    const float r = inv_rms[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += dy[base + j] * w[j] * x[base + j];
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / (float)d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float g = r * dy[base + j] * w[j] - x[base + j] * c;
        dx[base + j] = accumulate ? dx[base + j] + g : g;
    }
}

// Unquantized GGUF / safetensors weights to f32, n values.
// Launch: grid = ceil(n / 256), block = 256. Buffers: src [n] (16-bit values), dst [n].
extern "C" __global__ void dequant_f16_to_f32(const u16* __restrict__ src, float* __restrict__ dst,
                                              long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f16_bits_to_f32(src[i]);
}

extern "C" __global__ void dequant_bf16_to_f32(const u16* __restrict__ src,
                                               float* __restrict__ dst, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __uint_as_float((u32)src[i] << 16);
}
