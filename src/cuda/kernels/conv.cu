// Short causal depthwise convolution (src/ops/conv.rs): x, y [T, D] token-major, w [D, W] with
// W <= 4, tap j = W-1 on the current token; `cu` [nseq+1] (int32) marks the sequences, and no tap
// reaches across a sequence start.

// The index s of the sequence holding token t: cu[s] <= t < cu[s+1] (empty sequences skipped).
__device__ __forceinline__ int seq_of(const int* cu, int nseq, int t) {
    int lo = 0, hi = nseq;  // cu[lo] <= t < cu[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (cu[mid] <= t) lo = mid; else hi = mid;
    }
    return lo;
}

// Grid (T, ceil(D / blockDim)).
extern "C" __global__ void conv_fwd(const bf16* x, const bf16* w, bf16* y, const int* cu, int nseq, int T,
                                    int D, int W) {
    const int t = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= T || c >= D) return;
    const int start = max(cu[seq_of(cu, nseq, t)], 0);
    float acc = 0.0f;
    for (int j = 0; j < W; ++j) {
        const int back = W - 1 - j;
        if (t - back < start) continue;
        acc += ldf(w, (i64)c * W + j) * ldf(x, (i64)(t - back) * D + c);
    }
    y[(i64)t * D + c] = tobf(acc);
}

// Grid (ceil(D / blockDim), P): block (., p) handles the contiguous tokens [p*per, (p+1)*per),
// writes their dx, and partial[p, c*W + j] = its share of dw[c, j].
extern "C" __global__ void conv_bwd(const bf16* x, const bf16* w, const bf16* dy, bf16* dx, float* partial,
                                    const int* cu, int nseq, int T, int D, int W) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    const int p = blockIdx.y;
    const int per = (T + gridDim.y - 1) / gridDim.y;
    const int t0 = p * per;
    const int t1 = min(T, t0 + per);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float wc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < W; ++j) wc[j] = ldf(w, (i64)c * W + j);
    if (t0 < t1) {
        int s = seq_of(cu, nseq, t0);
        for (int t = t0; t < t1; ++t) {
            while (s < nseq - 1 && t >= cu[s + 1]) ++s;
            // Clamped so that a malformed cu_seqlens cannot make a tap read out of bounds.
            const int start = max(cu[s], 0), end = min(cu[s + 1], T);
            float dxv = 0.0f;
            const float dyt = ldf(dy, (i64)t * D + c);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (j >= W) break;
                const int back = W - 1 - j;
                if (t + back < end) dxv += wc[j] * ldf(dy, (i64)(t + back) * D + c);
                if (t - back >= start) acc[j] += dyt * ldf(x, (i64)(t - back) * D + c);
            }
            dx[(i64)t * D + c] = tobf(dxv);
        }
    }
    for (int j = 0; j < W; ++j) partial[((i64)p * D + c) * W + j] = acc[j];
}

// One decode step for N sequences: cache [N, D, W] holds the last W inputs (oldest first); shift
// left, append x [N, D], y = sum_j cache[j] * w[c, j].
extern "C" __global__ void conv_step(const bf16* x, const bf16* w, bf16* cache, bf16* y, int N, int D, int W) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)N * D) return;
    const int c = (int)(i % D);
    bf16* cs = cache + i * W;
    for (int j = 0; j + 1 < W; ++j) cs[j] = cs[j + 1];
    cs[W - 1] = x[i];
    float acc = 0.0f;
    for (int j = 0; j < W; ++j) acc += ldf(cs, j) * ldf(w, (i64)c * W + j);
    y[i] = tobf(acc);
}
