// Small helpers of the GPU language model (cuda::model): the fp32 residual stream (add, RMSNorm
// forward/backward), the fused L2-norm/SiLU backward, the b_proj bias and its gradient.
// Grid-stride loops; the bias-gradient column sum runs one thread per column over the rows in
// order (deterministic).
//
// model.rs fixes the launch configurations (one block of min(256, d rounded up to 32) threads per
// row for the row kernels, ops::PARTS blocks for the RMSNorm backward, n/256 blocks for the
// element-wise ones), so the speed-ups here live inside those shapes: 16-byte accesses where the
// pointers allow it (checked on the device, uniform over the launch), rows held in registers,
// several rows per block-wide reduction. The general loops remain for widths the vector paths do
// not cover.

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

// The backward of y = l2norm(silu(c)) per row of width d, from the delta rule's bf16 gradient dy
// (bf16 since session 19, as FLA's; see docs/design-notes.md), with s = silu(c),
// r = 1/sqrt(|s|² + 1e-6) and y = s·r recomputed in fp32 from c, so that neither s nor y is
// rounded to bf16 before the projection dy − y(y·dy), which cancels most of dy when dy is nearly
// parallel to y. ds = r(dy − y(y·dy)), dc = ds·silu'(c).
// One block per row; both sums share one block reduction, the row stays in registers when it
// has at most 4 elements per thread.
extern "C" __global__ void mx_l2norm_silu_bwd(const bf16* c, const bf16* dy, bf16* dc, int rows, int d) {
    __shared__ float sh[64];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const i64 base = (i64)r * d;
    const int nt = blockDim.x;
    if (d <= 4 * nt) {
        float cv[4], gv[4], sums[2] = {0.0f, 0.0f};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int j = threadIdx.x + k * nt;
            cv[k] = j < d ? ldf(c, base + j) : 0.0f;
            gv[k] = j < d ? ldf(dy, base + j) : 0.0f;
            const float s = siluf_(cv[k]);
            sums[0] += s * s;
            sums[1] += s * gv[k];
        }
        block_sum_n<2>(sums, sh);
        const float rr = 1.0f / sqrtf(sums[0] + 1e-6f);
        const float dot = rr * sums[1];  // y . dy
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int j = threadIdx.x + k * nt;
            if (j >= d) break;
            float sl, sg;
            silu_and_grad(cv[k], sl, sg);
            const float y = sl * rr;
            dc[base + j] = tobf(rr * (gv[k] - y * dot) * sg);
        }
        return;
    }
    float sums[2] = {0.0f, 0.0f};
    for (int j = threadIdx.x; j < d; j += nt) {
        const float s = siluf_(ldf(c, base + j));
        sums[0] += s * s;
        sums[1] += s * ldf(dy, base + j);
    }
    block_sum_n<2>(sums, sh);
    const float rr = 1.0f / sqrtf(sums[0] + 1e-6f);
    const float dot = rr * sums[1];
    for (int j = threadIdx.x; j < d; j += nt) {
        const float x = ldf(c, base + j);
        const float y = siluf_(x) * rr;
        dc[base + j] = tobf(rr * (ldf(dy, base + j) - y * dot) * silu_gradf_(x));
    }
}

// The same backward with one warp per row, for rows of d = 32·E (E ≤ 8: K = 64, 128, 256): no
// block barrier and eight rows per 256-thread block, where the block-per-row form above spent
// most of its time waiting on one barrier per 256-element row (measured: 28 ms of the 1.3B step
// for ≈ 8 GB of traffic). With E = 4 or 8 and 16-byte aligned tensors, lane l holds the E
// contiguous elements E·l … (one 8- or 16-byte load each of c and dy, one store); otherwise
// elements l, l + 32, … (each scalar access coalesced across the warp).
extern "C" __global__ void mx_l2norm_silu_bwd_warp(const bf16* c, const bf16* dy, bf16* dc, int rows,
                                                   int e) {
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int lane = threadIdx.x & 31;
    const bool vec = (e == 4 || e == 8) && aligned_to(c, 16) && aligned_to(dy, 16) && aligned_to(dc, 16);
    const i64 base = (i64)r * (32 * e) + (vec ? e * lane : lane);
    float cv[8], gv[8], ss = 0.0f, sg = 0.0f;
    if (vec && e == 8) {
        ld8(c + base, cv);
        ld8(dy + base, gv);
    } else if (vec) {
        const float4 a = ld4bf(c + base), b = ld4bf(dy + base);
        cv[0] = a.x, cv[1] = a.y, cv[2] = a.z, cv[3] = a.w;
        gv[0] = b.x, gv[1] = b.y, gv[2] = b.z, gv[3] = b.w;
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            if (k < e) {
                cv[k] = ldf(c, base + 32 * k);
                gv[k] = ldf(dy, base + 32 * k);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        if (k < e) {
            const float s = siluf_(cv[k]);
            ss += s * s;
            sg += s * gv[k];
        }
    }
    ss = warp_sum(ss);
    sg = warp_sum(sg);
    const float rr = 1.0f / sqrtf(ss + 1e-6f);
    const float dot = rr * sg;  // y . dy
    float out[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        if (k < e) {
            float sl, sgr;
            silu_and_grad(cv[k], sl, sgr);
            out[k] = rr * (gv[k] - sl * rr * dot) * sgr;
        }
    }
    if (vec && e == 8) {
        st8(dc + base, out);
    } else if (vec) {
        st4bf(dc + base, make_float4(out[0], out[1], out[2], out[3]));
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k)
            if (k < e) dc[base + 32 * k] = tobf(out[k]);
    }
}

// y = a + b with the fp32 residual stream a, y (b a bf16 block output).
extern "C" __global__ void mx_add_f32_bf16(const float* a, const bf16* b, float* y, i64 n) {
    if (aligned_to(a, 16) && aligned_to(b, 16) && aligned_to(y, 16)) {
        GRID_STRIDE(v, n >> 3) {
            float fa[8], fb[8];
            ld8f(a + 8 * v, fa);
            ld8(b + 8 * v, fb);
#pragma unroll
            for (int k = 0; k < 8; ++k) fa[k] += fb[k];
            st8f(y + 8 * v, fa);
        }
        TAIL8(i, n) y[i] = a[i] + ldf(b, i);
    } else {
        MX_LOOP(i, n) { y[i] = a[i] + ldf(b, i); }
    }
}

// RMSNorm of the fp32 residual stream (ops::rmsnorm_fwd with fp32 x): y = x·rstd·w (bf16),
// rstd = 1/sqrt(mean(x²) + eps). With `add` not null, the row normalised is x + add (bf16), which
// is also written to xs (the residual add before the MLP's norm, without a separate pass). One
// block per row; with d a multiple of 4, at most 4 float4 per thread and aligned rows, the row is
// read once into registers. With y8 not null, y's E4M3 codes (of the bf16 values, · *scale8) go
// there too, and max |y| into *amax8: the norm's output feeds FP8 products.
extern "C" __global__ void mx_rmsnorm_fwd_f32x(const float* x, const bf16* add, float* xs, const bf16* w, bf16* y,
                                               float* rstd, int rows, int d, float eps, u8* y8,
                                               const float* scale8, unsigned* amax8) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * d;
    const bf16* ar = add ? add + (i64)r * d : nullptr;
    float* xsr = add ? xs + (i64)r * d : nullptr;
    bf16* yr = y + (i64)r * d;
    const int nv = d >> 2, nt = blockDim.x;
    if ((d & 3) == 0 && nv <= 4 * nt && aligned_to(xr, 16) && aligned_to(yr, 8) && aligned_to(w, 8) &&
        aligned_to(ar, 8) && aligned_to(xsr, 16)) {
        float4 v[4];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int q = threadIdx.x + k * nt;
            v[k] = q < nv ? reinterpret_cast<const float4*>(xr)[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (ar && q < nv) {
                const float4 a = ld4bf(ar + 4 * q);
                v[k] = make_float4(v[k].x + a.x, v[k].y + a.y, v[k].z + a.z, v[k].w + a.w);
                reinterpret_cast<float4*>(xsr)[q] = v[k];
            }
            ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        ss = block_sum(ss, sh);
        const float rs = 1.0f / sqrtf(ss / (float)d + eps);
        if (threadIdx.x == 0) rstd[r] = rs;
        const float s8 = y8 ? *scale8 : 1.0f;
        float m = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int q = threadIdx.x + k * nt;
            if (q >= nv) break;
            const float4 wv = ld4bf(w + 4 * q);
            const float4 o = make_float4(v[k].x * rs * wv.x, v[k].y * rs * wv.y, v[k].z * rs * wv.z,
                                         v[k].w * rs * wv.w);
            st4bf(yr + 4 * q, o);
            if (y8) {
                const float4 b = make_float4(rbf(o.x), rbf(o.y), rbf(o.z), rbf(o.w));
                m = fmaxf(m, fmaxf(fmaxf(fabsf(b.x), fabsf(b.y)), fmaxf(fabsf(b.z), fabsf(b.w))));
                *reinterpret_cast<unsigned*>(y8 + (i64)r * d + 4 * q) =
                    fp8x4<__NV_E4M3>(b.x * s8, b.y * s8, b.z * s8, b.w * s8);
            }
        }
        if (y8) fold_amax(m, amax8);
        return;
    }
    // Each thread reads back only the xs elements it wrote.
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += nt) {
        float v = xr[c];
        if (ar) {
            v += ldf(ar, c);
            xsr[c] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    const float* src = ar ? xsr : xr;
    const float s8 = y8 ? *scale8 : 1.0f;
    float m = 0.0f;
    for (int c = threadIdx.x; c < d; c += nt) {
        const bf16 o = tobf(src[c] * rs * ldf(w, c));
        yr[c] = o;
        if (y8) {
            const float b = __bfloat162float(o);
            m = fmaxf(m, fabsf(b));
            y8[(i64)r * d + c] = fp8_code<__NV_E4M3>(b * s8);
        }
    }
    if (y8) fold_amax(m, amax8);
}

// Rows per block-wide reduction in mx_rmsnorm_bwd_f32's vector path: their loads are in flight
// together, and one pair of barriers serves them all.
#define MX_BWD_ROWS 4

// The low-rank addend of mx_rmsnorm_bwd_f32's dy: Σ over nb blocks b and i < r of
// c[b, row, i] · v[b·r + i, col], with c bf16 [nb, rows, r] and v bf16 [nb·r, d] (the a and b
// projections' share of the mixer's input gradient, which would otherwise cost two fp32 passes
// over dy). nb = 0: none.
struct LowRank {
    const bf16* c;
    const bf16* v;
    int r, nb;
};

__device__ __forceinline__ float lowrank_at(const LowRank& lr, int rows, int row, int col, int d) {
    float s = 0.0f;
    for (int b = 0; b < lr.nb; ++b)
        for (int i = 0; i < lr.r; ++i)
            s += ldf(lr.c, ((i64)b * rows + row) * lr.r + i) * ldf(lr.v, (i64)(b * lr.r + i) * d + col);
    return s;
}

// RMSNorm backward on the fp32 residual stream with an fp32 gradient (ops::rmsnorm_bwd with x,
// dy and dx in fp32): dx = rstd·(dy·w − x·rstd·mean(dy·w·x·rstd)), written (acc = 0) or added
// (acc = 1) into the fp32 residual gradient, and, when dx_bf is not null, also rounded to bf16
// into dx_bf (the stored fp32 value, rounded as tobf: what cast_f32_bf16 of dx gives); partial[block, :] = Σ over the block's rows of
// dy·x·rstd, for reduce_partials. dy here is the given dy plus the low-rank addend (LowRank).
// Block b handles the contiguous rows [b·per, (b+1)·per), each
// column summed by one thread over the rows in order (deterministic). Vector path (d a multiple
// of 4, at most 2 float4 per thread, aligned): MX_BWD_ROWS rows at a time in registers.
// General path: one row at a time, the column sums in d floats of dynamic shared memory.
// With dx8 not null, dx's E5M2 codes (· *scale8) are written there in place of dx_bf, and max |dx|
// folded into *amax8: the gradient then feeds only FP8 products.
extern "C" __global__ void __launch_bounds__(256, 2) mx_rmsnorm_bwd_f32(const float* x, const bf16* w, const float* rstd, const float* dy,
                                              float* dx, bf16* dx_bf, float* partial, int rows, int d, int acc_dx,
                                              const bf16* lr_c, const bf16* lr_v, int lr_r, int lr_nb, u8* dx8,
                                              const float* scale8, unsigned* amax8) {
    const float s8 = dx8 ? *scale8 : 1.0f;
    float m8 = 0.0f;
    const LowRank lr{lr_c, lr_v, lr_r, lr_nb};
    extern __shared__ float acc[];
    __shared__ float sh[32 * MX_BWD_ROWS];
    const int per = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = min(rows, (int)blockIdx.x * per);
    const int r1 = min(rows, r0 + per);
    const int nv = d >> 2, nt = blockDim.x;
    if ((d & 3) == 0 && nv <= 2 * nt && aligned_to(x, 16) && aligned_to(dy, 16) && aligned_to(dx, 16) &&
        aligned_to(w, 8) && aligned_to(dx_bf, 8) && aligned_to(lr_v, 8)) {
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4* x4 = reinterpret_cast<const float4*>(x);
        const float4* g4 = reinterpret_cast<const float4*>(dy);
        float4* d4 = reinterpret_cast<float4*>(dx);
        float4 wv[2], cs[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int q = threadIdx.x + k * nt;
            wv[k] = q < nv ? ld4bf(w + 4 * q) : zero;
            cs[k] = zero;
        }
        // The addend's c for the MX_BWD_ROWS rows, staged in the dynamic shared memory (unused
        // otherwise on this path) so that the loop below reads it without a global load each.
        const int per_row = lr.nb * lr.r;
        for (int r = r0; r < r1; r += MX_BWD_ROWS) {
            float4 xv[MX_BWD_ROWS][2], gv[MX_BWD_ROWS][2];
            float rs[MX_BWD_ROWS], dot[MX_BWD_ROWS];
            if (per_row > 0) {
                // The previous group's readers are past block_sum_n's barriers.
                for (int e = threadIdx.x; e < MX_BWD_ROWS * per_row; e += nt) {
                    const int j = e / per_row, b = (e % per_row) / lr.r, i = e % lr.r;
                    acc[e] = r + j < r1 ? ldf(lr.c, ((i64)b * rows + r + j) * lr.r + i) : 0.0f;
                }
                __syncthreads();
            }
#pragma unroll
            for (int j = 0; j < MX_BWD_ROWS; ++j) {
                const bool ok = r + j < r1;
                rs[j] = ok ? rstd[r + j] : 0.0f;
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const int q = threadIdx.x + k * nt;
                    const i64 e = (i64)(r + j) * nv + q;
                    const bool in = ok && q < nv;
                    xv[j][k] = in ? x4[e] : zero;
                    gv[j][k] = in ? g4[e] : zero;
                }
            }
            // The addend: each row of v once for the MX_BWD_ROWS rows (rows past r1 and columns
            // past d only ever add to values that are never stored). Row bi of v is block
            // bi / r, index bi % r; unrolled so that several rows' loads are in flight at once.
#pragma unroll 4
            for (int bi = 0; bi < per_row; ++bi) {
                const bf16* vr = lr.v + (i64)bi * d;
                float4 vv[2];
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const int q = threadIdx.x + k * nt;
                    vv[k] = q < nv ? ld4bf(vr + 4 * q) : zero;
                }
#pragma unroll
                for (int j = 0; j < MX_BWD_ROWS; ++j) {
                    const float cj = acc[j * per_row + bi];
#pragma unroll
                    for (int k = 0; k < 2; ++k) {
                        gv[j][k].x += cj * vv[k].x;
                        gv[j][k].y += cj * vv[k].y;
                        gv[j][k].z += cj * vv[k].z;
                        gv[j][k].w += cj * vv[k].w;
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < MX_BWD_ROWS; ++j) {
                dot[j] = 0.0f;
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const float4 a = xv[j][k], g = gv[j][k], ww = wv[k];
                    dot[j] += g.x * ww.x * a.x * rs[j] + g.y * ww.y * a.y * rs[j] + g.z * ww.z * a.z * rs[j] +
                              g.w * ww.w * a.w * rs[j];
                }
            }
            block_sum_n<MX_BWD_ROWS>(dot, sh);
#pragma unroll
            for (int j = 0; j < MX_BWD_ROWS; ++j) {
                if (r + j >= r1) break;
                const float mean = dot[j] / (float)d, s = rs[j];
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const int q = threadIdx.x + k * nt;
                    if (q >= nv) break;
                    // The old dx is read only here, to keep the registers for the loop above.
                    const float4 a = xv[j][k], g = gv[j][k], ww = wv[k];
                    float4 v = make_float4(s * (g.x * ww.x - a.x * s * mean), s * (g.y * ww.y - a.y * s * mean),
                                           s * (g.z * ww.z - a.z * s * mean), s * (g.w * ww.w - a.w * s * mean));
                    const i64 e = (i64)(r + j) * nv + q;
                    if (acc_dx) {
                        const float4 o = d4[e];
                        v = make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w);
                    }
                    d4[e] = v;
                    if (dx8) {
                        m8 = fmaxf(m8, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
                        *reinterpret_cast<unsigned*>(dx8 + 4 * e) =
                            fp8x4<__NV_E5M2>(v.x * s8, v.y * s8, v.z * s8, v.w * s8);
                    } else if (dx_bf) {
                        st4bf(dx_bf + 4 * e, v);
                    }
                    cs[k].x += g.x * a.x * s;
                    cs[k].y += g.y * a.y * s;
                    cs[k].z += g.z * a.z * s;
                    cs[k].w += g.w * a.w * s;
                }
            }
        }
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int q = threadIdx.x + k * nt;
            if (q >= nv) break;
            float* p = partial + (i64)blockIdx.x * d + 4 * q;
            p[0] = cs[k].x;
            p[1] = cs[k].y;
            p[2] = cs[k].z;
            p[3] = cs[k].w;
        }
        if (dx8) fold_amax(m8, amax8);
        return;
    }
    for (int c = threadIdx.x; c < d; c += nt) acc[c] = 0.0f;
    for (int r = r0; r < r1; ++r) {
        const float* xr = x + (i64)r * d;
        const float* dyr = dy + (i64)r * d;
        float* dxr = dx + (i64)r * d;
        const float rs = rstd[r];
        float dot[1] = {0.0f};
        for (int c = threadIdx.x; c < d; c += nt)
            dot[0] += (dyr[c] + lowrank_at(lr, rows, r, c, d)) * ldf(w, c) * xr[c] * rs;
        block_sum_n<1>(dot, sh);
        const float mean = dot[0] / (float)d;
        for (int c = threadIdx.x; c < d; c += nt) {
            const float xv = xr[c], g = dyr[c] + lowrank_at(lr, rows, r, c, d);
            const float v = rs * (g * ldf(w, c) - xv * rs * mean);
            const float o = acc_dx ? dxr[c] + v : v;
            dxr[c] = o;
            if (dx8) {
                m8 = fmaxf(m8, fabsf(o));
                dx8[(i64)r * d + c] = fp8_code<__NV_E5M2>(o * s8);
            } else if (dx_bf) {
                dx_bf[(i64)r * d + c] = tobf(o);
            }
            acc[c] += g * xv * rs;  // each thread owns the columns it touches: no race
        }
    }
    for (int c = threadIdx.x; c < d; c += nt) partial[(i64)blockIdx.x * d + c] = acc[c];
    if (dx8) fold_amax(m8, amax8);
}
