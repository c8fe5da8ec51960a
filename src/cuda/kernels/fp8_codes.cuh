// FP8 codes for the kernels that write a product's operands themselves (fp8.cu's casts, and
// producers such as the short conv's backward): packing, the amax fold. Prepended after
// common.cuh to the modules that need it.
#include <cuda_fp8.h>

typedef unsigned char u8;

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ unsigned fp8x4(float a, float b, float c, float d) {
    const unsigned lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, F);
    const unsigned hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, F);
    return lo | (hi << 16);
}

template <__nv_fp8_interpretation_t F>
__device__ __forceinline__ u8 fp8_code(float v) {
    return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, F);
}

// v rounded to bf16 and back (a bf16 output's codes are those of its stored value).
__device__ __forceinline__ float rbf(float v) { return __bfloat162float(__float2bfloat16(v)); }

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

// At most one atomic per block: a block-wide max first, and no atomic where the counter already
// holds as much (it only grows within a kernel, so a stale read errs on the side of the atomic).
// Most blocks then skip it: same-address atomics serialise in L2, and a transposing cast of the
// MLP's gradient has 22k blocks.
__device__ __forceinline__ void fold_amax(float m, unsigned* amax) {
    __shared__ float sh[33];
    m = block_max(m, sh);
    if (threadIdx.x == 0 && __float_as_uint(m) > *(volatile unsigned*)amax) atomicMax(amax, __float_as_uint(m));
}

