// Minimal CPU stand-ins for the CUDA features the emulated kernels use, so that their own source
// text (extracted by extract.py) runs on the host: one std::thread per CUDA thread, __syncthreads
// as a CTA barrier, and the warp-collective operations (shuffles, ldmatrix, mma.sync m16n8k16 bf16
// and m16n8k8 tf32) as exchanges through a per-warp table between two warp barriers. cp.async
// copies synchronously.
#pragma once
#include <barrier>
#include <condition_variable>
#include <mutex>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __noinline__
#define __global__
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct dim3e {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim;

inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
struct bf16 {
  uint16_t u;
};
typedef bf16 __nv_bfloat16;
struct __nv_bfloat162 {
  bf16 x, y;
};
inline bf16 __float2bfloat16(float f) {  // round to nearest even (no NaN inputs here)
  unsigned x = __float_as_uint(f);
  x += 0x7fffu + ((x >> 16) & 1u);
  return bf16{(uint16_t)(x >> 16)};
}
inline float __bfloat162float(bf16 b) { return __uint_as_float((unsigned)b.u << 16); }
// An output element as float, bf16 or f32 alike (the checks' NaN scans).
inline float as_float(bf16 b) { return __bfloat162float(b); }
inline float as_float(float x) { return x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16(a), __float2bfloat16(b)};
}
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline float __expf(float x) { return expf(x); }
struct float2 {
  float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct uint2 {
  unsigned x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

struct Warp {
  std::barrier<> bar{32};
  const void* addr[32];
  unsigned a[32][4], b[32][2];
  float s[32];
};
inline thread_local Warp* tw;
inline std::barrier<>* g_cta_bar;
inline char* g_smem;
inline size_t g_smem_size;

inline void __syncthreads() { g_cta_bar->arrive_and_wait(); }
// Named barriers (bar.sync / bar.arrive id, n): n arrivals complete a generation; bar_sync waits
// for the generation it arrived in to complete, bar_arrive does not wait. One set per CTA.
struct NamedBar {
  std::mutex m;
  std::condition_variable cv;
  int count = 0;
  unsigned gen = 0;
};
inline NamedBar* g_named;
inline unsigned named_arrive(int id, int n) {
  NamedBar& b = g_named[id];
  std::unique_lock l(b.m);
  const unsigned g0 = b.gen;
  if (++b.count == n) {
    b.count = 0;
    ++b.gen;
    b.cv.notify_all();
  }
  return g0;
}
inline void bar_arrive(int id, int n) { named_arrive(id, n); }
// setmaxnreg changes no value.
template <int N>
inline void regs_dec() {}
template <int N>
inline void regs_inc() {}
inline void bar_sync(int id, int n) {
  const unsigned g0 = named_arrive(id, n);
  NamedBar& b = g_named[id];
  std::unique_lock l(b.m);
  b.cv.wait(l, [&] { return b.gen != g0; });
}
inline void __syncwarp() { tw->bar.arrive_and_wait(); }
// The split pass's publish() (followed passes only; the emulations give it no counts).
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned x) { return __atomic_fetch_add(p, x, __ATOMIC_SEQ_CST); }
// A pass led by prep waits on its counts (lead_wait).
inline void wait_count(const unsigned* c, unsigned need) {
  while (__atomic_load_n(c, __ATOMIC_ACQUIRE) < need) std::this_thread::yield();
}
// A warp shuffle: every lane posts v and reads the lane src(lane) posted (its own v where src
// gives a lane outside the warp).
template <class F>
inline float shfl_from(float v, F src) {
  const int lane = threadIdx.x & 31, from = src(lane);
  tw->s[lane] = v;
  tw->bar.arrive_and_wait();
  const float r = from >= 0 && from < 32 ? tw->s[from] : v;
  tw->bar.arrive_and_wait();
  return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) {
  return shfl_from(v, [o](int l) { return l ^ o; });
}
inline unsigned __shfl_xor_sync(unsigned m, unsigned v, int o) {
  return std::bit_cast<unsigned>(__shfl_xor_sync(m, std::bit_cast<float>(v), o));
}
inline float __shfl_up_sync(unsigned, float v, int o) {
  return shfl_from(v, [o](int l) { return l - o; });
}
inline float __shfl_down_sync(unsigned, float v, int o) {
  return shfl_from(v, [o](int l) { return l + o; });
}

namespace dr {
constexpr int CH = 64;
constexpr int LD64 = 72;
constexpr int LF64 = 68;

// A shared-memory address as the kernels pass it in 32 bits: here the offset into g_smem.
inline unsigned smem_u32(const void* p) {
  assert((const char*)p >= g_smem && (const char*)p <= g_smem + g_smem_size);
  return (unsigned)((const char*)p - g_smem);
}
inline void cp16(void* s, const void* g, bool ok) {
  assert((char*)s >= g_smem && (char*)s + 16 <= g_smem + g_smem_size && ((uintptr_t)s & 15) == 0);
  if (ok)
    memcpy(s, g, 16);
  else
    memset(s, 0, 16);
}
inline void cp4(void* s, const void* g, bool ok) {
  assert((char*)s >= g_smem && (char*)s + 4 <= g_smem + g_smem_size && ((uintptr_t)s & 3) == 0);
  if (ok)
    memcpy(s, g, 4);
  else
    memset(s, 0, 4);
}
// VIA_L1 (.ca or .cg) changes no value.
template <bool VIA_L1 = false>
inline void cp16(unsigned s, const void* g, bool ok) {
  cp16(g_smem + s, g, ok);
}
inline void cp_commit() {}
template <int N>
inline void cp_wait() {}

inline unsigned pk(bf16 lo, bf16 hi) { return lo.u | ((unsigned)hi.u << 16); }
// Posts this lane's row address (16 bytes of shared memory) for ldmatrix / stmatrix.
inline void post_row(const void* p) {
  assert((const char*)p >= g_smem && (const char*)p + 16 <= g_smem + g_smem_size);
  assert(((uintptr_t)p & 15) == 0);
  tw->addr[threadIdx.x & 31] = p;
  tw->bar.arrive_and_wait();
}
// ldmatrix of n (2 or 4) 8x8 matrices: lanes 8i .. 8i + 7 give matrix i's rows.
inline void ldsm_impl(unsigned* r, const bf16* p, bool trans, int n = 4) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  post_row(p);
  for (int i = 0; i < n; ++i) {
    if (!trans) {
      const bf16* row = (const bf16*)tw->addr[8 * i + g];
      r[i] = pk(row[2 * q], row[2 * q + 1]);
    } else {
      const bf16* r0 = (const bf16*)tw->addr[8 * i + 2 * q];
      const bf16* r1 = (const bf16*)tw->addr[8 * i + 2 * q + 1];
      r[i] = pk(r0[g], r1[g]);
    }
  }
  tw->bar.arrive_and_wait();
}
// stmatrix.x4.trans: lane 8i + j posts row j's address of matrix i; each lane then writes its
// register i, elements (row g, columns 2q, 2q + 1) of matrix i, transposed: to rows 2q, 2q + 1,
// column g.
inline void stsm_x4_t(unsigned s, const unsigned* r) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  post_row(g_smem + s);
  for (int i = 0; i < 4; ++i) {
    ((bf16*)tw->addr[8 * i + 2 * q])[g] = bf16{(uint16_t)(r[i] & 0xffffu)};
    ((bf16*)tw->addr[8 * i + 2 * q + 1])[g] = bf16{(uint16_t)(r[i] >> 16)};
  }
  tw->bar.arrive_and_wait();
}
inline void ldsm_x4(unsigned* r, const bf16* p) { ldsm_impl(r, p, false); }
inline void ldsm_x4_t(unsigned* r, const bf16* p) { ldsm_impl(r, p, true); }
inline void ldsm_x4(unsigned* r, unsigned s) { ldsm_impl(r, (const bf16*)(g_smem + s), false); }
inline void ldsm_x4_t(unsigned* r, unsigned s) { ldsm_impl(r, (const bf16*)(g_smem + s), true); }
inline void ldsm_x2(unsigned* r, unsigned s) { ldsm_impl(r, (const bf16*)(g_smem + s), false, 2); }

inline float half_of(unsigned reg, int hi) {
  return __uint_as_float(hi ? (reg & 0xffff0000u) : (reg << 16));
}
// A warp's mma.sync: every lane posts its fragments, then computes its four accumulator
// elements D[g + 8 (e >> 1)][2q + (e & 1)] += Σ_k A(r, k) B(k, n) over KS k-steps in k order
// (f32), reading A and B out of the posted fragments through the accessors.
template <int KS, class FA, class FB>
inline void mma_exchange(float* d, const unsigned* a, unsigned b0, unsigned b1, FA A, FB B) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  for (int i = 0; i < 4; ++i) tw->a[lane][i] = a[i];
  tw->b[lane][0] = b0;
  tw->b[lane][1] = b1;
  tw->bar.arrive_and_wait();
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e >> 1), n = 2 * q + (e & 1);
    float s = d[e];
    for (int k = 0; k < KS; ++k) s += A(r, k) * B(k, n);
    d[e] = s;
  }
  tw->bar.arrive_and_wait();
}
// Element (r, k) of a warp's posted 16 × 16 bf16 A fragments (PTX layout): mma_bf16 and wgmma.
inline float posted_a_bf16(int r, int k) {
  return half_of(tw->a[(r & 7) * 4 + ((k & 7) >> 1)][(r >> 3) + 2 * (k >> 3)], k & 1);
}
// D = A B + D, m16n8k16 bf16 (PTX fragment layouts).
inline void mma_bf16(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  mma_exchange<16>(
      d, a, b0, b1, posted_a_bf16,
      [](int k, int n) { return half_of(tw->b[n * 4 + ((k & 7) >> 1)][k >> 3], k & 1); });
}

// cvt.rna.tf32.f32: nearest, ties away from zero, 10 mantissa bits (as the CPU mirror's tf()).
inline unsigned tf32_rna(float x) { return (__float_as_uint(x) + 0x1000u) & ~0x1fffu; }
// D = A B + D, m16n8k8 tf32 (PTX fragment layouts; the low 13 bits of each input are ignored).
inline void mma_tf32(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  mma_exchange<8>(
      d, a, b0, b1,
      [](int r, int k) {
        return __uint_as_float(tw->a[(r & 7) * 4 + (k & 3)][(r >> 3) + 2 * (k >> 2)] & ~0x1fffu);
      },
      [](int k, int n) { return __uint_as_float(tw->b[n * 4 + (k & 3)][k >> 2] & ~0x1fffu); });
}

// wgmma (warpgroup MMA) runs synchronously here: its fences, commits and waits change nothing.
// A warp's rows of D depend only on its own A fragments, so a warp's exchange serves.
inline void wg_fence() {}
inline void wg_commit() {}
inline void wg_wait_all() {}
inline void fence_async_smem() {}
// D[64 × 64] += A[64 × 16] B[16 × 64] for this warp's 16 rows, in mma_bf16's k order: B from
// g_smem through the descriptor (start, lbo, sbo in 16-byte units; no-swizzle core matrices of 8
// rows × 16 bytes), element (k, n) of a K-major B at k / 8 · lbo + n / 8 · sbo + (n % 8) · 16 +
// (k % 8) · 2 bytes, of an MN-major B with the roles of k % 8 and n % 8 swapped.
template <bool MN>
inline void wg_mma64(float (*d)[4], const unsigned* a, unsigned long long desc) {
  const unsigned start = (unsigned)(desc & 0x3FFFu) << 4,
                 lbo = (unsigned)((desc >> 16) & 0x3FFFu) << 4,
                 sbo = (unsigned)((desc >> 32) & 0x3FFFu) << 4;
  auto B = [&](int k, int n) {
    const unsigned off = start + (k / 8) * lbo + (n / 8) * sbo +
                         (MN ? (k % 8) * 16 + (n % 8) * 2 : (n % 8) * 16 + (k % 8) * 2);
    assert(off + 2 <= g_smem_size);
    return __bfloat162float(*(const bf16*)(g_smem + off));
  };
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  for (int i = 0; i < 4; ++i) tw->a[lane][i] = a[i];
  tw->bar.arrive_and_wait();
  for (int i = 0; i < 8; ++i)
    for (int e = 0; e < 4; ++e) {
      const int r = g + 8 * (e >> 1), n = 8 * i + 2 * q + (e & 1);
      float s = d[i][e];
      for (int k = 0; k < 16; ++k) s += posted_a_bf16(r, k) * B(k, n);
      d[i][e] = s;
    }
  tw->bar.arrive_and_wait();
}

#include "extracted.h"
}  // namespace dr

// The harness the emulations share.

// One emulation case of the chunk kernels: head sizes, heads and the packed sequences' lengths.
struct Case {
  int K, V, H;
  std::vector<int> seqlens;
};

// x rounded to bf16 (as a float).
inline float bfr(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Packed sequences: (first token, length) per chunk of 64 and each sequence's first chunk, as
// the host builds them.
struct Chunks {
  std::vector<int> ctab, seq_chunk{0};
  int T = 0, NC = 0;
};
inline Chunks make_chunks(const std::vector<int>& seqlens) {
  Chunks c;
  for (int L : seqlens) {
    for (int s = 0; s < L; s += dr::CH) {
      c.ctab.push_back(c.T + s);
      c.ctab.push_back(std::min(dr::CH, L - s));
    }
    c.T += L;
    c.seq_chunk.push_back((int)c.ctab.size() / 2);
  }
  c.NC = (int)c.ctab.size() / 2;
  return c;
}

// The host's segment tables (`seg_tables` in src/cuda/delta_rule.rs) of the chunks' sequence
// table cut every len chunks: first chunk of each segment [S + 1] (seg_chunk), first segment of
// each sequence [N + 1] (seq_seg).
struct Segments {
  std::vector<int> seg_chunk, seq_seg;
  unsigned count() const { return (unsigned)seg_chunk.size() - 1; }
};
inline Segments make_segments(const Chunks& c, int len) {
  Segments s;
  const int N = (int)c.seq_chunk.size() - 1;
  for (int n = 0; n < N; ++n) {
    s.seq_seg.push_back((int)s.seg_chunk.size());
    int ci = c.seq_chunk[n];
    do {
      s.seg_chunk.push_back(ci);
      ci += len;
    } while (ci < c.seq_chunk[n + 1]);
  }
  s.seq_seg.push_back((int)s.seg_chunk.size());
  s.seg_chunk.push_back(c.seq_chunk[N]);
  return s;
}

// n bf16 values s·u, u uniform in [−1, 1).
inline std::vector<bf16> rand_bf16(size_t n, std::mt19937& rng, float s = 1.f) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<bf16> v(n);
  for (auto& x : v) x = __float2bfloat16(s * u(rng));
  return v;
}

// The in-chunk cumulative log decay G, [T, H]: per chunk and head a running sum of −step, each
// step uniform in [lo, hi).
inline std::vector<float> make_gc(const Chunks& c, int H, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> step(lo, hi);
  std::vector<float> gc((size_t)c.T * H);
  for (int ci = 0; ci < c.NC; ++ci)
    for (int hh = 0; hh < H; ++hh) {
      float G = 0.f;
      for (int i = 0; i < c.ctab[2 * ci + 1]; ++i) {
        G -= step(rng);
        gc[(size_t)(c.ctab[2 * ci] + i) * H + hh] = G;
      }
    }
  return gc;
}
// The decay record that kernels 1 and 1b write beside gc (`write_rec`, RECW floats per chunk
// and head), formed here from gc with the same float operations.
inline std::vector<float> make_rec(const Chunks& c, const std::vector<float>& gc, int H) {
  std::vector<float> rec((size_t)c.NC * H * dr::RECW, 0.f);
  for (int ci = 0; ci < c.NC; ++ci)
    for (int hh = 0; hh < H; ++hh) {
      const int st = c.ctab[2 * ci], len = c.ctab[2 * ci + 1];
      float* r = rec.data() + ((size_t)ci * H + hh) * dr::RECW;
      const float gl = gc[(size_t)(st + len - 1) * H + hh];
      for (int t = 0; t < len; ++t) {
        const float G = gc[(size_t)(st + t) * H + hh];
        r[t] = __expf(gl - G);
        r[dr::REC_GAM + t] = __expf(G);
      }
      r[dr::REC_GL] = __expf(gl);
    }
  return rec;
}

// Runs `kernel` (a callable, called by every emulated thread) for each CTA of the grid, one at a
// time, with `nwarps` warps and the shared memory that layout L carves, poisoned with 0xff (bf16
// and f32 NaN) before each CTA. reverse_x runs blockIdx.x from last to first: the chunk-parallel
// kernels' neighbours would otherwise overwrite a stray write past a partial chunk.
template <class L, class F>
inline void run_grid(int nwarps, dim3e grid, bool reverse_x, F kernel) {
  dr::Carve cnt(nullptr);
  {
    L l;
    l.carve(cnt);
  }
  g_smem_size = cnt.off;
  g_smem = (char*)aligned_alloc(128, (g_smem_size + 127) / 128 * 128);
  const int nth = nwarps * 32;
  blockDim.x = nth;
  for (unsigned xi = 0; xi < grid.x; ++xi)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned z = 0; z < grid.z; ++z) {
        const unsigned x = reverse_x ? grid.x - 1 - xi : xi;
        memset(g_smem, 0xff, g_smem_size);
        std::barrier<> cta(nth);
        g_cta_bar = &cta;
        std::vector<NamedBar> named(16);
        g_named = named.data();
        std::vector<Warp> warps(nwarps);
        std::vector<std::thread> th;
        for (int t = 0; t < nth; ++t)
          th.emplace_back([&, t] {
            threadIdx.x = t;
            blockIdx.x = x;
            blockIdx.y = y;
            blockIdx.z = z;
            tw = &warps[t >> 5];
            kernel();
          });
        for (auto& x : th) x.join();
      }
  free(g_smem);
}
