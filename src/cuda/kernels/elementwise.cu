// Element-wise ops, the embedding, AdamW and the global gradient norm.
//
// The element-wise kernels move 8 elements per thread through 16-byte accesses when every
// pointer is 16-byte aligned (checked on the device: the result is the same for the whole grid)
// and fall back to one element per thread otherwise; the last n % 8 elements always go scalar.
// The arithmetic per element is the same on both paths.

extern "C" __global__ void cast_f32_bf16(const float* x, bf16* y, i64 n) {
    if (aligned_to(x, 16) && aligned_to(y, 16)) {
        GRID_STRIDE(v, n >> 3) {
            float f[8];
            ld8f(x + 8 * v, f);
            st8(y + 8 * v, f);
        }
        TAIL8(i, n) y[i] = tobf(x[i]);
    } else {
        GRID_STRIDE(i, n) y[i] = tobf(x[i]);
    }
}

extern "C" __global__ void cast_bf16_f32(const bf16* x, float* y, i64 n) {
    if (aligned_to(x, 16) && aligned_to(y, 16)) {
        GRID_STRIDE(v, n >> 3) {
            float f[8];
            ld8(x + 8 * v, f);
            st8f(y + 8 * v, f);
        }
        TAIL8(i, n) y[i] = ldf(x, i);
    } else {
        GRID_STRIDE(i, n) y[i] = ldf(x, i);
    }
}

extern "C" __global__ void silu_fwd(const bf16* x, bf16* y, i64 n) {
    if (aligned_to(x, 16) && aligned_to(y, 16)) {
        GRID_STRIDE(v, n >> 3) {
            float f[8];
            ld8(x + 8 * v, f);
#pragma unroll
            for (int k = 0; k < 8; ++k) f[k] = siluf_(f[k]);
            st8(y + 8 * v, f);
        }
        TAIL8(i, n) y[i] = tobf(siluf_(ldf(x, i)));
    } else {
        GRID_STRIDE(i, n) y[i] = tobf(siluf_(ldf(x, i)));
    }
}

// dx = dy * silu'(x)
extern "C" __global__ void silu_bwd(const bf16* x, const bf16* dy, bf16* dx, i64 n) {
    if (aligned_to(x, 16) && aligned_to(dy, 16) && aligned_to(dx, 16)) {
        GRID_STRIDE(v, n >> 3) {
            float f[8], g[8];
            ld8(x + 8 * v, f);
            ld8(dy + 8 * v, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) f[k] = g[k] * silu_gradf_(f[k]);
            st8(dx + 8 * v, f);
        }
        TAIL8(i, n) dx[i] = tobf(ldf(dy, i) * silu_gradf_(ldf(x, i)));
    } else {
        GRID_STRIDE(i, n) dx[i] = tobf(ldf(dy, i) * silu_gradf_(ldf(x, i)));
    }
}

// y [rows, w] = silu(gate) * up
extern "C" __global__ void swiglu_fwd(const bf16* gu, bf16* y, i64 rows, int w) {
    const i64 n = rows * w;
    if (w % 8 == 0 && aligned_to(gu, 16) && aligned_to(y, 16)) {
        GRID_STRIDE(v, n >> 3) {
            const bf16* p = gu + gu_at(8 * v, w);
            float g[8], u[8];
            ld8(p, g);
            ld8(p + w, u);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = siluf_(g[k]) * u[k];
            st8(y + 8 * v, g);
        }
    } else {
        GRID_STRIDE(i, n) {
            const bf16* p = gu + gu_at(i, w);
            y[i] = tobf(siluf_(ldf(p, 0)) * ldf(p, w));
        }
    }
}

// In place: gu (gate ‖ up) becomes d gate ‖ d up, with dy [rows, w]; d gate = dy · up ·
// silu'(gate), d up = dy · silu(gate). Each element is read and written by one thread.
extern "C" __global__ void swiglu_bwd(bf16* gu, const bf16* dy, i64 rows, int w) {
    const i64 n = rows * w;
    if (w % 8 == 0 && aligned_to(gu, 16) && aligned_to(dy, 16)) {
        GRID_STRIDE(v, n >> 3) {
            bf16* p = gu + gu_at(8 * v, w);
            float g[8], u[8], d[8], dg[8], du[8];
            ld8(p, g);
            ld8(p + w, u);
            ld8(dy + 8 * v, d);
#pragma unroll
            for (int k = 0; k < 8; ++k) swiglu_bwd1(g[k], u[k], d[k], dg[k], du[k]);
            st8(p, dg);
            st8(p + w, du);
        }
    } else {
        GRID_STRIDE(i, n) {
            bf16* p = gu + gu_at(i, w);
            float dg, du;
            swiglu_bwd1(ldf(p, 0), ldf(p, w), ldf(dy, i), dg, du);
            p[0] = tobf(dg);
            p[w] = tobf(du);
        }
    }
}

// out[i, :] = table[tokens[i], :]; a token outside the vocabulary yields a NaN row, so that the
// loss turns NaN and training stops with a message instead of reading out of bounds.
extern "C" __global__ void embedding_fwd(const bf16* table, const unsigned* tokens, bf16* out, i64 n_tok,
                                         int d, unsigned vocab) {
    const i64 total = n_tok * d;
    GRID_STRIDE(i, total) {
        const i64 row = i / d;
        const int c = (int)(i - row * d);
        const unsigned t = tokens[row];
        out[i] = t < vocab ? table[(i64)t * d + c] : tobf(GDN_NAN);
    }
}

// dtable[tokens[i], :] += dy[i, :], deterministically: every element of dtable is owned by one
// thread, which adds the tokens' rows in token order (the CPU's order). Block (x, y) owns columns
// [x*blockDim, (x+1)*blockDim) of the vocabulary rows v with v % EMB_PARTS == y, so that a thread
// walks all tokens (cheaply, from shared memory) but only does 1/EMB_PARTS of the additions.
#define EMB_PARTS 64
#define EMB_TILE 2048
extern "C" __global__ void embedding_bwd(const unsigned* tokens, const bf16* dy, float* dtable, int n_tok,
                                         int d, unsigned vocab) {
    __shared__ unsigned tile[EMB_TILE];
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned part = blockIdx.y;
    for (int i0 = 0; i0 < n_tok; i0 += EMB_TILE) {
        const int m = min(EMB_TILE, n_tok - i0);
        __syncthreads();
        for (int j = threadIdx.x; j < m; j += blockDim.x) tile[j] = tokens[i0 + j];
        __syncthreads();
        if (c < d) {
            for (int j = 0; j < m; ++j) {
                const unsigned t = tile[j];
                if (t < vocab && (t % EMB_PARTS) == part) {
                    dtable[(i64)t * d + c] += ldf(dy, (i64)(i0 + j) * d + c);
                }
            }
        }
    }
}

// AdamW over the flat fp32 master weights (torch.optim.AdamW; the same arithmetic as
// src/train/adamw.rs), writing the bf16 working copy. `sched` = [lr, step] lives on the device so
// that a captured graph picks up each step's values. When `gnorm` is non-null and `max_norm` > 0,
// the gradients are scaled as clip_grad_norm would (without modifying `g`).
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, const float* decay,
                                 bf16* p16, i64 n, const double* sched, const double* gnorm,
                                 double max_norm, double beta1, double beta2, double eps,
                                 double weight_decay) {
    const double lr = sched[0], t = sched[1];
    const double bc1 = 1.0 - pow(beta1, t);
    const double bc2 = 1.0 - pow(beta2, t);
    const float b1 = (float)beta1, b2 = (float)beta2;
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float epsf = (float)eps;
    const float shrink = (float)(lr * weight_decay);
    float k = 1.0f;
    bool clip = false;
    if (gnorm != nullptr && max_norm > 0.0) {
        const double nrm = gnorm[0];
        if (isfinite(nrm) && nrm > max_norm) {
            k = (float)(max_norm / (nrm + 1e-6));
            clip = true;
        }
    }
    GRID_STRIDE(i, n) {
        const float gi = clip ? g[i] * k : g[i];
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        float pi = p[i];
        pi -= shrink * decay[i] * pi;
        pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + epsf);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        p16[i] = tobf(pi);
    }
}

// GVA: dx [n, H·dk] = the sum over the g value heads' copies dy [n, H·g·dk] of each q/k head's
// gradient (value head i reads q/k head i / g), in copy order, f32. 8 elements per thread when dk
// is a multiple of 8 and both pointers 16-byte aligned (one element per thread moved 2-byte
// scalars through a 64-bit division each: 0.17 ms for [16k, 16·128] at g = 2, 15× its bytes).
extern "C" __global__ void sum_head_groups(const bf16* dy, bf16* dx, i64 n_out, int dk, int g) {
    if ((dk & 7) == 0 && aligned_to(dy, 16) && aligned_to(dx, 16)) {
        const int dk8 = dk >> 3;
        GRID_STRIDE(v, n_out >> 3) {
            const i64 qh = v / dk8;
            const bf16* src = dy + 8 * (qh * g * dk8 + (v - qh * dk8));
            float acc[8], f[8];
            ld8(src, acc);
            for (int c = 1; c < g; ++c) {
                ld8(src + (i64)c * dk, f);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] += f[e];
            }
            st8(dx + 8 * v, acc);
        }
    } else {
        GRID_STRIDE(i, n_out) {
            const i64 qh = i / dk;
            const i64 at = qh * g * dk + (i - qh * dk);
            float acc = 0.0f;
            for (int c = 0; c < g; ++c) acc += ldf(dy, at + (i64)c * dk);
            dx[i] = tobf(acc);
        }
    }
}

// Stage 1 of the global gradient norm: partial[block] = sum of squares (fp64) of a fixed,
// grid-strided share of the elements. The grid size is fixed by the caller, so the result does
// not depend on the device.
extern "C" __global__ void sumsq_partial(const float* g, i64 n, double* partial) {
    __shared__ double sh[33];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        const double x = (double)g[i];
        acc += x * x;
    }
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Stage 2 (one block): out[0] = sqrt(sum of partials).
extern "C" __global__ void sqrt_of_sum(const double* partial, int np, double* out) {
    __shared__ double sh[33];
    double acc = 0.0;
    for (int i = threadIdx.x; i < np; i += blockDim.x) acc += partial[i];
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) out[0] = sqrt(acc);
}
