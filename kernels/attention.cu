// Causal attention over packed records, forward and backward, with grouped-query heads and an
// optional sliding window (Gemma 3's local layers). A row attends to the rows before it (and
// itself) of the same record: seg [rows] names each row's record, records are contiguous in a
// micro-batch, and pos [rows] is the row's position inside its record. window = 0 means
// global; otherwise row i sees row j only when pos[i] - pos[j] < window.
//
// One warp per (query row, head): each lane keeps head_dim / 32 of q, the output accumulator
// and, in the backward, of dO and dQ in registers (head_dim <= 256 and a multiple of 32). K and
// V rows are read straight from global memory (the L2 holds a micro-batch's K/V for these
// model sizes); tiling K/V through shared memory is the next step for speed, not correctness.
//
// Buffers: q, o, dq, do_ [rows, hq, hd]; k, v, dk, dv [rows, hkv, hd]; lse, delta [hq, rows].
#include "common.cuh"

#define MAX_PER_LANE 8

__device__ __forceinline__ bool visible(const int* seg, const int* pos, int i, int j, int window) {
    return seg[j] == seg[i] && (window <= 0 || pos[i] - pos[j] < window);
}

// Launch: grid = (ceil(rows / 4), hq), block = 128 (4 warps, one query row each).
extern "C" __global__ void attn_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                    const float* __restrict__ v, const int* __restrict__ seg,
                                    const int* __restrict__ pos, int rows, int hq, int hkv,
                                    int hd, int window, float scale, float* __restrict__ o,
                                    float* __restrict__ lse) {
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int h = blockIdx.y, g = h / (hq / hkv), per = hd >> 5;
    if (i >= rows) return;
    float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
    const float* qi = q + ((long long)i * hq + h) * hd;
    for (int t = 0; t < per; ++t) {
        qr[t] = qi[lane + 32 * t] * scale;
        acc[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = i; j >= 0 && seg[j] == seg[i]; --j) {
        if (!visible(seg, pos, i, j, window)) break;
        const float* kj = k + ((long long)j * hkv + g) * hd;
        const float* vj = v + ((long long)j * hkv + g) * hd;
        float s = 0.0f;
        for (int t = 0; t < per; ++t) s += qr[t] * kj[lane + 32 * t];
        s = warp_sum(s);
        const float m_new = fmaxf(m, s);
        const float corr = __expf(m - m_new), p = __expf(s - m_new);
        l = l * corr + p;
        for (int t = 0; t < per; ++t) acc[t] = acc[t] * corr + p * vj[lane + 32 * t];
        m = m_new;
    }
    float* oi = o + ((long long)i * hq + h) * hd;
    for (int t = 0; t < per; ++t) oi[lane + 32 * t] = acc[t] / l;
    if (lane == 0) lse[(long long)h * rows + i] = m + logf(l);
}

// dQ and delta = rowsum(dO * O). Launch as attn_fwd.
extern "C" __global__ void attn_bwd_dq(const float* __restrict__ q, const float* __restrict__ k,
                                       const float* __restrict__ v, const float* __restrict__ o,
                                       const float* __restrict__ do_,
                                       const float* __restrict__ lse,
                                       const int* __restrict__ seg, const int* __restrict__ pos,
                                       int rows, int hq, int hkv, int hd, int window,
                                       float scale, float* __restrict__ dq,
                                       float* __restrict__ delta) {
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int h = blockIdx.y, g = h / (hq / hkv), per = hd >> 5;
    if (i >= rows) return;
    const long long qo = ((long long)i * hq + h) * hd;
    float qr[MAX_PER_LANE], dor[MAX_PER_LANE], dqr[MAX_PER_LANE];
    float dsum = 0.0f;
    for (int t = 0; t < per; ++t) {
        qr[t] = q[qo + lane + 32 * t] * scale;
        dor[t] = do_[qo + lane + 32 * t];
        dqr[t] = 0.0f;
        dsum += dor[t] * o[qo + lane + 32 * t];
    }
    const float D = warp_sum(dsum);
    const float L = lse[(long long)h * rows + i];
    for (int j = i; j >= 0 && seg[j] == seg[i]; --j) {
        if (!visible(seg, pos, i, j, window)) break;
        const float* kj = k + ((long long)j * hkv + g) * hd;
        const float* vj = v + ((long long)j * hkv + g) * hd;
        float s = 0.0f, dp = 0.0f;
        for (int t = 0; t < per; ++t) {
            s += qr[t] * kj[lane + 32 * t];
            dp += dor[t] * vj[lane + 32 * t];
        }
        s = warp_sum(s);
        dp = warp_sum(dp);
        const float ds = __expf(s - L) * (dp - D);
        for (int t = 0; t < per; ++t) dqr[t] += ds * scale * kj[lane + 32 * t];
    }
    for (int t = 0; t < per; ++t) dq[qo + lane + 32 * t] = dqr[t];
    if (lane == 0) delta[(long long)h * rows + i] = D;
}

// dK and dV: one warp per (key row j, kv head g), summing over the query heads of the group and
// the rows i >= j that see j. Launch: grid = (ceil(rows / 4), hkv), block = 128; after
// attn_bwd_dq (it needs delta).
extern "C" __global__ void attn_bwd_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v,
                                         const float* __restrict__ do_,
                                         const float* __restrict__ lse,
                                         const float* __restrict__ delta,
                                         const int* __restrict__ seg,
                                         const int* __restrict__ pos, int rows, int hq, int hkv,
                                         int hd, int window, float scale,
                                         float* __restrict__ dk, float* __restrict__ dv) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int g = blockIdx.y, group = hq / hkv, per = hd >> 5;
    if (j >= rows) return;
    const long long ko = ((long long)j * hkv + g) * hd;
    float kr[MAX_PER_LANE], vr[MAX_PER_LANE], dkr[MAX_PER_LANE], dvr[MAX_PER_LANE];
    for (int t = 0; t < per; ++t) {
        kr[t] = k[ko + lane + 32 * t];
        vr[t] = v[ko + lane + 32 * t];
        dkr[t] = 0.0f;
        dvr[t] = 0.0f;
    }
    for (int i = j; i < rows && seg[i] == seg[j]; ++i) {
        if (!visible(seg, pos, i, j, window)) break;
        for (int h = g * group; h < (g + 1) * group; ++h) {
            const long long qo = ((long long)i * hq + h) * hd;
            float s = 0.0f, dp = 0.0f;
            for (int t = 0; t < per; ++t) {
                s += q[qo + lane + 32 * t] * kr[t];
                dp += do_[qo + lane + 32 * t] * vr[t];
            }
            s = warp_sum(s) * scale;
            dp = warp_sum(dp);
            const float p = __expf(s - lse[(long long)h * rows + i]);
            const float ds = p * (dp - delta[(long long)h * rows + i]);
            for (int t = 0; t < per; ++t) {
                dvr[t] += p * do_[qo + lane + 32 * t];
                dkr[t] += ds * scale * q[qo + lane + 32 * t];
            }
        }
    }
    for (int t = 0; t < per; ++t) {
        dk[ko + lane + 32 * t] = dkr[t];
        dv[ko + lane + 32 * t] = dvr[t];
    }
}
