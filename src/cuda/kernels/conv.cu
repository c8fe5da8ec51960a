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

// Fast paths (16-byte aligned tensors with D a multiple of 8 forward; 8-byte aligned with D a
// multiple of 4 backward): a thread owns adjacent channels (one vector per token) over a run of
// consecutive tokens, issues the loads of a whole run of tokens before using any (so that many
// are in flight per thread), and slides windows of inputs / output gradients through registers,
// so that each vector is loaded once per thread rather than once per tap. Adjacent threads own
// adjacent channels of the same token: coalesced. The arithmetic (taps in order j = 0..W-1, fp32)
// is that of the general kernels below.

// Tokens per thread in conv_fwd_v8.
#define CONV_TILE 8

template <int W>
__device__ __forceinline__ void conv_fwd_v8_impl(const bf16* x, const bf16* w, bf16* y, const int* cu, int nseq,
                                                 int T, int D) {
    const int groups = D >> 3;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int c = (int)(idx % groups) * 8;
    const i64 t0l = idx / groups * CONV_TILE;
    if (t0l >= T) return;
    const int t0 = (int)t0l;
    // raw[i] = x[t0 - (W-1) + i] (zero outside [0, T)), all loads issued up front.
    uint4 raw[CONV_TILE + W - 1];
#pragma unroll
    for (int i = 0; i < CONV_TILE + W - 1; ++i) {
        const int tt = t0 - (W - 1) + i;
        raw[i] = tt >= 0 && tt < T ? *reinterpret_cast<const uint4*>(x + (i64)tt * D + c) : make_uint4(0, 0, 0, 0);
    }
    float wv[8][W];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int j = 0; j < W; ++j) wv[i][j] = ldf(w, (i64)(c + i) * W + j);
    }
    int s = seq_of(cu, nseq, t0);
    int nxt = cu[s + 1];
#pragma unroll
    for (int k = 0; k < CONV_TILE; ++k) {
        const int t = t0 + k;
        if (t >= T) break;
        while (s < nseq - 1 && t >= nxt) nxt = cu[++s + 1];
        const int start = max(cu[s], 0);
        float acc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < W; ++j) {
            if (t - (W - 1 - j) < start) continue;
            float xv[8];
            unpack8(raw[k + j], xv);  // x[t - (W-1-j)]
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] += wv[i][j] * xv[i];
        }
        st8(y + (i64)t * D + c, acc);
    }
}

// Grid: ceil(D/8 · ceil(T / CONV_TILE) / blockDim) blocks.
extern "C" __global__ void __launch_bounds__(256) conv_fwd_v8(const bf16* x, const bf16* w, bf16* y,
                                                              const int* cu, int nseq, int T, int D, int W) {
    switch (W) {
        case 1: conv_fwd_v8_impl<1>(x, w, y, cu, nseq, T, D); break;
        case 2: conv_fwd_v8_impl<2>(x, w, y, cu, nseq, T, D); break;
        case 3: conv_fwd_v8_impl<3>(x, w, y, cu, nseq, T, D); break;
        default: conv_fwd_v8_impl<4>(x, w, y, cu, nseq, T, D); break;
    }
}

// Tokens whose loads conv_bwd_v4 issues together.
#define CONV_BWD_RUN 4

// Thread (channel group g of 4 channels, part p): tokens [p·per, (p+1)·per) with
// per = ceil(T / parts); writes their dx (rows ldx apart) and partial[p, c·W + j] = the part's
// share of dw[c, j], tokens in order. With y8 not null, dx goes there instead, as E5M2 codes of
// dx · s8 (the input gradient feeds an FP8 product), and the thread's max |dx| is returned.
template <int W>
__device__ __forceinline__ float conv_bwd_v4_impl(const bf16* x, const bf16* w, const bf16* dy, bf16* dx,
                                                  u8* y8, float s8, int ldx, float* partial, const int* cu,
                                                  int nseq, int T, int D, int parts) {
    const int groups = D >> 2;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    float m = 0.0f;
    const int c = (int)(idx % groups) * 4;
    const int p = (int)(idx / groups);
    const int per = (T + parts - 1) / parts;
    const int t0 = min(T, p * per), t1 = min(T, t0 + per);
    float wv[4][W], acc[4][W];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < W; ++j) {
            wv[i][j] = ldf(w, (i64)(c + i) * W + j);
            acc[i][j] = 0.0f;
        }
    }
    const uint2 zero = make_uint2(0, 0);
    if (t0 < t1) {
        // xw[j] = x[t - (W-1-j)], gw[b] = dy[t + b] as floats; entering token t, both shift by one
        // and take x[t], dy[t + W - 1].
        float xw[W][4], gw[W][4];
#pragma unroll
        for (int j = 1; j < W; ++j) {
            const int tt = t0 - W + j, tf = t0 + j - 1;
            const float4 a = unpack4(tt >= 0 ? *reinterpret_cast<const uint2*>(x + (i64)tt * D + c) : zero);
            const float4 g = unpack4(tf < T ? *reinterpret_cast<const uint2*>(dy + (i64)tf * D + c) : zero);
            xw[j][0] = a.x, xw[j][1] = a.y, xw[j][2] = a.z, xw[j][3] = a.w;
            gw[j][0] = g.x, gw[j][1] = g.y, gw[j][2] = g.z, gw[j][3] = g.w;
        }
        int s = seq_of(cu, nseq, t0);
        int nxt = cu[s + 1];
        for (int tr = t0; tr < t1; tr += CONV_BWD_RUN) {
            uint2 rx[CONV_BWD_RUN], rg[CONV_BWD_RUN];
#pragma unroll
            for (int k = 0; k < CONV_BWD_RUN; ++k) {
                const int t = tr + k, tf = t + W - 1;
                rx[k] = t < t1 ? *reinterpret_cast<const uint2*>(x + (i64)t * D + c) : zero;
                rg[k] = t < t1 && tf < T ? *reinterpret_cast<const uint2*>(dy + (i64)tf * D + c) : zero;
            }
#pragma unroll
            for (int k = 0; k < CONV_BWD_RUN; ++k) {
                const int t = tr + k;
                if (t >= t1) break;
                while (s < nseq - 1 && t >= nxt) nxt = cu[++s + 1];
                // Clamped so that a malformed cu_seqlens cannot make a tap use a token of another
                // sequence (the windows only ever hold in-bounds tokens).
                const int start = max(cu[s], 0), end = min(nxt, T);
#pragma unroll
                for (int j = 0; j + 1 < W; ++j) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        xw[j][i] = xw[j + 1][i];
                        gw[j][i] = gw[j + 1][i];
                    }
                }
                const float4 a = unpack4(rx[k]), g = unpack4(rg[k]);
                xw[W - 1][0] = a.x, xw[W - 1][1] = a.y, xw[W - 1][2] = a.z, xw[W - 1][3] = a.w;
                gw[W - 1][0] = g.x, gw[W - 1][1] = g.y, gw[W - 1][2] = g.z, gw[W - 1][3] = g.w;
                float dxv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int j = 0; j < W; ++j) {
                    const int back = W - 1 - j;
                    if (t + back < end) {
#pragma unroll
                        for (int i = 0; i < 4; ++i) dxv[i] += wv[i][j] * gw[back][i];
                    }
                    if (t - back >= start) {
#pragma unroll
                        for (int i = 0; i < 4; ++i) acc[i][j] += gw[0][i] * xw[j][i];
                    }
                }
                if (y8) {
                    m = fmaxf(m, fmaxf(fmaxf(fabsf(dxv[0]), fabsf(dxv[1])), fmaxf(fabsf(dxv[2]), fabsf(dxv[3]))));
                    *reinterpret_cast<unsigned*>(y8 + (i64)t * ldx + c) =
                        fp8x4<__NV_E5M2>(dxv[0] * s8, dxv[1] * s8, dxv[2] * s8, dxv[3] * s8);
                } else {
                    st4bf(dx + (i64)t * ldx + c, make_float4(dxv[0], dxv[1], dxv[2], dxv[3]));
                }
            }
        }
    }
    float* out = partial + ((i64)p * D + c) * W;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < W; ++j) out[i * W + j] = acc[i][j];
    }
    return m;
}

// Grid: ceil(D/4 · parts / blockDim) blocks. y8, scale8, amax8: null, or dx's FP8 codes instead of
// dx (see conv_bwd_v4_impl), their scale, and the amax counter they fold into.
extern "C" __global__ void __launch_bounds__(256) conv_bwd_v4(const bf16* x, const bf16* w, const bf16* dy,
                                                              bf16* dx, u8* y8, const float* scale8,
                                                              unsigned* amax8, int ldx, float* partial,
                                                              const int* cu, int nseq, int T, int D, int W,
                                                              int parts) {
    float m = 0.0f;
    // Threads past the last (group, part) stay for the block-wide amax fold.
    if ((i64)blockIdx.x * blockDim.x + threadIdx.x < (i64)(D >> 2) * parts) {
        const float s8 = y8 ? *scale8 : 1.0f;
        switch (W) {
            case 1: m = conv_bwd_v4_impl<1>(x, w, dy, dx, y8, s8, ldx, partial, cu, nseq, T, D, parts); break;
            case 2: m = conv_bwd_v4_impl<2>(x, w, dy, dx, y8, s8, ldx, partial, cu, nseq, T, D, parts); break;
            case 3: m = conv_bwd_v4_impl<3>(x, w, dy, dx, y8, s8, ldx, partial, cu, nseq, T, D, parts); break;
            default: m = conv_bwd_v4_impl<4>(x, w, dy, dx, y8, s8, ldx, partial, cu, nseq, T, D, parts); break;
        }
    }
    if (y8) fold_amax(m, amax8);
}

// General path (any D, any alignment).

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
// writes their dx (rows ldx apart), and partial[p, c*W + j] = its share of dw[c, j].
extern "C" __global__ void conv_bwd(const bf16* x, const bf16* w, const bf16* dy, bf16* dx, int ldx,
                                    float* partial, const int* cu, int nseq, int T, int D, int W) {
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
            dx[(i64)t * ldx + c] = tobf(dxv);
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
