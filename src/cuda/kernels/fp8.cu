// FP8 operands for cuBLASLt's FP8 matmuls, with per-tensor delayed scaling: each cast writes
// codes = satfinite(x · scale) with the scale chosen from earlier amaxes, and folds this tensor's
// own max |x| into *amax for the next update. So no kernel waits for the amax of its own input,
// and a step of these kernels can be captured in a CUDA graph.
//
// Formats: E4M3 (max 448) for activations and weights, E5M2 (max 57344) for gradients.
// Amaxes are non-negative floats kept as their bit patterns, whose unsigned order is the float
// order, so one atomicMax merges them (fp8_codes.cuh).

// Codes of a source's values over n8 chunks of 8 (chunk i to y + 8i, 8-byte aligned); y may be
// null (amax only), scale null means 1.
template <__nv_fp8_interpretation_t F, class Src>
__device__ void codes_flat(Src src, u8* __restrict__ y, const float* __restrict__ scale,
                           unsigned* __restrict__ amax, i64 n8) {
    const float s = scale ? *scale : 1.0f;
    float m = 0.0f;
    GRID_STRIDE(i, n8) {
        float f[8];
        src.load(i, f);
        m = absmax8(f, m);
        if (y) *reinterpret_cast<uint2*>(y + 8 * i) = fp8x8<F>(f, s);
    }
    fold_amax(m, amax);
}

// The flat cast's source: x itself (16-byte aligned).
struct FlatSrc {
    const bf16* x;
    __device__ void load(i64 i, float* f) const { ld8(x + 8 * i, f); }
};

extern "C" __global__ void __launch_bounds__(256) fp8_cast_e4m3(const bf16* x, u8* y, const float* scale, unsigned* amax, i64 n8) {
    codes_flat<__NV_E4M3>(FlatSrc{x}, y, scale, amax, n8);
}
extern "C" __global__ void __launch_bounds__(256) fp8_cast_e5m2(const bf16* x, u8* y, const float* scale, unsigned* amax, i64 n8) {
    codes_flat<__NV_E5M2>(FlatSrc{x}, y, scale, amax, n8);
}

// SwiGLU's forward with its output's E4M3 codes beside it: act = silu(gate)·up [rows, w] from gu
// (gate ‖ up, [rows, 2w], w % 8 == 0), written in bf16 and as codes (the down product's operand).
struct SwigluActSrc {
    const bf16* gu;
    bf16* act;
    int w;
    __device__ void load(i64 i, float* f) const {
        const bf16* p = gu + gu_at(8 * i, w);
        float u[8];
        ld8(p, f);
        ld8(p + w, u);
#pragma unroll
        for (int k = 0; k < 8; ++k) f[k] = siluf_(f[k]) * u[k];
        st8(act + 8 * i, f);
    }
};
extern "C" __global__ void __launch_bounds__(256) fp8_swiglu_fwd(const bf16* gu, bf16* act, u8* y, const float* scale, unsigned* amax, i64 n8, int w) {
    codes_flat<__NV_E4M3>(SwigluActSrc{gu, act, w}, y, scale, amax, n8);
}

// The transposing casts: a source of NP parts of [rows, cols] values (x itself, or values a
// fused kernel computes) → each part's codes transposed, part p at yt + (p·cols + column)·rows,
// and untransposed (row r of part p at y + r·ystride + p·cols) when y is not null. Blocks of 256
// threads own a 64-column strip and TT_TILES tiles of 64 rows down it (fewer blocks, fewer amax
// atomics). cols % 8 == 0 and rows % 16 == 0: every 8-wide load and 16-byte transposed store is
// whole.
#define TT 64
#define TT_TILES 4
// Columns out, for a tile of 64 rows from r0 and 64 columns from c0 of NP parts: thread t writes
// 16 rows of column t / 4 as one 16-byte store, four threads one column's 64 rows, so that a warp
// writes 8 whole 64-byte row segments of yt.
template <int NP>
__device__ __forceinline__ void store_tile_t(const u8 (*tile)[TT][TT], u8* __restrict__ yt, int rows, int cols,
                                             int c0, int r0) {
    const int c = threadIdx.x >> 2, rg = (threadIdx.x & 3) * 16;
    if (c0 + c >= cols || r0 + rg >= rows) return;
#pragma unroll
    for (int p = 0; p < NP; ++p) {
        unsigned w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            w[q] = 0;
#pragma unroll
            for (int j = 0; j < 4; ++j) w[q] |= (unsigned)tile[p][rg + 4 * q + j][c] << (8 * j);
        }
        *reinterpret_cast<uint4*>(yt + ((i64)p * cols + c0 + c) * rows + r0 + rg) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

template <int NP, __nv_fp8_interpretation_t F, class Src>
__device__ void codes_t(Src src, u8* __restrict__ y, i64 ystride, u8* __restrict__ yt,
                        const float* __restrict__ scale, unsigned* __restrict__ amax, int rows, int cols) {
    __shared__ __align__(16) u8 tile[NP][TT][TT];
    const float s = *scale;
    const int c0 = blockIdx.x * TT, t = threadIdx.x;
    float m = 0.0f;
    for (int tr = 0; tr < TT_TILES; ++tr) {
        const int r0 = (blockIdx.y * TT_TILES + tr) * TT;
        if (r0 >= rows) break;
        // Rows in: 64 rows × 8 chunks of 8 columns, two chunks per thread.
#pragma unroll
        for (int it = 0; it < 2; ++it) {
            const int idx = t + 256 * it, r = idx >> 3, c = (idx & 7) * 8;
            uint2 code[NP];
#pragma unroll
            for (int p = 0; p < NP; ++p) code[p] = make_uint2(0, 0);
            if (r0 + r < rows && c0 + c < cols) {
                float f[NP][8];
                src.load(r0 + r, c0 + c, f);
#pragma unroll
                for (int p = 0; p < NP; ++p) {
                    m = absmax8(f[p], m);
                    code[p] = fp8x8<F>(f[p], s);
                    if (y) *reinterpret_cast<uint2*>(y + (i64)(r0 + r) * ystride + p * cols + c0 + c) = code[p];
                }
            }
#pragma unroll
            for (int p = 0; p < NP; ++p) *reinterpret_cast<uint2*>(&tile[p][r][c]) = code[p];
        }
        __syncthreads();
        store_tile_t<NP>(tile, yt, rows, cols, c0, r0);
        __syncthreads();
    }
    fold_amax(m, amax);
}

// The plain transposing cast's source: x [rows, cols] itself.
struct CastSrc {
    const bf16* x;
    int cols;
    __device__ void load(int r, int c, float (*f)[8]) const { ld8(x + (i64)r * cols + c, f[0]); }
};

extern "C" __global__ void __launch_bounds__(256) fp8_cast_t_e4m3(const bf16* x, u8* y, u8* yt, const float* scale, unsigned* amax, int rows, int cols) {
    codes_t<1, __NV_E4M3>(CastSrc{x, cols}, y, cols, yt, scale, amax, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) fp8_cast_t_e5m2(const bf16* x, u8* y, u8* yt, const float* scale, unsigned* amax, int rows, int cols) {
    codes_t<1, __NV_E5M2>(CastSrc{x, cols}, y, cols, yt, scale, amax, rows, cols);
}

// Codes already written row-major by their producer (y [rows, cols]) → yt [cols, rows], the
// operand layout of the weight gradient's product. Same blocks and constraints as above.
extern "C" __global__ void __launch_bounds__(256) fp8_transpose(const u8* __restrict__ y, u8* __restrict__ yt, int rows, int cols) {
    __shared__ __align__(16) u8 tile[1][TT][TT];
    const int c0 = blockIdx.x * TT, t = threadIdx.x;
    for (int tr = 0; tr < TT_TILES; ++tr) {
        const int r0 = (blockIdx.y * TT_TILES + tr) * TT;
        if (r0 >= rows) break;
#pragma unroll
        for (int it = 0; it < 2; ++it) {
            const int idx = t + 256 * it, r = idx >> 3, c = (idx & 7) * 8;
            uint2 code = make_uint2(0, 0);
            if (r0 + r < rows && c0 + c < cols) code = *reinterpret_cast<const uint2*>(y + (i64)(r0 + r) * cols + c0 + c);
            *reinterpret_cast<uint2*>(&tile[0][r][c]) = code;
        }
        __syncthreads();
        store_tile_t<1>(tile, yt, rows, cols, c0, r0);
        __syncthreads();
    }
}

// SwiGLU with its output's codes (the MLP's gate and up side by side: gu [rows, 2w], gate in
// columns [0, w), up in [w, 2w)).
//
// Forward, for a backward that recomputes act = silu(gate)·up only to feed down's weight
// gradient: actᵀ's E4M3 codes [w, rows], act itself never written.
struct SwigluFwdSrc {
    const bf16* gu;
    int w;
    __device__ void load(int r, int c, float (*f)[8]) const {
        const bf16* p = gu + (i64)r * 2 * w + c;
        float u[8];
        ld8(p, f[0]);
        ld8(p + w, u);
#pragma unroll
        for (int k = 0; k < 8; ++k) f[0][k] = siluf_(f[0][k]) * u[k];
    }
};
extern "C" __global__ void __launch_bounds__(256) fp8_swiglu_fwd_t(const bf16* gu, u8* yt, const float* scale, unsigned* amax, int rows, int w) {
    codes_t<1, __NV_E4M3>(SwigluFwdSrc{gu, w}, nullptr, 0, yt, scale, amax, rows, w);
}

// Backward: d gate ‖ d up from gu and dy [rows, w] as E5M2 codes, both [rows, 2w] (y) and
// transposed [2w, rows] (yt), the two operands of the gate/up product's backward; the bf16
// gradient is never written.
struct SwigluBwdSrc {
    const bf16* gu;
    const bf16* dy;
    int w;
    __device__ void load(int r, int c, float (*f)[8]) const {
        const bf16* p = gu + (i64)r * 2 * w + c;
        float g[8], u[8], d[8];
        ld8(p, g);
        ld8(p + w, u);
        ld8(dy + (i64)r * w + c, d);
#pragma unroll
        for (int k = 0; k < 8; ++k) swiglu_bwd1(g[k], u[k], d[k], f[0][k], f[1][k]);
    }
};
extern "C" __global__ void __launch_bounds__(256) fp8_swiglu_bwd_t(const bf16* gu, const bf16* dy, u8* y, u8* yt, const float* scale, unsigned* amax, int rows, int w) {
    codes_t<2, __NV_E5M2>(SwigluBwdSrc{gu, dy, w}, y, 2 * (i64)w, yt, scale, amax, rows, w);
}

// Delayed scaling for n tensors: history [n, hist] keeps each tensor's amax over the last hist
// updates, newest first. The amax gathered since the last update is pushed in and reset to 0;
// scale = fmax / (the history's max), and scale_inv = 1 / scale is what the matmul multiplies its
// products by. A tensor that has been all zeros (or not finite) keeps its scale. Tensor i's
// scale and scale_inv are at i · stride (cuBLASLt reads each scale_inv through its own pointer).
extern "C" __global__ void fp8_scale_update(unsigned* amax, float* history, float* scale, float* scale_inv, int n,
                                            int hist, int stride, float fmax) {
    GRID_STRIDE(i, n) {
        float* h = history + i * hist;
        for (int j = hist - 1; j > 0; --j) h[j] = h[j - 1];
        h[0] = __uint_as_float(amax[i]);
        amax[i] = 0;
        float top = 0.0f;
        for (int j = 0; j < hist; ++j) top = fmaxf(top, h[j]);
        if (top > 0.0f && top < __int_as_float(0x7f800000)) {  // not 0, not ∞ or NaN
            const float sc = fmax / top;
            scale[i * stride] = sc;
            scale_inv[i * stride] = 1.0f / sc;
        }
    }
}
