// Small helpers of the GPU language model (cuda::model): the fp32 residual stream (add, RMSNorm
// forward/backward), the fused L2-norm/SiLU backward, the b_proj bias and its gradient.
// Grid-stride loops; the bias-gradient column sum runs one thread per column over the rows in
// order (deterministic).

#define MX_LOOP(i, n) \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// y[i] += bias[i % h]
extern "C" __global__ void mx_add_bias_bf16(bf16* y, const bf16* bias, i64 n, int h) {
    MX_LOOP(i, n) { y[i] = tobf(ldf(y, i) + ldf(bias, i % h)); }
}

// out[j] += sum_i x[i, j] over rows in order
extern "C" __global__ void mx_colsum_acc(const bf16* x, float* out, int rows, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = 0.0f;
    for (int i = 0; i < rows; ++i) s += ldf(x, (i64)i * cols + j);
    out[j] += s;
}

// The backward of y = l2norm(silu(c)) per row of width d, from the fp32 gradient dy (the delta
// rule's), with s = silu(c), r = 1/sqrt(|s|² + 1e-6) and y = s·r recomputed in fp32 from c, so
// that neither dy nor s nor y is rounded to bf16 before the projection dy − y(y·dy), which
// cancels most of dy when dy is nearly parallel to y. ds = r(dy − y(y·dy)), dc = ds·silu'(c).
// One block per row (as l2norm_fwd).
extern "C" __global__ void mx_l2norm_silu_bwd(const bf16* c, const float* dy, bf16* dc, int rows, int d) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const i64 base = (i64)r * d;
    float ss = 0.0f, sd = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float s = siluf_(ldf(c, base + j));
        ss += s * s;
        sd += s * dy[base + j];
    }
    ss = block_sum(ss, sh);
    sd = block_sum(sd, sh);
    const float rr = 1.0f / sqrtf(ss + 1e-6f);
    const float dot = rr * sd;  // y . dy
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float x = ldf(c, base + j);
        const float y = siluf_(x) * rr;
        dc[base + j] = tobf(rr * (dy[base + j] - y * dot) * silu_gradf_(x));
    }
}

// dx = dy * silu'(x), dy fp32 (no bf16 rounding of dy before the product).
extern "C" __global__ void mx_silu_bwd_f32dy(const bf16* x, const float* dy, bf16* dx, i64 n) {
    MX_LOOP(i, n) { dx[i] = tobf(dy[i] * silu_gradf_(ldf(x, i))); }
}

// y = a + b with the fp32 residual stream a, y (b a bf16 block output).
extern "C" __global__ void mx_add_f32_bf16(const float* a, const bf16* b, float* y, i64 n) {
    MX_LOOP(i, n) { y[i] = a[i] + ldf(b, i); }
}

// RMSNorm of the fp32 residual stream (ops::rmsnorm_fwd with fp32 x): y = x·rstd·w (bf16),
// rstd = 1/sqrt(mean(x²) + eps). One block per row.
extern "C" __global__ void mx_rmsnorm_fwd_f32x(const float* x, const bf16* w, bf16* y, float* rstd, int rows,
                                               int d, float eps) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * d;
    bf16* yr = y + (i64)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, sh);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = tobf(xr[c] * rs * ldf(w, c));
}

// RMSNorm backward on the fp32 residual stream with an fp32 gradient (ops::rmsnorm_bwd with x,
// dy and dx in fp32): dx = rstd·(dy·w − x·rstd·mean(dy·w·x·rstd)), written (acc = 0) or added
// (acc = 1) into the fp32 residual gradient; partial[block, :] = Σ over the block's rows of
// dy·x·rstd, for reduce_partials. Block b handles the contiguous rows [b·per, (b+1)·per).
// Dynamic shared memory: d floats.
extern "C" __global__ void mx_rmsnorm_bwd_f32(const float* x, const bf16* w, const float* rstd, const float* dy,
                                              float* dx, float* partial, int rows, int d, int acc_dx) {
    extern __shared__ float acc[];
    __shared__ float sh[33];
    for (int c = threadIdx.x; c < d; c += blockDim.x) acc[c] = 0.0f;
    const int per = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = blockIdx.x * per;
    const int r1 = min(rows, r0 + per);
    for (int r = r0; r < r1; ++r) {
        const float* xr = x + (i64)r * d;
        const float* dyr = dy + (i64)r * d;
        float* dxr = dx + (i64)r * d;
        const float rs = rstd[r];
        float dot = 0.0f;
        for (int c = threadIdx.x; c < d; c += blockDim.x) dot += dyr[c] * ldf(w, c) * xr[c] * rs;
        const float mean = block_sum(dot, sh) / (float)d;
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            const float xv = xr[c], g = dyr[c];
            const float v = rs * (g * ldf(w, c) - xv * rs * mean);
            dxr[c] = acc_dx ? dxr[c] + v : v;
            acc[c] += g * xv * rs;  // each thread owns the columns it touches: no race
        }
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) partial[(i64)blockIdx.x * d + c] = acc[c];
}
