// Shared prelude of the dense-op kernels (prepended to each module's source by the Rust side,
// since NVRTC sees one string per module). Conventions: bf16 storage, fp32 arithmetic,
// `long long` for flat element indices (a logits buffer can exceed 2^31 elements), every block
// size a multiple of 32 so that full-warp shuffles are valid.
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef long long i64;

#define FULL_MASK 0xffffffffu
#define GDN_IGNORE 0xffffffffu
// NVRTC has no math.h macros.
#define GDN_NAN __int_as_float(0x7fc00000)
#define GDN_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float ldf(const bf16* p, i64 i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ bf16 tobf(float v) { return __float2bfloat16(v); }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x * sigmoidf_(x); }
// d silu(x) / dx
__device__ __forceinline__ float silu_gradf_(float x) {
    const float s = sigmoidf_(x);
    return s * (1.0f + x * (1.0f - s));
}

// The same formulas as siluf_ / silu_gradf_ (bit-identical), sharing one sigmoid.
__device__ __forceinline__ void silu_and_grad(float x, float& silu, float& grad) {
    const float s = sigmoidf_(x);
    silu = x * s;
    grad = s * (1.0f + x * (1.0f - s));
}

// The MLP's gate and up projections come from one matmul, side by side: gu [rows, 2w], gate in
// columns [0, w), up in [w, 2w). Element i of a [rows, w] tensor is at gu + row·2w + column.
__device__ __forceinline__ i64 gu_at(i64 i, int w) {
    const i64 r = i / w;
    return i + r * w;
}

// SwiGLU's backward at one element: d gate = dy · up · silu'(gate), d up = dy · silu(gate).
__device__ __forceinline__ void swiglu_bwd1(float g, float u, float d, float& dg, float& du) {
    float sl, sg;
    silu_and_grad(g, sl, sg);
    dg = d * u * sg;
    du = d * sl;
}

// 8 bf16 <-> 8 floats through one 16-byte access (p 16-byte aligned). Rounding as tobf.
__device__ __forceinline__ void unpack8(uint4 u, float* f) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void ld8(const bf16* p, float* f) { unpack8(*reinterpret_cast<const uint4*>(p), f); }
__device__ __forceinline__ void st8(bf16* p, const float* f) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
}
// 4 bf16 <-> 4 floats through one 8-byte access (p 8-byte aligned).
__device__ __forceinline__ float4 unpack4(uint2 u) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
    const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 ld4bf(const bf16* p) { return unpack4(*reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ void st4bf(bf16* p, float4 v) {
    uint2 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
    h[0] = __floats2bfloat162_rn(v.x, v.y);
    h[1] = __floats2bfloat162_rn(v.z, v.w);
    *reinterpret_cast<uint2*>(p) = u;
}
// 8 floats through two 16-byte accesses (p 16-byte aligned).
__device__ __forceinline__ void ld8f(const float* p, float* f) {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void st8f(float* p, const float* f) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ bool aligned_to(const void* p, unsigned bytes) {
    return ((unsigned long long)p & (bytes - 1)) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over aligned groups of L lanes (L a power of two <= 32), returned to every lane of the group.
template <int L>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// R independent block sums with one pair of barriers (rows processed R at a time); every thread
// adds the warps' sums in warp order (deterministic). `sh` holds at least 32 * R floats.
template <int R>
__device__ __forceinline__ void block_sum_n(float* v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int q = 0; q < R; ++q) v[q] = warp_sum(v[q]);
    __syncthreads();  // earlier readers of sh are done
    if (lane == 0) {
#pragma unroll
        for (int q = 0; q < R; ++q) sh[q * 32 + wid] = v[q];
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < R; ++q) {
        float t = 0.0f;
        for (int i = 0; i < nw; ++i) t += sh[q * 32 + i];
        v[q] = t;
    }
}

// Sum over the block, returned to every thread, in a fixed order (deterministic). `sh` holds at
// least 33 floats. Safe to call repeatedly with the same `sh`.
__device__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // earlier readers of sh[32] are done
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

__device__ double block_sum_d(double v, double* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

__device__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : GDN_NEG_INF;
        t = warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Grid-stride over the n % 8 elements after the last whole chunk of 8 (the scalar end of the
// 8-wide kernels).
#define TAIL8(i, n)                                                                             \
    for (i64 i = ((n) & ~(i64)7) + (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (i64)gridDim.x * blockDim.x)


// out[j] += sum_p partial[p * stride + j] for j < c, summed over p in order (the second stage of
// every deterministic parameter-gradient reduction).
extern "C" __global__ void reduce_partials(const float* partial, int np, int stride, int c, float* out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float s = 0.0f;
    // Unrolled so that the loads are in flight together; the additions stay in order.
#pragma unroll 16
    for (int p = 0; p < np; ++p) s += partial[(i64)p * stride + j];
    out[j] += s;
}

// The same sums as reduce_partials (out[j] += Σ_p partial[p * stride + j]) for many parts: a
// block of 256 threads takes 32 columns; warp q adds the parts p ≡ q (mod 8) in order, then the 8
// warp sums are added in warp order. Fixed order, independent of the device.
extern "C" __global__ void __launch_bounds__(256) reduce_partials_wide(const float* partial, int np, int stride,
                                                                     int c, float* out) {
    __shared__ float sh[8][33];
    const int lane = threadIdx.x & 31, q = threadIdx.x >> 5;
    const int j = blockIdx.x * 32 + lane;
    float s = 0.0f;
    if (j < c) {
#pragma unroll 8
        for (int p = q; p < np; p += 8) s += partial[(i64)p * stride + j];
    }
    sh[q][lane] = s;
    __syncthreads();
    if (q == 0 && j < c) {
        float t = sh[0][lane];
#pragma unroll
        for (int i = 1; i < 8; ++i) t += sh[i][lane];
        out[j] += t;
    }
}
