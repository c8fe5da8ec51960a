// Row-wise norms: RMSNorm, the per-head gated RMSNorm (swish gate) and the per-head L2 norm.
//
// Fast path, for rows of width d = 8·L·N (L lanes per row in {8, 16, 32}, N 16-byte chunks per
// lane) with 16-byte aligned bf16 tensors: a group of L lanes owns a row and keeps it in
// registers between the statistic and the output pass, the statistic is a shuffle sum within the
// group (no barrier per row), and a warp holds 32/L rows at once when rows are narrow. Each (L, N)
// is its own kernel, `<name>_<L>_<N>`, so that narrow rows do not pay the register budget of wide
// ones; ops.rs picks the geometry and falls back to the general kernels (any width, one block per
// row or per part) otherwise.
//
// Weight gradients: the rows are cut into gridDim.x contiguous parts (a count fixed by the host,
// never by the device); every column of a part is summed by one lane over its rows in a fixed
// order, the groups of a warp by a fixed butterfly, the warps in warp order; reduce_partials then
// adds the parts in order. No atomics, so the result is bit-identical between runs.

// Column of element 0 of chunk k for lane `sub` of a row group.
#define NORM_COL(k, sub, L) (((k) * (L) + (sub)) * 8)

// The row of this lane's group in a one-row-per-group launch (forward kernels, L2 norm).
template <int L>
__device__ __forceinline__ int fast_row() {
    return (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * (32 / L) + (threadIdx.x & 31) / L;
}

// silu(x) rounded to bf16 and back: the value silu_fwd stores and l2norm_fwd then reads, so that
// the fused SiLU + L2 norm below computes bit for bit what the two kernels compute.
__device__ __forceinline__ float silu_bf(float x) { return __bfloat162float(tobf(siluf_(x))); }

// Loads row r (D = 8·L·N values, this thread's N chunks of 8) into v, zeros when !ok, with SILU
// replaced by silu_bf of itself, and returns the row's Σv² summed over the L threads of the row
// (the same order for every norm).
template <int L, int N, bool SILU = false>
__device__ __forceinline__ float load_row_sumsq(const bf16* x, int r, int sub, bool ok, float (&v)[N][8]) {
    constexpr int D = 8 * L * N;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        if (ok) ld8(x + (i64)r * D + NORM_COL(k, sub, L), v[k]);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            if (!ok) v[k][i] = 0.0f;
            if (SILU) v[k][i] = silu_bf(v[k][i]);
            ss += v[k][i] * v[k][i];
        }
    }
    return group_sum<L>(ss);
}

template <int L, int N>
__device__ __forceinline__ void rmsnorm_fwd_fast(const bf16* x, const bf16* w, bf16* y, float* rstd, int rows,
                                                 float eps) {
    constexpr int D = 8 * L * N;
    const int sub = threadIdx.x % L, r = fast_row<L>();
    const bool ok = r < rows;
    float v[N][8];
    const float ss = load_row_sumsq<L, N>(x, r, sub, ok, v);
    if (!ok) return;
    const float rs = 1.0f / sqrtf(ss / (float)D + eps);
    if (sub == 0) rstd[r] = rs;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        float wv[8], o[8];
        ld8(w + NORM_COL(k, sub, L), wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = v[k][i] * rs * wv[i];
        st8(y + (i64)r * D + NORM_COL(k, sub, L), o);
    }
}

template <int L, int N>
__device__ __forceinline__ void gated_rmsnorm_fwd_fast(const bf16* o, const bf16* gate, const bf16* w, bf16* y,
                                                       float* rstd, int rows, float eps) {
    constexpr int D = 8 * L * N;
    const int sub = threadIdx.x % L, r = fast_row<L>();
    const bool ok = r < rows;
    float v[N][8];
    const float ss = load_row_sumsq<L, N>(o, r, sub, ok, v);
    if (!ok) return;
    const float rs = 1.0f / sqrtf(ss / (float)D + eps);
    if (sub == 0) rstd[r] = rs;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        float wv[8], gv[8], out[8];
        ld8(w + NORM_COL(k, sub, L), wv);
        ld8(gate + (i64)r * D + NORM_COL(k, sub, L), gv);
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = v[k][i] * rs * wv[i] * siluf_(gv[i]);
        st8(y + (i64)r * D + NORM_COL(k, sub, L), out);
    }
}

// SILU: y = l2norm(bf16(silu(x))) in one pass (the model's q and k), else y = l2norm(x).
template <int L, int N, bool SILU = false>
__device__ __forceinline__ void l2norm_fwd_fast(const bf16* x, bf16* y, float* rinv, int rows) {
    constexpr int D = 8 * L * N;
    const int sub = threadIdx.x % L, r = fast_row<L>();
    const bool ok = r < rows;
    float v[N][8];
    const float ss = load_row_sumsq<L, N, SILU>(x, r, sub, ok, v);
    if (!ok) return;
    const float rr = 1.0f / sqrtf(ss + 1e-6f);
    if (sub == 0) rinv[r] = rr;
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[k][i] *= rr;
        st8(y + (i64)r * D + NORM_COL(k, sub, L), v[k]);
    }
}

template <int L, int N>
__device__ __forceinline__ void l2norm_bwd_fast(const bf16* y, const float* rinv, const bf16* dy, bf16* dx,
                                                int rows) {
    constexpr int D = 8 * L * N;
    const int sub = threadIdx.x % L, r = fast_row<L>();
    const bool ok = r < rows;
    float yv[N][8], gv[N][8];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        if (ok) {
            ld8(y + (i64)r * D + NORM_COL(k, sub, L), yv[k]);
            ld8(dy + (i64)r * D + NORM_COL(k, sub, L), gv[k]);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            if (!ok) yv[k][i] = gv[k][i] = 0.0f;
            dot += yv[k][i] * gv[k][i];
        }
    }
    dot = group_sum<L>(dot);
    if (!ok) return;
    const float rr = rinv[r];
#pragma unroll
    for (int k = 0; k < N; ++k) {
        float out[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = rr * (gv[k][i] - yv[k][i] * dot);
        st8(dx + (i64)r * D + NORM_COL(k, sub, L), out);
    }
}

// The end of a fast backward: acc (this lane's column sums over its rows) added over the groups
// of the warp, then over the warps in order, into partial[blockIdx.x, :].
template <int L, int N>
__device__ __forceinline__ void store_part_sums(float (&acc)[N][8], float* partial) {
    constexpr int D = 8 * L * N;
    __shared__ float sm[D];
    const int sub = threadIdx.x % L, grp = (threadIdx.x & 31) / L, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = L; o < 32; o <<= 1) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[k][i] += __shfl_xor_sync(FULL_MASK, acc[k][i], o);
        }
    }
    const int nw = blockDim.x >> 5;
    for (int s = 0; s < nw; ++s) {
        if (warp == s && grp == 0) {
#pragma unroll
            for (int k = 0; k < N; ++k) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int c = NORM_COL(k, sub, L) + i;
                    sm[c] = s == 0 ? acc[k][i] : sm[c] + acc[k][i];
                }
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < D; c += blockDim.x) partial[(i64)blockIdx.x * D + c] = sm[c];
}

// Rows of part blockIdx.x: [r0, r1). Warp w's group g takes rows r0 + (w + j·nw)·G + g, j = 0, 1, ...
// The loop bound depends on the warp only, so every lane reaches the shuffles.
#define PART_ROWS(L)                                                        \
    constexpr int G = 32 / (L);                                             \
    const int sub = threadIdx.x % (L), grp = (threadIdx.x & 31) / (L);      \
    const int nw = blockDim.x >> 5, warp = threadIdx.x >> 5;                \
    const int per = (rows + gridDim.x - 1) / gridDim.x;                     \
    const int r0 = min(rows, (int)blockIdx.x * per), r1 = min(rows, r0 + per)

template <int L, int N>
__device__ __forceinline__ void rmsnorm_bwd_fast(const bf16* x, const bf16* w, const float* rstd, const bf16* dy,
                                                 bf16* dx, float* partial, int rows) {
    constexpr int D = 8 * L * N;
    PART_ROWS(L);
    float acc[N][8], wv[N][8];
#pragma unroll
    for (int k = 0; k < N; ++k) {
        ld8(w + NORM_COL(k, sub, L), wv[k]);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[k][i] = 0.0f;
    }
    for (int base = r0 + warp * G; base < r1; base += nw * G) {
        const int r = base + grp;
        const bool ok = r < r1;
        const float rs = ok ? rstd[r] : 0.0f;
        float xv[N][8], gv[N][8];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            if (ok) {
                ld8(x + (i64)r * D + NORM_COL(k, sub, L), xv[k]);
                ld8(dy + (i64)r * D + NORM_COL(k, sub, L), gv[k]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                if (!ok) xv[k][i] = gv[k][i] = 0.0f;
                dot += gv[k][i] * wv[k][i] * xv[k][i] * rs;
            }
        }
        const float mean = group_sum<L>(dot) / (float)D;
        if (!ok) continue;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            float out[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                out[i] = rs * (gv[k][i] * wv[k][i] - xv[k][i] * rs * mean);
                acc[k][i] += gv[k][i] * xv[k][i] * rs;
            }
            st8(dx + (i64)r * D + NORM_COL(k, sub, L), out);
        }
    }
    store_part_sums<L, N>(acc, partial);
}

template <int L, int N>
__device__ __forceinline__ void gated_rmsnorm_bwd_fast(const bf16* o, const bf16* gate, const bf16* w,
                                                       const float* rstd, const bf16* dy, bf16* d_o, bf16* dgate,
                                                       float* partial, int rows) {
    constexpr int D = 8 * L * N;
    PART_ROWS(L);
    // w is re-read (from L1) where it is used: registers go to the three rows in flight.
    float acc[N][8];
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[k][i] = 0.0f;
    }
    for (int base = r0 + warp * G; base < r1; base += nw * G) {
        const int r = base + grp;
        const bool ok = r < r1;
        const float rs = ok ? rstd[r] : 0.0f;
        float ov[N][8], gt[N][8], gv[N][8];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            float wv[8];
            ld8(w + NORM_COL(k, sub, L), wv);
            if (ok) {
                ld8(o + (i64)r * D + NORM_COL(k, sub, L), ov[k]);
                ld8(gate + (i64)r * D + NORM_COL(k, sub, L), gt[k]);
                ld8(dy + (i64)r * D + NORM_COL(k, sub, L), gv[k]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                if (!ok) ov[k][i] = gt[k][i] = gv[k][i] = 0.0f;
                const float dn = gv[k][i] * siluf_(gt[k][i]);
                dot += dn * wv[i] * ov[k][i] * rs;
            }
        }
        const float mean = group_sum<L>(dot) / (float)D;
        if (!ok) continue;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            float od[8], gd[8], wv[8];
            ld8(w + NORM_COL(k, sub, L), wv);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float sl, sg;
                silu_and_grad(gt[k][i], sl, sg);
                const float dn = gv[k][i] * sl;
                od[i] = rs * (dn * wv[i] - ov[k][i] * rs * mean);
                gd[i] = gv[k][i] * (ov[k][i] * rs * wv[i]) * sg;
                acc[k][i] += dn * ov[k][i] * rs;
            }
            st8(d_o + (i64)r * D + NORM_COL(k, sub, L), od);
            st8(dgate + (i64)r * D + NORM_COL(k, sub, L), gd);
        }
    }
    store_part_sums<L, N>(acc, partial);
}

// Forward kernels: one row per group of L lanes, 256 threads per block.
#define NORM_FWD_KERNELS(L, N)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        rmsnorm_fwd_##L##_##N(const bf16* x, const bf16* w, bf16* y, float* rstd, int rows, float eps) {        \
        rmsnorm_fwd_fast<L, N>(x, w, y, rstd, rows, eps);                                                       \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) gated_rmsnorm_fwd_##L##_##N(                              \
        const bf16* o, const bf16* gate, const bf16* w, bf16* y, float* rstd, int rows, float eps) {            \
        gated_rmsnorm_fwd_fast<L, N>(o, gate, w, y, rstd, rows, eps);                                           \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) l2norm_fwd_##L##_##N(const bf16* x, bf16* y, float* rinv, \
                                                                           int rows) {                          \
        l2norm_fwd_fast<L, N>(x, y, rinv, rows);                                                                \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) l2norm_silu_fwd_##L##_##N(const bf16* x, bf16* y,         \
                                                                                float* rinv, int rows) {        \
        l2norm_fwd_fast<L, N, true>(x, y, rinv, rows);                                                          \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        l2norm_bwd_##L##_##N(const bf16* y, const float* rinv, const bf16* dy, bf16* dx, int rows) {            \
        l2norm_bwd_fast<L, N>(y, rinv, dy, dx, rows);                                                           \
    }

// Backward kernels with weight gradients: one part of the rows per block of 256 threads, at
// least MINB blocks per SM (a register cap: more warps in flight hide more latency).
#define RMSNORM_BWD_KERNEL(L, N, MINB)                                                                   \
    extern "C" __global__ void __launch_bounds__(256, MINB)                                              \
        rmsnorm_bwd_##L##_##N(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, bf16* dx, \
                              float* partial, int rows) {                                                \
        rmsnorm_bwd_fast<L, N>(x, w, rstd, dy, dx, partial, rows);                                       \
    }
#define GATED_RMSNORM_BWD_KERNEL(L, N, MINB)                                                            \
    extern "C" __global__ void __launch_bounds__(256, MINB)                                             \
        gated_rmsnorm_bwd_##L##_##N(const bf16* o, const bf16* gate, const bf16* w, const float* rstd,  \
                                    const bf16* dy, bf16* d_o, bf16* dgate, float* partial, int rows) { \
        gated_rmsnorm_bwd_fast<L, N>(o, gate, w, rstd, dy, d_o, dgate, partial, rows);                  \
    }

// The geometries ops.rs may pick (norm_geometry): d = 64, 128, then 256·N up to its limits.
NORM_FWD_KERNELS(8, 1)
NORM_FWD_KERNELS(16, 1)
NORM_FWD_KERNELS(32, 1)
NORM_FWD_KERNELS(32, 2)
NORM_FWD_KERNELS(32, 3)
NORM_FWD_KERNELS(32, 4)
NORM_FWD_KERNELS(32, 5)
NORM_FWD_KERNELS(32, 6)
NORM_FWD_KERNELS(32, 7)
NORM_FWD_KERNELS(32, 8)
RMSNORM_BWD_KERNEL(8, 1, 3)
RMSNORM_BWD_KERNEL(16, 1, 3)
RMSNORM_BWD_KERNEL(32, 1, 3)
RMSNORM_BWD_KERNEL(32, 2, 2)
RMSNORM_BWD_KERNEL(32, 3, 1)
RMSNORM_BWD_KERNEL(32, 4, 1)
GATED_RMSNORM_BWD_KERNEL(8, 1, 3)
GATED_RMSNORM_BWD_KERNEL(16, 1, 3)
GATED_RMSNORM_BWD_KERNEL(32, 1, 3)
GATED_RMSNORM_BWD_KERNEL(32, 2, 2)

// General path (any width): one thread block per row (forward, L2 norm) or per part of the rows
// (backward), blockDim a multiple of 32, at most 1024.

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

// y = l2norm(bf16(silu(x))): silu_fwd then l2norm_fwd in one kernel, bit for bit (the SiLU output
// is rounded to bf16 as silu_fwd stores it; the sums run in l2norm_fwd's order).
extern "C" __global__ void l2norm_silu_fwd(const bf16* x, bf16* y, float* rinv, int rows, int d) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const bf16* xr = x + (i64)r * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = silu_bf(ldf(xr, c));
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rr = 1.0f / sqrtf(ss + 1e-6f);
    if (threadIdx.x == 0) rinv[r] = rr;
    for (int c = threadIdx.x; c < d; c += blockDim.x) y[(i64)r * d + c] = tobf(silu_bf(ldf(xr, c)) * rr);
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
