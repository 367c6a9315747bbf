// Fused response-masked NLL over vocabulary chunks: the [tokens x vocab] logits never exist.
// Only response rows are gathered (the host packs their hidden states into h [rows, d]), and
// the output projection is taken one chunk of C vocabulary rows at a time:
//
//   pass 1, per chunk: logits [rows, C] = h . W[c0 .. c0 + C]^T   (cuBLAS, f32 accumulate)
//                      nll_chunk_stats: running max, running sum of exp, target logit per row
//   nll_finalize:      loss[row] = log(sum) + max - target_logit
//   pass 2, per chunk: logits again, then nll_chunk_grad turns them in place into
//                      dlogits = (softmax - onehot(target)) * row_scale[row]
//                      and cuBLAS accumulates dh [rows, d] += dlogits . W[chunk]
//
// Memory: rows * C floats for one chunk (256 rows x 8192 = 8 MB) instead of rows * vocab
// (256 x 262,144 = 268 MB for Gemma 3).

#include "common.cuh"

// Launch: grid = rows, block = 256 (a multiple of 32). Buffers: logits [rows, C] (this chunk),
// targets [rows] (vocabulary ids), row_max / row_sum / target_logit [rows], initialised by the
// host to -inf / 0 / 0 before the first chunk.
extern "C" __global__ void nll_chunk_stats(const float* __restrict__ logits, int C, int c0,
                                           const int* __restrict__ targets,
                                           float* __restrict__ row_max,
                                           float* __restrict__ row_sum,
                                           float* __restrict__ target_logit) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    const float* z = logits + (long long)row * C;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, z[j]);
    // block max through the sum helper's scratch: negate-free two-step reduction
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += __expf(z[j] - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float old_m = row_max[row];
        const float new_m = fmaxf(old_m, m);
        // rescale both partial sums to the new running max (online log-sum-exp)
        const float old_part = old_m == -INFINITY ? 0.0f : row_sum[row] * __expf(old_m - new_m);
        row_sum[row] = old_part + s * __expf(m - new_m);
        row_max[row] = new_m;
        const int t = targets[row] - c0;
        if (t >= 0 && t < C) target_logit[row] = z[t];
    }
}

// Launch: grid = ceil(rows / 256), block = 256. loss [rows] = log-sum-exp - target logit.
extern "C" __global__ void nll_finalize(const float* __restrict__ row_max,
                                        const float* __restrict__ row_sum,
                                        const float* __restrict__ target_logit, int rows,
                                        float* __restrict__ loss) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    loss[row] = logf(row_sum[row]) + row_max[row] - target_logit[row];
}

// Launch: grid = (ceil(C / 256), rows), block = 256. In place: logits [rows, C] of this chunk
// become dlogits = (exp(z - lse) - [j == target]) * row_scale[row], where lse = max + log(sum)
// from pass 1 and row_scale is d(loss)/d(nll of the row) (1 / response tokens for a mean).
extern "C" __global__ void nll_chunk_grad(float* __restrict__ logits, int C, int c0,
                                          const int* __restrict__ targets,
                                          const float* __restrict__ row_max,
                                          const float* __restrict__ row_sum,
                                          const float* __restrict__ row_scale) {
    const int row = blockIdx.y;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= C) return;
    const float lse = row_max[row] + logf(row_sum[row]);
    float* z = logits + (long long)row * C;
    float g = __expf(z[j] - lse);
    if (c0 + j == targets[row]) g -= 1.0f;
    z[j] = g * row_scale[row];
}
