// Row-wise norms, one thread block per row (blockDim a multiple of 32, at most 1024): RMSNorm,
// the per-head gated RMSNorm (swish gate) and the per-head L2 norm. Weight gradients go through
// per-block partial sums (`partial` [gridDim.x, d]) that reduce_partials adds in a fixed order.

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps)
extern "C" __global__ void rmsnorm_fwd(const bf16* x, const bf16* w, bf16* y, float* rstd, int rows, int d,
                                       float eps) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16* xr = x + (i64)r * d;
    bf16* yr = y + (i64)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = ldf(xr, c);
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = tobf(ldf(xr, c) * rs * ldf(w, c));
}

// dx = rstd * (dy*w - x*rstd*mean(dy*w*x*rstd)); partial[block, :] = sum over the block's rows of
// dy*x*rstd. Block b handles the contiguous rows [b*per, (b+1)*per). Dynamic shared memory: d floats.
extern "C" __global__ void rmsnorm_bwd(const bf16* x, const bf16* w, const float* rstd, const bf16* dy,
                                       bf16* dx, float* partial, int rows, int d) {
    extern __shared__ float acc[];
    __shared__ float sh[33];
    for (int c = threadIdx.x; c < d; c += blockDim.x) acc[c] = 0.0f;
    const int per = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = blockIdx.x * per;
    const int r1 = min(rows, r0 + per);
    for (int r = r0; r < r1; ++r) {
        const bf16* xr = x + (i64)r * d;
        const bf16* dyr = dy + (i64)r * d;
        bf16* dxr = dx + (i64)r * d;
        const float rs = rstd[r];
        float dot = 0.0f;
        for (int c = threadIdx.x; c < d; c += blockDim.x) dot += ldf(dyr, c) * ldf(w, c) * ldf(xr, c) * rs;
        const float mean = block_sum(dot, sh) / (float)d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            const float xv = ldf(xr, c), g = ldf(dyr, c);
            dxr[c] = tobf(rs * (g * ldf(w, c) - xv * rs * mean));
            acc[c] += g * xv * rs;  // each thread owns the columns it touches: no race
        }
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) partial[(i64)blockIdx.x * d + c] = acc[c];
}

// y = (o * rstd * w) * silu(gate), rows of width d (= V, the weight shared by all heads).
extern "C" __global__ void gated_rmsnorm_fwd(const bf16* o, const bf16* gate, const bf16* w, bf16* y,
                                             float* rstd, int rows, int d, float eps) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16* orow = o + (i64)r * d;
    const bf16* grow = gate + (i64)r * d;
    bf16* yr = y + (i64)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = ldf(orow, c);
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        yr[c] = tobf(ldf(orow, c) * rs * ldf(w, c) * siluf_(ldf(grow, c)));
}

// With dn = dy*silu(gate): d_o = rstd*(dn*w - o*rstd*mean(dn*w*o*rstd)),
// dgate = dy*(o*rstd*w)*silu'(gate), partial[block, :] = sum of dn*o*rstd.
extern "C" __global__ void gated_rmsnorm_bwd(const bf16* o, const bf16* gate, const bf16* w,
                                             const float* rstd, const bf16* dy, bf16* d_o, bf16* dgate,
                                             float* partial, int rows, int d) {
    extern __shared__ float acc[];
    __shared__ float sh[33];
    for (int c = threadIdx.x; c < d; c += blockDim.x) acc[c] = 0.0f;
    const int per = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = blockIdx.x * per;
    const int r1 = min(rows, r0 + per);
    for (int r = r0; r < r1; ++r) {
        const i64 base = (i64)r * d;
        const float rs = rstd[r];
        float dot = 0.0f;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            const float dn = ldf(dy, base + c) * siluf_(ldf(gate, base + c));
            dot += dn * ldf(w, c) * ldf(o, base + c) * rs;
        }
        const float mean = block_sum(dot, sh) / (float)d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            const float ov = ldf(o, base + c), gv = ldf(gate, base + c), g = ldf(dy, base + c);
            const float wv = ldf(w, c);
            const float dn = g * siluf_(gv);
            d_o[base + c] = tobf(rs * (dn * wv - ov * rs * mean));
            dgate[base + c] = tobf(g * (ov * rs * wv) * silu_gradf_(gv));
            acc[c] += dn * ov * rs;
        }
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) partial[(i64)blockIdx.x * d + c] = acc[c];
}

// y = x * r, r = 1 / sqrt(sum(x^2) + 1e-6), per row of width d (a head).
extern "C" __global__ void l2norm_fwd(const bf16* x, bf16* y, float* rinv, int rows, int d) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16* xr = x + (i64)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = ldf(xr, c);
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rr = 1.0f / sqrtf(ss + 1e-6f);
    if (threadIdx.x == 0) rinv[r] = rr;
    for (int c = threadIdx.x; c < d; c += blockDim.x) y[(i64)r * d + c] = tobf(ldf(xr, c) * rr);
}

// dx = r * (dy - y * (y . dy))
extern "C" __global__ void l2norm_bwd(const bf16* y, const float* rinv, const bf16* dy, bf16* dx, int rows,
                                      int d) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const i64 base = (i64)r * d;
    float dot = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) dot += ldf(y, base + c) * ldf(dy, base + c);
    dot = block_sum(dot, sh);
    const float rr = rinv[r];
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dx[base + c] = tobf(rr * (ldf(dy, base + c) - ldf(y, base + c) * dot));
}
