// Rotary position embedding, applied in place to q or k, forward (sign = +1) or backward
// (sign = -1: the transpose of a rotation is the rotation by minus the angle).
// Positions restart at 0 for each record packed into a micro-batch, so they come from the
// host per row. `neox` selects the pairing: (i, i + half) for NeoX/Llama-HF/Qwen/Gemma
// weights as transformers holds them, (2i, 2i + 1) for the interleaved GGML layout.
// inv_freq [head_dim / 2] already carries the model's RoPE base and any Llama 3 scaling.
//
// Launch: grid = (rows, heads), block = head_dim / 2. Buffers: x [rows, heads, head_dim];
// pos [rows]; inv_freq [head_dim / 2].
#include "common.cuh"

extern "C" __global__ void rope_apply(float* __restrict__ x, const int* __restrict__ pos,
                                      const float* __restrict__ inv_freq, int heads,
                                      int head_dim, int neox, float sign) {
    const int row = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    const int half = head_dim >> 1;
    if (i >= half) return;
    float* v = x + ((long long)row * heads + head) * head_dim;
    float s, c;
    sincosf((float)pos[row] * inv_freq[i], &s, &c);
    s *= sign;
    const int a = neox ? i : 2 * i;
    const int b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
}
