// FP8 operands for cuBLASLt's FP8 matmuls, with per-tensor delayed scaling: each cast writes
// codes = satfinite(x · scale) with the scale chosen from earlier amaxes, and folds this tensor's
// own max |x| into *amax for the next update. So no kernel waits for the amax of its own input,
// and a step of these kernels can be captured in a CUDA graph.
//
// Formats: E4M3 (max 448) for activations and weights, E5M2 (max 57344) for gradients.
// Amaxes are non-negative floats kept as their bit patterns, whose unsigned order is the float
// order, so one atomicMax merges them.
#include <cuda_fp8.h>

typedef unsigned char u8;

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ unsigned fp8x4(float a, float b, float c, float d) {
    const unsigned lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, F);
    const unsigned hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, F);
    return lo | (hi << 16);
}

// 8 values scaled and packed into 8 codes (the first value in the lowest byte).
template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ uint2 fp8x8(const float* f, float s) {
    return make_uint2(fp8x4<F>(f[0] * s, f[1] * s, f[2] * s, f[3] * s),
                      fp8x4<F>(f[4] * s, f[5] * s, f[6] * s, f[7] * s));
}

__device__ __forceinline__ float absmax8(const float* f, float m) {
#pragma unroll
    for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(f[j]));
    return m;
}

// One atomic per block: a block-wide max first.
__device__ __forceinline__ void fold_amax(float m, unsigned* amax) {
    __shared__ float sh[33];
    m = block_max(m, sh);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

// y[i] = code(x[i] · *scale) over n8 chunks of 8 (x 16-byte and y 8-byte aligned); y may be null
// (amax only), scale null means 1.
template <__nv_fp8_interpretation_t F>
__device__ void cast_flat(const bf16* __restrict__ x, u8* __restrict__ y, const float* __restrict__ scale,
                          unsigned* __restrict__ amax, i64 n8) {
    const float s = scale ? *scale : 1.0f;
    float m = 0.0f;
    GRID_STRIDE(i, n8) {
        float f[8];
        ld8(x + 8 * i, f);
        m = absmax8(f, m);
        if (y) *reinterpret_cast<uint2*>(y + 8 * i) = fp8x8<F>(f, s);
    }
    fold_amax(m, amax);
}

extern "C" __global__ void __launch_bounds__(256) fp8_cast_e4m3(const bf16* x, u8* y, const float* scale, unsigned* amax, i64 n8) {
    cast_flat<__NV_E4M3>(x, y, scale, amax, n8);
}
extern "C" __global__ void __launch_bounds__(256) fp8_cast_e5m2(const bf16* x, u8* y, const float* scale, unsigned* amax, i64 n8) {
    cast_flat<__NV_E5M2>(x, y, scale, amax, n8);
}

// The transposing cast: x [rows, cols] bf16 → yt [cols, rows] codes, and y [rows, cols] codes
// when y is not null. Blocks of 256 threads own a 64-column strip and TT_TILES tiles of 64 rows
// down it (fewer blocks, fewer amax atomics). cols % 8 == 0 and rows % 16 == 0: every 8-wide
// load and 16-byte transposed store is whole.
#define TT 64
#define TT_TILES 4
template <__nv_fp8_interpretation_t F>
__device__ void cast_transposed(const bf16* __restrict__ x, u8* __restrict__ y, u8* __restrict__ yt,
                                const float* __restrict__ scale, unsigned* __restrict__ amax, int rows,
                                int cols) {
    __shared__ __align__(16) u8 tile[TT][TT];
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
            uint2 code = make_uint2(0, 0);
            if (r0 + r < rows && c0 + c < cols) {
                float f[8];
                const i64 at = (i64)(r0 + r) * cols + c0 + c;
                ld8(x + at, f);
                m = absmax8(f, m);
                code = fp8x8<F>(f, s);
                if (y) *reinterpret_cast<uint2*>(y + at) = code;
            }
            *reinterpret_cast<uint2*>(&tile[r][c]) = code;
        }
        __syncthreads();
        // Columns out: thread t writes 16 rows of column t / 4 as one 16-byte store, four
        // threads one column's 64 rows, so that a warp writes 8 whole 64-byte row segments of yt.
        const int c = t >> 2, rg = (t & 3) * 16;
        if (c0 + c < cols && r0 + rg < rows) {
            unsigned w[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                w[q] = 0;
#pragma unroll
                for (int j = 0; j < 4; ++j) w[q] |= (unsigned)tile[rg + 4 * q + j][c] << (8 * j);
            }
            *reinterpret_cast<uint4*>(yt + (i64)(c0 + c) * rows + r0 + rg) = make_uint4(w[0], w[1], w[2], w[3]);
        }
        __syncthreads();
    }
    fold_amax(m, amax);
}

extern "C" __global__ void __launch_bounds__(256) fp8_cast_t_e4m3(const bf16* x, u8* y, u8* yt, const float* scale, unsigned* amax, int rows, int cols) {
    cast_transposed<__NV_E4M3>(x, y, yt, scale, amax, rows, cols);
}
extern "C" __global__ void __launch_bounds__(256) fp8_cast_t_e5m2(const bf16* x, u8* y, u8* yt, const float* scale, unsigned* amax, int rows, int cols) {
    cast_transposed<__NV_E5M2>(x, y, yt, scale, amax, rows, cols);
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
