// L2 traffic of the ways a CTA can bring a chunk tile into shared memory (nvcc on the GPU
// machine; `scripts/cp_async_probe.sh`). Nsight Compute counted 1.5x the ideal L2 sectors for
// every 16-byte cp.async in the delta-rule kernels (session 13); this probe times each way alone
// on the access pattern of those kernels (64 rows of 256 bytes per tile, row stride H·K·2 =
// 4096 bytes, one tile per (chunk, head) CTA, two operands per CTA) so that ncu's counters of
// each can be compared with the bytes it needs.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

constexpr int T = 16384, H = 16, K = 128, CH = 64, LD = K + 8, NTH = 256;

__device__ __forceinline__ unsigned su(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

template <int MODE>
__device__ __forceinline__ void piece(unsigned s, const void* g) {
  if constexpr (MODE == 1) {  // the kernels' form: .cg, L2::128B, src-size operand
    int n = 16;
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(g), "r"(n));
  } else if constexpr (MODE == 2) {  // .cg, src-size operand, no L2 hint
    int n = 16;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(g), "r"(n));
  } else if constexpr (MODE == 3) {  // .cg, no src-size
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
  } else if constexpr (MODE == 4) {  // .ca
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
  } else if constexpr (MODE == 5) {  // .cg, L2::256B
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(s), "l"(g));
  }
}

// MODE 0: ld.global.nc.v4 + st.shared; 1–5: cp.async forms; 6: cp.async.bulk per row (TMA 1-D).
template <int MODE>
__global__ void __launch_bounds__(NTH) probe(const unsigned short* a, const unsigned short* b, float* out) {
  extern __shared__ __align__(128) unsigned short sm[];
  __shared__ __align__(8) unsigned long long bar;
  const int c = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const long base = ((long)c * CH * H + h) * K;
  unsigned short* sa = sm;
  unsigned short* sb = sm + CH * LD;
  if constexpr (MODE == 0) {
    for (int i = tid; i < CH * K / 8; i += NTH) {
      const int r = i / (K / 8), col = (i % (K / 8)) * 8;
      uint4 x = __ldg(reinterpret_cast<const uint4*>(a + base + (long)r * H * K + col));
      uint4 y = __ldg(reinterpret_cast<const uint4*>(b + base + (long)r * H * K + col));
      *reinterpret_cast<uint4*>(sa + r * LD + col) = x;
      *reinterpret_cast<uint4*>(sb + r * LD + col) = y;
    }
    __syncthreads();
  } else if constexpr (MODE == 6) {
    const unsigned mb = su(&bar);
    if (tid == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(mb));
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
    }
    __syncthreads();
    if (tid == 0)
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(mb), "r"(2 * CH * K * 2));
    __syncthreads();
    if (tid < 2 * CH) {
      const int r = tid % CH;
      const unsigned short* src = (tid < CH ? a : b) + base + (long)r * H * K;
      unsigned short* dst = (tid < CH ? sa : sb) + r * LD;
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(su(dst)),
          "l"(src), "r"(K * 2), "r"(mb)
          : "memory");
    }
    asm volatile(
        "{\n .reg .pred p;\n W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0;\n @!p bra W;\n}\n" ::"r"(mb)
        : "memory");
    __syncthreads();
  } else {
    for (int i = tid; i < CH * K / 8; i += NTH) {
      const int r = i / (K / 8), col = (i % (K / 8)) * 8;
      piece<MODE>(su(sa + r * LD + col), a + base + (long)r * H * K + col);
      piece<MODE>(su(sb + r * LD + col), b + base + (long)r * H * K + col);
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
  }
  // Keep the tiles live: a thread sums a few elements, one float per CTA leaves.
  float s = 0.f;
  for (int i = tid; i < CH * K; i += 997) s += (float)sa[(i / K) * LD + i % K] + (float)sb[(i / K) * LD + i % K];
  if (s == 12345.f) out[c * H + h] = s;
}

template <int MODE>
void run(const char* name, const unsigned short* a, const unsigned short* b, float* out) {
  const int smem = 2 * CH * LD * 2 + 8192;  // ~43 KB, about wu's 44 KB: 5 CTAs per SM
  cudaFuncSetAttribute(probe<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  dim3 grid(T / CH, H);
  for (int i = 0; i < 3; ++i) probe<MODE><<<grid, NTH, smem>>>(a, b, out);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 30; ++i) {
    cudaEventRecord(e0);
    probe<MODE><<<grid, NTH, smem>>>(a, b, out);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t;
    cudaEventElapsedTime(&t, e0, e1);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double bytes = 2.0 * T * H * K * 2;
  const cudaError_t err = cudaGetLastError();
  printf("%-28s %8.4f ms  %7.1f GB/s  %s\n", name, ms[15], bytes / ms[15] / 1e6, cudaGetErrorString(err));
}

int main(int argc, char** argv) {
  const size_t n = (size_t)T * H * K;
  unsigned short *a, *b;
  float* out;
  cudaMalloc(&a, n * 2);
  cudaMalloc(&b, n * 2);
  cudaMalloc(&out, T / CH * H * 4);
  cudaMemset(a, 0, n * 2);
  cudaMemset(b, 0, n * 2);
  // 134 MB of operands against a 60 MB L2: back-to-back runs find most of them cold.
  const int only = argc > 1 ? atoi(argv[1]) : -1;
  if (only < 0 || only == 0) run<0>("ld.global.nc.v4", a, b, out);
  if (only < 0 || only == 1) run<1>("cp.async.cg L2::128B srcsz", a, b, out);
  if (only < 0 || only == 2) run<2>("cp.async.cg srcsz", a, b, out);
  if (only < 0 || only == 3) run<3>("cp.async.cg", a, b, out);
  if (only < 0 || only == 4) run<4>("cp.async.ca", a, b, out);
  if (only < 0 || only == 5) run<5>("cp.async.cg L2::256B", a, b, out);
  if (only < 0 || only == 6) run<6>("cp.async.bulk per row", a, b, out);
  cudaDeviceSynchronize();
  return 0;
}
