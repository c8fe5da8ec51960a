// Gated delta rule on the GPU: chunked forward/backward (chunk C = 64, WY/UT transform) and a fused
// recurrent decode step. Math: docs gdn-spec §B; the CPU reference is src/ops/delta_rule/chunk.rs,
// whose notation this file follows (G in-chunk cumsum of g, γ = e^G, δ_i = e^{G_last − G_i},
// Γ_ij = e^{G_i − G_j}, M = strictLower(β KKᵀ ⊙ Γ), T = (I + M)^{-1}, W = T diag(βγ) K,
// U = T diag(β) V, Ṽ = U − W S, O = s[diag(γ) Q S + (QKᵀ ⊙ Γ ⊙ L) Ṽ],
// S' = γ_last S + (diag(δ) K)ᵀ Ṽ).
//
// Layouts: q,k [T,H,K], v,o [T,H,V] bf16; g,beta [T,H] f32; states [N,H,K,V] f32 (key-first).
// Varlen: `ctab` holds (first token, length) per chunk, chunks numbered globally in sequence
// order; `seq_chunk` [N+1] gives each sequence's first chunk. Rows of a partial chunk past the
// sequence end are zero-filled on load, get γ = δ = 0 and are never written.
//
// Matrix products: mma.sync m16n8k16 bf16 with f32 accumulators (m16n8k8 tf32 for the WY T-chain
// and, in 3xTF32, kernel 1's T solve) + ldmatrix, operands in registers (see the helpers before
// kernel 1). scripts/cuda_emu runs kernels 1, 1b, 2, 3, 5, 6 and 7 on the CPU, 1b against kernel
// 1, the others against a reference. Shared arrays are carved at 128-byte boundaries, bf16 row
// strides are multiples of 8 elements and f32 strides multiples of 4, so every ldmatrix row and
// 16-byte access is aligned.

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

namespace dr {

constexpr int CH = 64;     // chunk length
constexpr int LD64 = 72;   // bf16 row stride of a 64-wide tile
constexpr int LF64 = 68;   // f32 row stride of a 64-wide tile

// ------------------------------------------------------------------------------------------
// Small helpers

// Carves the dynamic shared memory into 128-byte aligned arrays. With base == nullptr it only
// counts, which is how dr_smem_sizes reports each kernel's requirement to the host.
struct Carve {
  char* base;
  unsigned off;
  __device__ explicit Carve(char* b) : base(b), off(0) {}
  template <class T>
  __device__ T* take(unsigned n) {
    off = (off + 127u) & ~127u;
    T* p = reinterpret_cast<T*>(base + off);
    off += n * (unsigned)sizeof(T);
    return p;
  }
};

__device__ __forceinline__ float b2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2b(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ uint4 pack8(const float* s) {
  __nv_bfloat162 a = __floats2bfloat162_rn(s[0], s[1]);
  __nv_bfloat162 b = __floats2bfloat162_rn(s[2], s[3]);
  __nv_bfloat162 c = __floats2bfloat162_rn(s[4], s[5]);
  __nv_bfloat162 d = __floats2bfloat162_rn(s[6], s[7]);
  uint4 u;
  u.x = *reinterpret_cast<unsigned*>(&a);
  u.y = *reinterpret_cast<unsigned*>(&b);
  u.z = *reinterpret_cast<unsigned*>(&c);
  u.w = *reinterpret_cast<unsigned*>(&d);
  return u;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}
// 16-byte async copy with L2 asked to fetch the whole 128-byte line (.L2::128B): measured on
// H200 (session 13, call 7), dq/dk + WY went 0.620 → 0.597 ms at B4·T4096·H16 and 0.932 → 0.825
// at B4·T4096·H6·K256·V512; the other kernels did not change.
// VIA_L1 picks .ca (through L1) over .cg (L1 bypassed). Alone on a kernel's access pattern
// (scripts/cp_async_probe.cu, session 14 call 1), .cg sends 2.6 L2 requests and 1.5× the sectors
// per 512 bytes a warp copies where .ca sends one request and exactly the sectors. In the
// kernels (calls 2–3) .ca made the K ≤ 128 state passes 2–3 % faster at B4·T4096·H16 and 8–11 %
// at B1·T16384 (its forward 0.744 → 0.703 ms), but dq/dk + WY 13 % slower, wu 8 %, fwd_o 3 %, and
// the K = 256 state passes 6–13 % slower, so only the K ≤ 128 state passes take it.
template <bool VIA_L1 = false>
__device__ __forceinline__ void cp16(unsigned s, const void* gmem, bool ok) {
  int n = ok ? 16 : 0;  // src-size 0: nothing is read, the 16 bytes are zero-filled
  if constexpr (VIA_L1)
    asm volatile("cp.async.ca.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(n));
  else
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(n));
}
__device__ __forceinline__ void cp16(void* smem, const void* gmem, bool ok) {
  cp16(smem_u32(smem), gmem, ok);
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A split pass followed by fwd_o running beside it (the host's `Follow`): the pass counts, per
// (chunk, head), its CTAs that have stored the chunk's h_c and Ṽ (publish); fwd_o CTAs take
// (chunk, head) items by ticket in the order the pass forms them and wait for each one's count.
// Prep leading the warp-specialised forward (the host's `Lead`) counts its items the same way.
// The release is cumulative: thread 0 fences after the CTA barrier that follows every warp's
// stores, as a grid-wide barrier does.
__device__ __forceinline__ void publish(unsigned* count) {
  __threadfence();
  atomicAdd(count, 1u);
}

// Waits until *count >= need. A producer that never comes (its CTAs could not all be resident:
// the host runs a waiting kernel only where its producer fits beside it) ends in a trap, a launch
// error, after some seconds, rather than a hang.
__device__ __forceinline__ void wait_count(const unsigned* count, unsigned need) {
  for (unsigned spins = 0;; ++spins) {
    unsigned x;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(x) : "l"(count) : "memory");
    if (x >= need) return;
    if (spins >= (1u << 25)) __trap();
    __nanosleep(128);
  }
}

// Prep leading the warp-specialised forward (the host's `Lead`, `dr_prep_led`) takes the items
// base + blockIdx.x of the pass's chunk order, item i being (chunk order[i / H], head i mod H), so
// that the chunks the pass needs first are formed first. Returns (chunk, head).
__device__ __forceinline__ int2 lead_item(const int* __restrict__ order, int base, int H) {
  const int i = base + blockIdx.x;
  return make_int2(order[i / H], i % H);
}
// ... and counts the item in done once the whole CTA has stored it.
__device__ __forceinline__ void lead_publish(unsigned* done, int2 item, int H) {
  __syncthreads();
  if (threadIdx.x == 0) publish(done + (long)item.x * H + item.y);
}

// A warp of the pass that prep leads (the warp-specialised forward's `LED` variant) reads a
// chunk's prep outputs only once prep has counted them. It waits for LEAD_BATCH chunks at once,
// c .. c + LEAD_BATCH − 1 (lane i acquires chunk c + i's count), where c − cs (its first chunk
// cs) is a multiple of LEAD_BATCH, so that it stalls on one round trip to L2 per batch rather than
// per chunk: a state step takes about 2 µs, an acquiring load under load a good part of one. No
// register is kept for it across the pass: the warp-specialised forward already has none to spare
// (a pointer and a counter kept across it made it spill 64 bytes, session 31).
constexpr int LEAD_BATCH = 8;
__device__ __forceinline__ void lead_wait(const unsigned* __restrict__ done, int c, int h, int H,
                                          int ce) {
  const int lane = threadIdx.x & 31, ci = c + lane;
  if (lane < LEAD_BATCH && ci < ce) wait_count(done + (long)ci * H + h, 1);
  __syncwarp();
}

// rows x cols bf16 tile (cols a multiple of 8) from global rows src + r*sld into dst (row stride
// dld); rows >= valid are zero-filled and not read. Two users keep this generic loop, where
// load_rows_async below measured worse: the fused state pass at K = 256 and the U loop of
// wu_products (see both); every other tile load is load_rows_async.
__device__ __forceinline__ void load_bf16_async(bf16* dst, int dld, const bf16* src, long sld,
                                                int rows, int cols, int valid) {
  const int per_row = cols >> 3;
  for (int idx = threadIdx.x; idx < rows * per_row; idx += blockDim.x) {
    const int r = idx / per_row, c = (idx - r * per_row) << 3;
    const bool ok = r < valid;
    cp16(dst + r * dld + c, ok ? (const void*)(src + r * sld + c) : (const void*)src, ok);
  }
}

// A tile of ROWS (64, a chunk, unless given) rows × COLS elements of T (bf16 or f32; 16-byte
// pieces) by a compile-time NTH threads, rows >= valid zero-filled and not read. The state passes
// issue one per operand every chunk step; the generic loop above (run-time thread count, index
// divisions, a branch per piece) made up about a fifth of their instructions. Here the loop is
// unrolled and a thread's pieces are fixed (rows r0 + i·RS, column c0: `Pieces`), so a piece
// costs an address add, a compare and the copy; `for_own_pieces` walks them in order of i (also
// for scale_own_rows).
template <int COLS, int NTH, class T, int ROWS = CH>
struct Pieces {
  static constexpr int EP = 16 / sizeof(T), PER_ROW = COLS / EP, RS = NTH / PER_ROW;
  static_assert(COLS % EP == 0 && NTH % PER_ROW == 0, "whole rows per pass");
  static constexpr int N = (ROWS + RS - 1) / RS;  // pieces per thread
  // t: the thread's index among the NTH (threadIdx.x unless a warp-specialised CTA gives a
  // group of its warps a tile of their own).
  static __device__ __forceinline__ int r0(int t) { return t / PER_ROW; }
  static __device__ __forceinline__ int c0(int t) { return (t % PER_ROW) * EP; }
};
template <int COLS, int NTH, class T, int ROWS = CH, class F>
__device__ __forceinline__ void for_own_pieces(F f, int t = threadIdx.x) {
  typedef Pieces<COLS, NTH, T, ROWS> P;
  const int r0 = P::r0(t), c0 = P::c0(t);
  if constexpr (P::N <= 8) {
#pragma unroll
    for (int i = 0; i < P::N; ++i)
      if (ROWS % P::RS == 0 || r0 + i * P::RS < ROWS) f(r0 + i * P::RS, c0);
  } else {
    // One or two warps at K >= 128: unrolled, the addresses spilled (state passes at 255
    // registers).
#pragma unroll 1
    for (int i = 0; i < P::N; ++i) f(r0 + i * P::RS, c0);
  }
}
// A compile-time int as a value (a column count passed through a generic lambda).
template <int N>
struct IntC {
  static constexpr int value = N;
};
// The source address advances by RS rows per piece: one 64-bit add, where forming
// src + r·sld afresh cost a 64-bit multiply and its carries per piece. A row past `valid` keeps
// its own address (past a partial chunk, possibly past the tensor): with src-size 0 cp.async
// reads nothing there, so no select is needed.
// The destination is one 32-bit shared address plus a per-piece constant (folded into the
// instruction), as for ldmatrix.
template <int COLS, int NTH, class T, bool VIA_L1 = false, int ROWS = CH>
__device__ __forceinline__ void load_rows_async(T* dst, int dld, const T* src, long sld,
                                                int valid, int t = threadIdx.x) {
  typedef Pieces<COLS, NTH, T, ROWS> P;
  const int r0 = P::r0(t);
  const T* s = src + r0 * sld + P::c0(t);
  const unsigned d0 = smem_u32(dst + r0 * dld + P::c0(t));
  const long step = P::RS * sld;
  for_own_pieces<COLS, NTH, T, ROWS>(
      [&](int r, int) {
        cp16<VIA_L1>(d0 + (unsigned)((r - r0) * dld * sizeof(T)), s, r < valid);
        s += step;
      },
      t);
}

// Named barriers (ids 1–15; 0 is __syncthreads), n threads in all (a multiple of 32). A
// producer's bar_arrive does not wait; its consumers' bar_sync completes the barrier and orders
// the producer's earlier shared-memory writes before their reads.
__device__ __forceinline__ void bar_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

// Registers handed between warpgroups (setmaxnreg, sm_90; every warp of the warpgroup runs it).
template <int N>
__device__ __forceinline__ void regs_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ------------------------------------------------------------------------------------------
// Raw tensor-core helpers (sm_80+ mma.sync and ldmatrix) for kernels that keep their operands in
// registers: lane (g, q) = (lane / 4, lane % 4) holds, of a 16x8 f32 accumulator tile,
// X[g][2q], X[g][2q+1], X[g+8][2q], X[g+8][2q+1]; of a 16x16 bf16 A tile the same positions of
// columns 0-7 (regs 0, 1) and 8-15 (regs 2, 3) -- so two adjacent accumulator tiles, rounded to
// bf16, are an A operand without any data movement; of a 16x8 B tile (k x n), B[2q][g],
// B[2q+1][g] (reg 0) and B[2q+8][g], B[2q+9][g] (reg 1). Lower column (or k) in the low half.

__device__ __forceinline__ unsigned pack_bf2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ float bf_lo(unsigned r) { return __uint_as_float(r << 16); }
// XOR with this negates both bf16 of a pair (exact: the sign bits).
constexpr unsigned NEG_BF2 = 0x80008000u;
__device__ __forceinline__ float bf_hi(unsigned r) { return __uint_as_float(r & 0xffff0000u); }

// D = A B + D, m16n8k16, bf16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Hopper's warpgroup MMA (wgmma, sm_90a; elsewhere the helpers trap, and the host launches no
// kernel that uses them there). The four warps of a warpgroup issue it together; warp w of the
// group holds rows 16w.. of the 64-row A (registers, as mma.sync's A fragment) and of D (as
// mma.sync's accumulator tiles, one per 8 columns), so the registers keep the mma.sync layout.
// B is read from shared memory once for the whole group, where each mma.sync warp reads its own
// copy by ldmatrix. B's tile is "no swizzle": core matrices of 8 rows × 16 bytes, `lbo` bytes
// apart along the product's k and `sbo` along n (session 25 checked this on the GPU for both
// majors).
__device__ __forceinline__ unsigned long long wg_desc(unsigned saddr, unsigned lbo,
                                                     unsigned sbo) {
  return (unsigned long long)((saddr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
         ((unsigned long long)(sbo >> 4) << 32);
}
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DR_WG_ASM(...) asm volatile(__VA_ARGS__)
#else
#define DR_WG_ASM(...) __trap()
#endif
// Orders the warpgroup's register writes (accumulators, A) before the wgmma that follow.
__device__ __forceinline__ void wg_fence() {
  DR_WG_ASM("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
  DR_WG_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_wait_all() {
  DR_WG_ASM("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// This thread's shared-memory writes made visible to the async proxy that wgmma reads B through;
// a barrier after it covers the reading threads.
__device__ __forceinline__ void fence_async_smem() {
  DR_WG_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// D[64 × 64] += A[64 × 16] B[16 × 64], bf16 in, f32 accumulators (d: this warp's 8 accumulator
// tiles of its 16 rows). MN: B stored MN-major (n contiguous in a core matrix's rows).
template <bool MN>
__device__ __forceinline__ void wg_mma64(float (*d)[4], const unsigned* a,
                                         unsigned long long desc) {
  DR_WG_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
            : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]),
              "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
              "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
              "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
              "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]),
              "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
              "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
              "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(MN ? 1 : 0), "r"(1));
}

// cvt.rna.tf32.f32 (nearest, ties away: what wmma::__float_to_tf32 does and the CPU mirror models),
// as the bits of an mma operand and as a float.
__device__ __forceinline__ unsigned tf32_rna(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float tf32r(float x) { return __uint_as_float(tf32_rna(x)); }

// D = A B + D, m16n8k8, tf32 inputs, f32 accumulators. Lane (g, q) holds A[g][q], A[g+8][q],
// A[g][q+4], A[g+8][q+4] (a0-a3), B[q][g], B[q+4][g] (b0, b1); D as for m16n8k16.
__device__ __forceinline__ void mma_tf32(float* d, const unsigned* a, unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x as a tf32 part and a tf32 remainder: big + small = x to about 2^-22 relative.
__device__ __forceinline__ void tf32_split(float x, unsigned& big, unsigned& small) {
  big = tf32_rna(x);
  small = tf32_rna(x - __uint_as_float(big));
}
// D += A B in 3xTF32 (about f32 accuracy on the tensor cores): each operand splits into big and
// small tf32 parts (`tf32_split`), and D accumulates a_s b_b, a_b b_s and a_b b_b (the a_s b_s
// term, about 2^-22 of the product, is dropped). A: 16 × 8KS f32, B: 8KS × 8 f32,
// both row-major in shared memory (row strides lda, ldb); D a 16x8 accumulator tile.
template <int KS>
__device__ __forceinline__ void mma3_tf32(float* d, const float* A, int lda, const float* B,
                                          int ldb) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    const float* a = A + g * lda + 8 * s + q;
    const float* b = B + (8 * s + q) * ldb + g;
    const float av[4] = {a[0], a[8 * lda], a[4], a[8 * lda + 4]}, bv[2] = {b[0], b[4 * ldb]};
    unsigned ab[4], as[4], bb[2], bs[2];
#pragma unroll
    for (int e = 0; e < 4; ++e) tf32_split(av[e], ab[e], as[e]);
#pragma unroll
    for (int e = 0; e < 2; ++e) tf32_split(bv[e], bb[e], bs[e]);
    mma_tf32(d, as, bb[0], bb[1]);
    mma_tf32(d, ab, bs[0], bs[1]);
    mma_tf32(d, ab, bb[0], bb[1]);
  }
}
// A 16x8 accumulator tile times sc, stored as f32 rows of Y (row stride ld).
__device__ __forceinline__ void store_acc_f32(const float* x, float* y, int ld, float sc) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  *reinterpret_cast<float2*>(y + g * ld + 2 * q) = make_float2(sc * x[0], sc * x[1]);
  *reinterpret_cast<float2*>(y + (g + 8) * ld + 2 * q) = make_float2(sc * x[2], sc * x[3]);
}

// Four 8x8 bf16 matrices from shared memory; lanes 8i..8i+7 give the 16-byte rows of matrix i.
// Without .trans lane (g, q) gets row g, columns 2q, 2q+1 of each; with .trans, rows 2q, 2q+1 of
// column g. From a 32-bit shared-memory address: a loop that adds compile-time offsets to one
// such base gets them folded into the instruction ([R + imm]); from generic pointers ptxas
// formed many of the addresses afresh (an IMAD or two per ldmatrix in the state passes'
// transposed loads).
__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned s) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void ldsm_x2(unsigned* r, unsigned s) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, unsigned s) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4(unsigned* r, const bf16* p) { ldsm_x4(r, smem_u32(p)); }
__device__ __forceinline__ void ldsm_x4_t(unsigned* r, const bf16* p) {
  ldsm_x4_t(r, smem_u32(p));
}

// A warp's NJ accumulator tiles of an f32 state (the state passes' layout: element (j, e) is
// row 8j + 2q + (e & 1), column g + 8 (e >> 1) of the warp's block) to dst, row stride ld, or
// with TR the transpose (column stride ld): the final states and the segments' transitions.
template <int NJ, bool TR = false>
__device__ __forceinline__ void store_state(const float (*x)[4], float* dst, long ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const long r = 8 * j + 2 * q + (e & 1), c = g + 8 * (e >> 1);
      dst[TR ? c * ld + r : r * ld + c] = x[j][e];
    }
}

// One warp's 16x8 accumulator tile x stored transposed as bf16, Y[c][r] = X[r][c] with Y
// row-major (row stride ld): lanes g and g^1 swap one value of each row pair so that every lane
// stores two adjacent r of one column (4-byte stores). Column c is written only where ok(c);
// every lane of the warp must call this.
template <class Ok>
__device__ __forceinline__ void store_tile_t(const float* x, bf16* y, long ld, Ok ok) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3, odd = g & 1;
  const float s0 = __shfl_xor_sync(0xffffffffu, odd ? x[0] : x[1], 4);
  const float s1 = __shfl_xor_sync(0xffffffffu, odd ? x[2] : x[3], 4);
  const int c = 2 * q + odd, r = g - odd;
  if (ok(c)) {
    *reinterpret_cast<unsigned*>(y + c * ld + r) = pack_bf2(odd ? s0 : x[0], odd ? x[1] : s0);
    *reinterpret_cast<unsigned*>(y + c * ld + r + 8) = pack_bf2(odd ? s1 : x[2], odd ? x[3] : s1);
  }
}

// stmatrix.x4.trans: four 8×8 bf16 matrices, lane 8i + j giving the address of row j of matrix i;
// this lane's register i holds matrix i in the accumulator-pair layout (row lane / 4, columns
// 2 (lane % 4) and + 1), stored transposed (that row becomes a column).
__device__ __forceinline__ void stsm_x4_t(unsigned s, const unsigned* r) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(s),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// One warp's NT (even, ≤ 8) accumulator tiles transposed as bf16 into rows [0, 8 NT) × 16
// columns of `stage` by stmatrix.trans: row r, column block cb (8 elements) at element
// r · rowe + cb · cbe. Padded rows (rowe = the row stride, cbe = 8): the first half of
// store_tiles_staged (below). wgmma's no-swizzle core matrices (rowe = 8, cbe = the column
// blocks' stride): the warp-specialised forward's hand-off of h_c and Ṽ to its output warps, an
// MN-major B operand with lbo = 128 bytes and sbo = 2 cbe bytes; each 8 × 8 matrix is then one
// 128-byte run, so no bank is met twice.
template <int NT>
__device__ __forceinline__ void stage_tiles_t(const float (*x)[4], bf16* stage, int rowe,
                                              int cbe) {
  static_assert(NT % 2 == 0 && NT <= 8, "pairs of tiles, one 64-row stage");
  const int lane = threadIdx.x & 31, i = lane >> 3, j = lane & 7;
  const unsigned st0 = smem_u32(stage + (8 * (i >> 1) + j) * rowe + (i & 1) * cbe);
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    unsigned r[4];
#pragma unroll
    for (int m = 0; m < 4; ++m)
      r[m] = pack_bf2(x[2 * np + (m >> 1)][2 * (m & 1)], x[2 * np + (m >> 1)][2 * (m & 1) + 1]);
    stsm_x4_t(st0 + 2 * 16 * np * rowe, r);
  }
}

// One warp's NT (even, ≤ 8) 16×8 accumulator tiles x[nt] (rows g, g + 8: 16 columns of Y;
// columns 8nt + 2q + {0, 1}: rows of Y) stored transposed as bf16 rows [0, 8 NT) of Y (row
// stride ld), only rows < valid, through `stage`: this warp's own 8 NT × 16 bf16 of shared
// memory (row stride sld elements, rows 16-byte aligned). stmatrix.trans writes the stage, then
// each row leaves as two 16-byte stores, whole 32-byte sectors: store_tile_t's shuffles and
// selects are gone and its 4-byte stores filled half sectors.
// BATCH: every piece is read from the stage before any is stored. y is a generic pointer that
// might alias the stage, so in the load-store loop each shared load waits behind the previous
// global store: at K = 256 that was a quarter of the split pass's stall samples (session 19,
// call 4), and batching made the K = 256 split pass and recompute 1.4 % (B4) to 3.4 % (B8)
// faster. At K = 128 it made the recompute 1.7 % and the reverse pass 1 % slower (call 6), so
// the other callers keep the loop.
template <int NT, bool BATCH = false>
__device__ __forceinline__ void store_tiles_staged(const float (*x)[4], bf16* stage, int sld,
                                                   bf16* y, long ld, int valid) {
  const int lane = threadIdx.x & 31;
  __syncwarp();  // the stage's earlier readers are done
  stage_tiles_t<NT>(x, stage, sld, 8);
  __syncwarp();
  // Lane: row lane / 2 + 16 it, half lane % 2; one pointer advanced by 16 rows per piece.
  const int row0 = lane >> 1, half = lane & 1;
  bf16* yp = y + row0 * ld + 8 * half;
  const bf16* sp = stage + row0 * sld + 8 * half;
  auto piece_at = [&](int it) { return *reinterpret_cast<const uint4*>(sp + 16 * it * sld); };
  uint4 piece[NT / 2];
  if constexpr (BATCH) {
#pragma unroll
    for (int it = 0; it < NT / 2; ++it) piece[it] = piece_at(it);
  }
#pragma unroll
  for (int it = 0; it < NT / 2; ++it) {
    if (row0 + 16 * it < valid) *reinterpret_cast<uint4*>(yp) = BATCH ? piece[it] : piece_at(it);
    yp += 16 * ld;
  }
}

// One warp's 8 accumulator tiles x[nt] (rows g, g + 8: the 16 columns of Y; columns 8nt + 2q +
// {0, 1}: rows of Y) from bf16 rows [0, 64) of Y (16 columns, row stride ld elements, rows
// 16-byte aligned) by ldmatrix.trans: the inverse of store_tiles_staged<8>.
__device__ __forceinline__ void load_tiles_t(float (*x)[4], const bf16* y, int ld) {
  const int lane = threadIdx.x & 31, lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  const unsigned y0 = smem_u32(y + (8 * lm_hi + lr) * ld + 8 * lm_lo);
#pragma unroll
  for (int np = 0; np < 4; ++np) {
    unsigned r[4];
    ldsm_x4_t(r, y0 + 2 * 16 * np * ld);
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      x[2 * np + (m >> 1)][2 * (m & 1)] = bf_lo(r[m]);
      x[2 * np + (m >> 1)][2 * (m & 1) + 1] = bf_hi(r[m]);
    }
  }
}

// ------------------------------------------------------------------------------------------
// The A operand of p_frags read as it goes: the warp's rows [16 rb, +16) of x ([64][K + 8] bf16),
// k-step kk, by ldmatrix (matrices (rows +0, k +0), (+8, +0), (+0, +8), (+8, +8)).
template <int K>
__device__ __forceinline__ auto rows_from(const bf16* x, int rb) {
  const int lane = threadIdx.x & 31, lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  const bf16* p = x + (16 * rb + 8 * lm_lo + lr) * (K + 8) + 8 * lm_hi;
  return [p](int kk, unsigned (&a)[4]) { ldsm_x4(a, p + 16 * kk); };
}

// The A operand of p_frags from fragments already in registers (row_frags).
__device__ __forceinline__ auto frags_in(const unsigned (*fa)[4]) {
  return [fa](int kk, unsigned (&a)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) a[e] = fa[kk][e];
  };
}

// A warp's rows [16 rb, +16) of x ([64][K + 8] bf16) as A fragments (k-step kk).
template <int K>
__device__ __forceinline__ void row_frags(unsigned (*fa)[4], const bf16* x, int rb) {
  const auto at = rows_from<K>(x, rb);
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) at(kk, fa[kk]);
}

// One warp's rows [16 rb, +16) of P = s (QKᵀ ⊙ Γ ⊙ L), zero at rows ≥ len, as bf16 A fragments:
// pa[ks] is columns [16 ks, +16), zero for ks > rb (P is zero above the diagonal block). qa(kk, a)
// gives the warp's Q rows as the A fragment of k-step kk (rows_from, frags_in); ks: K's 64 rows
// (row stride K + 8); G: the chunk's in-chunk cumulative gates. Kernel 3, the fused pass (through
// p_rows) and the warp-specialised forward's output warps.
// TR: rows [16 rb, +16) of Pᵀ instead (qa: K's rows, ks: Q's), zero at columns ≥ len and below
// the diagonal block (pa[ks] zero for ks < rb): kernel 4 and the warp-specialised reverse pass's
// dṼ_loc warps, which thus need no P in shared memory.
template <int K, bool TR = false, class QA>
__device__ __forceinline__ void p_frags(QA qa, const bf16* ks, const float* G, int rb, int len,
                                        float scale, unsigned (*pa)[4]) {
  constexpr int LD = K + 8;
  const int lane = threadIdx.x & 31, i0 = 16 * rb + (lane >> 2), qd = lane & 3;
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  float acc[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    unsigned a[4];
    qa(kk, a);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      if (TR ? np < rb : np > rb) continue;
      unsigned r[4];  // B = rows 16 np.. of ks (k-dimension: features 16 kk..)
      ldsm_x4(r, ks + (8 * (2 * np + lm_hi) + lr) * LD + 16 * kk + 8 * lm_lo);
      mma_bf16(acc[2 * np], a, r[0], r[1]);
      mma_bf16(acc[2 * np + 1], a, r[2], r[3]);
    }
  }
  const float gr[2] = {G[i0], G[i0 + 8]};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    // (Skipping the wholly masked tiles made the warp-specialised reverse pass 3 % slower, 0.311
    // → 0.321 ms at B4·T4096·H16, and kernel 3 1 % slower: session 16, calls 6–7.)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float x[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        // P's (query i, key j) at this fragment position.
        const int r = i0 + 8 * hf, c = 8 * nt + 2 * qd + e, i = TR ? c : r, j = TR ? r : c;
        const float d = TR ? __expf(G[c] - gr[hf]) : __expf(gr[hf] - G[c]);
        x[e] = (j <= i && i < len) ? scale * acc[nt][2 * hf + e] * d : 0.f;
      }
      pa[nt >> 1][2 * (nt & 1) + hf] = pack_bf2(x[0], x[1]);
    }
  }
}

// Kernel 1: per (chunk, head): G = in-chunk cumsum of g (written to gc), T = (I+M)^{-1}
// (optionally written to tmat as f32 [NC,H,64,64]), W = T diag(βγ) K and U = T diag(β) V (bf16),
// and, when pm is not null (K <= 128 only), the chunk's P = s (QKᵀ ⊙ Γ ⊙ L) as bf16 [NC,H,64,64]
// (p_frags' values; zero above the diagonal and at rows >= len) for the warp-specialised forward's
// output warps.
// 256 threads. The forward saves T when its caller keeps it for the backward, which then runs
// kernel 1b (W, U and G from the saved T, no solve) instead of this kernel.
//
// β is folded into T (branch beta-t): W = bf16(T diag(βγ)) · K and U = bf16(strictLower(T)
// diag(β)) · V + diag(β) V, the scales applied to T in f32 before its one rounding, so K and V
// enter the tensor cores as loaded (exact bf16); U's diagonal term β_i v_i is added to the f32
// accumulator in the epilogue (rounding β_i inside T would perturb every element of row i the
// same way). v4 rounded diag(βγ) K and diag(β) V to bf16 (a second rounding on the value path,
// the largest single contributor to the dg error of the gate parameters: docs/perf.md,
// "Gradient precision through dg") and rescaled them in place in shared memory (a pass over K
// and one per V slice, each with a barrier; both are gone).
//
// Layout (60.75 KB at K = 128 with Q's rows for P, 3 CTAs/SM; 44.75 KB at K = 64; 59.75 KB at
// K = 256, which forms no P): M and T share one f32 array (M is formed from the KKᵀ accumulators,
// `kk_m_lower` or `kk_m_p_rows`; T is solved in place over it, `prep_impl`, its partial
// products in the tb array, dead until the T pass); the V slices go to the dead T
// array and, after the W product, the dead K array, so slice s + 1 is loaded while slice s is
// multiplied (the first is loaded during the W product). G by a shuffle scan on warp 0; the
// T → bf16 pass is vectorised (8 elements per thread and step). bf16(T diag(βγ)) for the W
// product is kept compact (its 10 lower 16x16 tiles, row stride 24) in the tail of the dead T
// array, behind V slice 0. Session 13 moved the T solve and the M formation onto the tensor
// cores: 0.203 → 0.158 ms at B4·T4096·H16 (docs/perf.md, "Session 13").

// q and k under GVA (FLA's num_v_heads): the H heads of every other tensor are value heads, and
// q and k have H / VG heads, value head h reading head h / VG (VG = 1 without GVA). QkHead is
// where that head's rows are, in elements, formed once per CTA: two 32-bit registers, and the
// state passes' chunk steps do no division (with the divisions in the steps, the B1·T16384
// forward was 3 % slower; with a pointer and a 64-bit stride per tensor, K = 256 passes spilled).
struct QkHead {
  int off, ld;  // head h / VG's offset within a token's row, and the token stride (H / VG)·K
  __device__ __forceinline__ long at(long t) const { return t * ld + off; }
};
template <int K>
__device__ __forceinline__ QkHead qk_head(int h, int H, int VG) {
  return {h / VG * K, H / VG * K};
}

// Kernels 1 and 1b: G (the in-chunk cumsum of g, also written to gc), γ = e^G and β of one chunk
// into shared memory, rows >= len zero. Warp 0 scans g (lane l holds rows 2l, 2l+1), warps 1–2
// load β; the caller's barrier publishes them.
// The decay record of a chunk and head, f32 [NC, H, RECW], written by kernels 1 and 1b (write_rec)
// for the state passes: δ_t = exp(G_last − G_t) at [0, 64), γ_last = exp(G_last) at REC_GL (then
// three zeros), γ_t = exp(G_t) at [REC_GAM, +64); zero at t ≥ len. The state passes formed
// these with an exp, a subtraction and a mask per element on every one of their warps, about a
// sixth of the forward pass's instructions per chunk step; the values are the same bits (the
// same __expf of the same floats). The forward pass loads the first REC_FWD floats, the reverse
// pass all of them, as 16-byte pieces.
constexpr int REC_GL = 64, REC_GAM = 68, RECW = REC_GAM + CH, REC_FWD = REC_GAM;

// One warp writes the decay record of a chunk (length len ≥ 1) from chunk_gates' G and γ in
// shared memory (after the barrier that publishes them).
__device__ __forceinline__ void write_rec(const float* G, const float* gam, int len,
                                          float* __restrict__ rec) {
  const int lane = threadIdx.x & 31, r0 = 2 * lane, r1 = r0 + 1;
  const float gl = G[len - 1];
  reinterpret_cast<float2*>(rec)[lane] =
      make_float2(r0 < len ? __expf(gl - G[r0]) : 0.f, r1 < len ? __expf(gl - G[r1]) : 0.f);
  reinterpret_cast<float2*>(rec + REC_GAM)[lane] = make_float2(gam[r0], gam[r1]);
  if (lane == 0) *reinterpret_cast<float4*>(rec + REC_GL) = make_float4(__expf(gl), 0.f, 0.f, 0.f);
}

__device__ __forceinline__ void chunk_gates(const float* __restrict__ g,
                                            const float* __restrict__ beta, int start, int len,
                                            int h, int H, float* G, float* gam, float* bs,
                                            float* __restrict__ gc) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (warp == 0) {
    const int r0 = 2 * lane, r1 = r0 + 1;
    const float g0 = r0 < len ? g[(long)(start + r0) * H + h] : 0.f;
    const float g1 = r1 < len ? g[(long)(start + r1) * H + h] : 0.f;
    float s = g0 + g1;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float t = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += t;
    }
    float ex = __shfl_up_sync(0xffffffffu, s, 1);
    if (lane == 0) ex = 0.f;
    const float e0 = ex + g0, e1 = e0 + g1;
    G[r0] = r0 < len ? e0 : 0.f;
    G[r1] = r1 < len ? e1 : 0.f;
    gam[r0] = r0 < len ? __expf(e0) : 0.f;
    gam[r1] = r1 < len ? __expf(e1) : 0.f;
    if (r0 < len) gc[(long)(start + r0) * H + h] = e0;
    if (r1 < len) gc[(long)(start + r1) * H + h] = e1;
  } else if (warp <= 2) {
    const int r = tid - 32;
    bs[r] = r < len ? beta[(long)(start + r) * H + h] : 0.f;
  }
}

// The bf16 operands of the W and U products, formed from T (f32) in one place for kernels 1 and
// 1b, so that both round the same values the same way: row i, columns c..c+7 (c a multiple of 8,
// so the 8 lie in one 16x16 block) of
// - tb = bf16(strictLower(T) diag(β)), from x = T's values, 0 in blocks above the diagonal;
// - tw = bf16(T diag(βγ)), lower blocks only (x is read only there);
// with b, g = β, γ of columns c..c+7 (`ld8_swz`).
// tw is kept compact: lower tile (ti, kk) at (ti(ti+1)/2 + kk)·TWSZ, row stride TWLD.
constexpr int TWLD = 24, TWSZ = 16 * TWLD;
__device__ __forceinline__ uint4 tb_piece(const float* x, int i, int c, const float* b) {
  float y[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) y[e] = (c + e == i) ? 0.f : x[e] * b[e];
  return pack8(y);
}
__device__ __forceinline__ uint4 tw_piece(const float* x, int i, int c, const float* b,
                                          const float* g) {
  float y[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) y[e] = ((c + e) >> 4) > (i >> 4) ? 0.f : x[e] * (b[e] * g[e]);
  return pack8(y);
}

// Columns c..c+7 (c a multiple of 8) of an f32 row in shared memory, as two 16-byte loads, the
// half at c + 4·((c >> 5) & 1) first. The pieces of T, β and γ are read 8 threads per row (c =
// 0, 8, .., 56): in natural order threads c and c + 32 meet in the same banks (2-way; 4-way
// across the 4 rows a warp covers at T's row stride of 68 words). ncu on prep (session 12, call
// 6): these reads and the tw stores were 4.7 M of its 35.5 M shared-memory wavefronts too many.
__device__ __forceinline__ void ld8_swz(const float* row, int c, float (&x)[8]) {
  const bool h = (c >> 5) & 1;
  const float4 a = *reinterpret_cast<const float4*>(row + c + (h ? 4 : 0));
  const float4 b = *reinterpret_cast<const float4*>(row + c + (h ? 0 : 4));
  const float4 lo = h ? b : a, hi = h ? a : b;
  x[0] = lo.x, x[1] = lo.y, x[2] = lo.z, x[3] = lo.w;
  x[4] = hi.x, x[5] = hi.y, x[6] = hi.z, x[7] = hi.w;
}
// Where tw's row i, columns c..c+7 go (only for c <= i's block: (c >> 4) <= (i >> 4)).
__device__ __forceinline__ bf16* tw_at(bf16* tw, int i, int c) {
  const int ti = i >> 4, kk = c >> 4;
  return tw + (ti * (ti + 1) / 2 + kk) * TWSZ + (i & 15) * TWLD + (c & 15);
}

// The four 32-bit words x[0..3] of each lane of a quad (lanes 4g .. 4g+3) transposed across the
// quad: lane q ends with word q of each lane, x[j] = (lane j's word q). Two exchanges (lanes q^1,
// then q^2), each keeping the words bound for this lane's half and sending the others.
__device__ __forceinline__ void quad_transpose(unsigned (&x)[4]) {
  const int q = threadIdx.x & 3;
  const bool b0 = q & 1, b1 = q & 2;
  // Words n0 = q & 1 and n0 + 2 stay; the partner q^1 sends its words of those indices.
  const unsigned o0 = b0 ? x[1] : x[0], o1 = b0 ? x[3] : x[2];
  const unsigned r0 = __shfl_xor_sync(0xffffffffu, b0 ? x[0] : x[1], 1);
  const unsigned r1 = __shfl_xor_sync(0xffffffffu, b0 ? x[2] : x[3], 1);
  // Index q is kept (from this lane and q^1); index q^2 goes to lane q^2, which sends back its
  // and q^3's words of index q.
  const unsigned k_own = b1 ? o1 : o0, k_par = b1 ? r1 : r0;
  const unsigned t_own = __shfl_xor_sync(0xffffffffu, b1 ? o0 : o1, 2);
  const unsigned t_par = __shfl_xor_sync(0xffffffffu, b1 ? r0 : r1, 2);
  // x[j] comes from lane j = q ^ d: d = 0 k_own, 1 k_par, 2 t_own, 3 t_par.
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const bool d0 = ((j & 1) != 0) != b0, d1 = ((j & 2) != 0) != b1;
    x[j] = d1 ? (d0 ? t_par : t_own) : (d0 ? k_par : k_own);
  }
}

// A warp's 16-row accumulator tile of 8·NT columns (NT = 2 or 4; acc[nt] in the mma C layout)
// stored as bf16 to rows dst(r) (r = 0..15 of the tile, each a pointer to the tile's first
// column; rows with !ok(r) are skipped). A quad transpose gives each lane 8 contiguous columns,
// so each warp store writes whole 32-byte sectors, where 4-byte stores straight from the fragment
// fill half of each (ncu, session 12: 16 of 32 bytes per stored sector in fwd_o). Measured
// (call 4, B4·T4096·H16 / B8·T4096·H6·K256): fwd_o 0.148 → 0.144 / 0.488 → 0.470 ms, dvloc
// 0.102 → 0.100 / 0.229 → 0.221; in kernels 1 and 1b (W, U) slower: they use pair_store.
template <int NT, class Dst, class Ok>
__device__ __forceinline__ void store_rows16(const float (*acc)[4], Dst dst, Ok ok) {
  static_assert(NT == 2 || NT == 4, "16 or 32 columns");
  const int lane = threadIdx.x & 31, gr = lane >> 2, q = lane & 3;
#pragma unroll
  for (int p = 0; p < NT / 2; ++p) {
    // Word n: NT = 4, columns 8n.. of row gr + 8p; NT = 2, columns 8(n & 1).. of row gr + 8(n >> 1).
    unsigned x[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const int nt = NT == 4 ? n : (n & 1), hf = NT == 4 ? p : (n >> 1);
      x[n] = pack_bf2(acc[nt][2 * hf], acc[nt][2 * hf + 1]);
    }
    quad_transpose(x);
    const int r = gr + 8 * (NT == 4 ? p : (q >> 1)), c = 8 * (NT == 4 ? q : (q & 1));
    if (ok(r)) *reinterpret_cast<uint4*>(dst(r) + c) = make_uint4(x[0], x[1], x[2], x[3]);
  }
}

// One row of two adjacent 8-column accumulator tiles A, B (mma C layout) stored as bf16 to
// dst[0, 16) in one 8-byte store a lane: xa, xb are this lane's packed columns 2q, 2q+1 of A and
// of B. One shuffle within the quad gives lane q four contiguous columns (q even: A's [2q, 2q+4);
// odd: B's [2q−2, 2q+2)), so the quad writes the row's 32 bytes, a whole sector, where 4-byte
// stores straight from the fragment fill half a sector each. Every lane of the warp must call it
// (the shuffle); ok masks the store only.
__device__ __forceinline__ void pair_store(bf16* dst, bool ok, unsigned xa, unsigned xb) {
  const int q = threadIdx.x & 3;
  const bool odd = q & 1;
  const unsigned got = __shfl_xor_sync(0xffffffffu, odd ? xa : xb, 1);
  if (ok)
    *reinterpret_cast<uint2*>(dst + 2 * (q & 2) + 8 * (q & 1)) =
        odd ? make_uint2(got, xb) : make_uint2(xa, got);
}

// A warp's two accumulator rows i0 and i0 + 8 (NT tiles of 8 columns, NT even) of a gradient
// stored as bf16 by pair_store: row t of the chunk at dst + (start + t)·ld, rows >= len not
// written. The kernels' dq, dk and dv leave this way (session 19: in f32 they were a third of
// dq/dk + WY's bytes).
template <int NT>
__device__ __forceinline__ void store_grad_rows(const float (*acc)[4], bf16* dst, int ld,
                                                int start, int i0, int len) {
  static_assert(NT % 2 == 0, "tiles in pairs");
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = i0 + 8 * hf;
    bf16* row = dst + (long)(start + i) * ld;
#pragma unroll
    for (int m = 0; m < NT / 2; ++m)
      pair_store(row + 16 * m, i < len, pack_bf2(acc[2 * m][2 * hf], acc[2 * m][2 * hf + 1]),
                 pack_bf2(acc[2 * m + 1][2 * hf], acc[2 * m + 1][2 * hf + 1]));
  }
}

// Kernels 1 and 1b: W = tw · K and U = tb · V + diag(β) V by raw mma.sync, written to global
// (rows < len), W negated: its only readers, the state passes, use −W (Ṽ = U + S(−W),
// dS += (−W)ᵀ dṼ), and a sign flip of the stored bf16 is exact where negating their register
// operands cost an FADD per element of the state in every chunk step. Shared operands: ks, K's 64
// rows (row stride K + 8), which becomes V slice buffer 1 after the W product; vb0, V slice buffer
// 0 ([64][72]), whose load (V columns 0–63) is the latest committed cp.async group or complete; tw
// and tb (tb_piece, tw_piece) and bs, all published by a barrier. One code for both kernels: the
// same products in the same order, so kernel 1b's W and U are kernel 1's bit for bit.
template <int K>
__device__ __forceinline__ void wu_products(bf16* ks, bf16* vb0, const bf16* tw, const bf16* tb,
                                            const float* bs, const bf16* __restrict__ vsrc,
                                            int start, int len, int h, int H, int V,
                                            bf16* __restrict__ w, bf16* __restrict__ u) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nslice = V / 64;
  // W and U by raw mma.sync (the helpers before kernel 1), accumulators written to global from
  // registers.
  // Warp w forms row blocks p = w / 4 and 3 − p (T is lower triangular: p + 1 and 4 − p products,
  // 5 per warp) of a quarter of the columns.
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  const int gr = lane >> 2, qd = lane & 3;
  // W = (T diag(βγ)) · K, at most 32 columns per pass (K = 256: two; 32 accumulator registers
  // spilled at 4 CTAs per SM).
  {
    constexpr int NT = K / 32 > 4 ? 4 : K / 32;  // n8 tiles per pass
    for (int pass = 0; pass < K / (32 * NT); ++pass) {
      const int c0 = (warp & 3) * (K / 4) + pass * 8 * NT;
      for (int half = 0; half < 2; ++half) {
        const int ti = half ? 3 - (warp >> 2) : (warp >> 2);
        float acc[NT][4] = {};
        for (int kk = 0; kk <= ti; ++kk) {
          unsigned a[4];
          ldsm_x4(a, tw + (ti * (ti + 1) / 2 + kk) * TWSZ + (8 * lm_lo + lr) * TWLD + 8 * lm_hi);
#pragma unroll
          for (int jp = 0; jp < NT / 2; ++jp) {
            unsigned r[4];
            ldsm_x4_t(r, ks + (16 * kk + 8 * lm_lo + lr) * (K + 8) + c0 + 16 * jp + 8 * lm_hi);
            mma_bf16(acc[2 * jp], a, r[0], r[1]);
            mma_bf16(acc[2 * jp + 1], a, r[2], r[3]);
          }
        }
        // Whole sectors by pair_store (the quad transpose of store_rows16 made kernels 1 and 1b
        // slower: session 12, call 4, prep 0.205 → 0.230 ms, wu 0.118 → 0.139 at B4·T4096·H16).
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = ti * 16 + gr + 8 * hf;
          bf16* dst = w + ((long)(start + row) * H + h) * K + c0;
#pragma unroll
          for (int m = 0; m < NT / 2; ++m)
            pair_store(dst + 16 * m, row < len,
                       pack_bf2(acc[2 * m][2 * hf], acc[2 * m][2 * hf + 1]) ^ NEG_BF2,
                       pack_bf2(acc[2 * m + 1][2 * hf], acc[2 * m + 1][2 * hf + 1]) ^ NEG_BF2);
        }
      }
    }
  }
  __syncthreads();  // K is dead: it becomes V slice buffer 1
  if (nslice > 1) {
    load_rows_async<64, 256>(ks, LD64, vsrc + 64, (long)H * V, len);
    cp_commit();
  }

  // U = (T diag(β)) · V = tb · V + diag(β) V, 64 columns at a time (16 per warp); slice s + 1 is
  // in flight while s is multiplied. Groups pending at slice s: V_s and, when it exists, V_{s+1}.
  const int c0 = 16 * (warp & 3);
  for (int s = 0; s < nslice; ++s) {
    bf16* vs = (s & 1) ? ks : vb0;
    if (s + 1 < nslice)
      cp_wait<1>();
    else
      cp_wait<0>();
    __syncthreads();
    for (int half = 0; half < 2; ++half) {
      const int ti = half ? 3 - (warp >> 2) : (warp >> 2);
      float acc[2][4] = {};
      for (int kk = 0; kk <= ti; ++kk) {
        unsigned a[4], r[4];
        ldsm_x4(a, tb + (ti * 16 + 8 * lm_lo + lr) * LD64 + 16 * kk + 8 * lm_hi);
        ldsm_x4_t(r, vs + (16 * kk + 8 * lm_lo + lr) * LD64 + c0 + 8 * lm_hi);
        mma_bf16(acc[0], a, r[0], r[1]);
        mma_bf16(acc[1], a, r[2], r[3]);
      }
      // + diag(β) V in f32: T's unit diagonal, kept out of tb (β_i would be rounded to bf16 there).
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = ti * 16 + gr + 8 * hf;
        // Rows ≥ len: bs is 0 there and vs zero-filled, so the values are finite; not stored.
        const float bb = bs[row];
        unsigned y[2];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const unsigned x =
              *reinterpret_cast<const unsigned*>(vs + row * LD64 + c0 + 8 * nt + 2 * qd);
          y[nt] = pack_bf2(acc[nt][2 * hf] + bb * bf_lo(x), acc[nt][2 * hf + 1] + bb * bf_hi(x));
        }
        pair_store(u + ((long)(start + row) * H + h) * V + s * 64 + c0, row < len, y[0], y[1]);
      }
    }
    if (s + 2 < nslice) {
      __syncthreads();  // every warp is done with this buffer
      // The generic loop: as load_rows_async, its addresses live beside the U accumulators and
      // wu (48-register cap) spilled at K = 128, 0.116 → 0.120 ms (session 17, call 3).
      load_bf16_async(vs, LD64, vsrc + (s + 2) * 64, (long)H * V, CH, 64, len);
      cp_commit();
    }
  }
}

// Row stride of kernel 1's f32 scratch for the T solve's partial products (their B-fragment
// loads, row q and column g of lane (g, q), then hit 32 distinct banks: 40 ≡ 8 mod 32).
constexpr int ZLD = 40;

// Kernel 1's M_ij from the KKᵀ accumulator x: β_i x e^(G_i − G_j) for j < i < len, else 0.
__device__ __forceinline__ float m_elem(float x, float bi, float gi, const float* G, int i, int j,
                                       int len) {
  return (j < i && i < len) ? bi * x * __expf(gi - G[j]) : 0.f;
}

// Kernel 1's M = β_i (k_i · k_j) e^(G_i − G_j) (j < i < len; 0 elsewhere) on the 10 lower 16x16
// tiles, f32 into M (row stride LF64), formed from the mma accumulators where they are: KKᵀ by
// mma.sync from ldmatrix (ks: K's rows, stride K + 8). Tiles above the diagonal are not written
// (nothing reads them: the T solve skips them and the T pass masks them). One tile per warp at a
// time; kk_m_p_rows forms M beside P. Until session 13 wmma stored KKᵀ and a second pass over
// shared memory, after a barrier, read it back to form M (ncu, session 12, call 6: 4.8 M of
// prep's 35.5 M shared wavefronts and 5 % of its stall samples).
template <int K>
__device__ __forceinline__ void kk_m_lower(const bf16* ks, const float* G, const float* bs,
                                           int len, float* M) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4, g = lane >> 2, q = lane & 3;
  for (int t = warp; t < 10; t += blockDim.x >> 5) {
    // Lower tile t, row by row: (0,0) (1,0) (1,1) (2,0) (2,1) (2,2) (3,0) ...
    const int ti = t < 1 ? 0 : t < 3 ? 1 : t < 6 ? 2 : 3, tj = t - ti * (ti + 1) / 2;
    const unsigned a0 = smem_u32(ks + (16 * ti + 8 * lm_lo + lr) * (K + 8) + 8 * lm_hi);
    const unsigned b0 = smem_u32(ks + (16 * tj + 8 * lm_hi + lr) * (K + 8) + 8 * lm_lo);
    float acc[2][4] = {};
#pragma unroll 4
    for (int kk = 0; kk < K / 16; ++kk) {
      unsigned a[4], b[4];
      ldsm_x4(a, a0 + 32 * kk);
      ldsm_x4(b, b0 + 32 * kk);
      mma_bf16(acc[0], a, b[0], b[1]);
      mma_bf16(acc[1], a, b[2], b[3]);
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = 16 * ti + g + 8 * hf;
      const float bi = bs[i], gi = G[i];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int j = 16 * tj + 8 * nt + 2 * q;
        float m[2];
#pragma unroll
        for (int e = 0; e < 2; ++e)
          m[e] = m_elem(acc[nt][2 * hf + e], bi, gi, G, i, j + e, len);
        *reinterpret_cast<float2*>(M + i * LF64 + j) = make_float2(m[0], m[1]);
      }
    }
  }
}

// Kernel 1's M as kk_m_lower forms it and P = s (q_i · k_j) e^(G_i − G_j) (j <= i < len; 0
// elsewhere) as bf16 into pm (the chunk's [64][64] block, every element), both from the mma
// accumulators where they are (ks, qs: K's and Q's rows, stride K + 8). 8 warps: warp w takes the
// row block rb = w & 3 and, of every tile j <= rb, the 8 columns 16 j + 8 nh (nh = w >> 2); per
// k-step it loads its A fragments (K's rows, and Q's) once and each tile's B fragment (K's rows
// 16 j + 8 nh ..) by one ldmatrix.x2 that both products share. M's and P's values are those of
// a whole-tile product in the same k order, and P's are p_frags' bits (the same epilogue
// expression), so the warp-specialised forward's output is kernel 3's. (P formed by p_frags
// beside kk_m_lower cost prep 56 µs at B4·T4096·H16·K128, this way 43: session 20, calls 2–4.
// Without P, kk_m_lower's whole tiles spread over all warps measured 5 % faster at K = 256.)
template <int K>
__device__ __forceinline__ void kk_m_p_rows(const bf16* ks, const bf16* qs, const float* G,
                                          const float* bs, int len, float scale, float* M,
                                          bf16* pm) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rb = warp & 3, nh = warp >> 2;
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4, g = lane >> 2, q = lane & 3;
  const int arow = (16 * rb + 8 * lm_lo + lr) * (K + 8) + 8 * lm_hi;
  const unsigned ak = smem_u32(ks + arow);
  const unsigned aq = smem_u32(qs + arow);
  // ldmatrix.x2 takes lanes 0–15's addresses (rows 8 nh + lr of the tile, k + 8 lm_lo); lanes
  // 16–31 repeat them.
  const unsigned b0 = smem_u32(ks + (8 * nh + lr) * (K + 8) + 8 * lm_lo);
  float mk[4][4] = {}, mp[4][4] = {};
#pragma unroll 4
  for (int kk = 0; kk < K / 16; ++kk) {
    unsigned a[4], aqf[4];
    ldsm_x4(a, ak + 32 * kk);
    ldsm_x4(aqf, aq + 32 * kk);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j > rb) continue;
      unsigned b[2];
      ldsm_x2(b, b0 + 2 * 16 * j * (K + 8) + 32 * kk);
      mma_bf16(mk[j], a, b[0], b[1]);
      mma_bf16(mp[j], aqf, b[0], b[1]);
    }
  }
  bf16* prow = pm + (16 * rb + g) * CH + 8 * nh + 2 * q;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = 16 * rb + g + 8 * hf;
    const float bi = bs[i], gi = G[i];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = 16 * j + 8 * nh + 2 * q;
      float m[2], x[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        // P's e^(G_i − G_j), as p_frags forms it (columns past the diagonal block: masked).
        const float d = j <= rb ? __expf(gi - G[c + e]) : 0.f;
        m[e] = m_elem(mk[j][2 * hf + e], bi, gi, G, i, c + e, len);
        x[e] = (c + e <= i && i < len) ? scale * mp[j][2 * hf + e] * d : 0.f;
      }
      if (j <= rb) *reinterpret_cast<float2*>(M + i * LF64 + c) = make_float2(m[0], m[1]);
      *reinterpret_cast<unsigned*>(prow + 8 * hf * CH + 16 * j) = pack_bf2(x[0], x[1]);
    }
  }
}

// WITH_Q: Q's rows share the last region with tb: Q is dead once P is formed (kk_m_p_rows),
// before tb's first use (the T solve's scratch). A launch without P, whose shared memory the host
// sizes for tb alone, never touches the rest: 4 CTAs per SM at K = 128 either way (with Q's rows
// in a region of their own, prep forming P ran 3).
template <int K, bool WITH_Q = (K <= 128)>
struct PrepSm {
  bf16* ks;     // [64][K+8]  K rows; after the W product: V slice buffer 1
  float* A;     // [64][68]   KKᵀ, then M, then T in place (f32); after tb: V slice buffer 0
                //            ([64][72] bf16) and tw (T diag(βγ), 10 tiles [16][24] bf16)
  float* G;     // [64]
  float* bs;    // [64]
  float* gam;   // [64]
  bf16* qs;     // [64][K+8]  Q rows, for P (K <= 128, where the warp-specialised forward is)
  bf16* tb;     // [64][72]   strictLower(T) diag(β), in Q's place
  __device__ void carve(Carve& c) {
    constexpr int QN = CH * (K + 8), TN = CH * LD64;
    ks = c.take<bf16>(CH * (K + 8));
    A = c.take<float>(CH * LF64);
    G = c.take<float>(CH);
    bs = c.take<float>(CH);
    gam = c.take<float>(CH);
    tb = c.take<bf16>(WITH_Q && QN > TN ? QN : TN);
    qs = WITH_Q ? tb : nullptr;
  }
};

template <int K>
__device__ void prep_impl(const bf16* __restrict__ k, const bf16* __restrict__ v,
                          const float* __restrict__ g, const float* __restrict__ beta,
                          const bf16* __restrict__ q, const int* __restrict__ ctab, int H, int VG,
                          int V, float scale, float* __restrict__ gc, float* __restrict__ rec,
                          bf16* __restrict__ w, bf16* __restrict__ u, float* __restrict__ tmat,
                          bf16* __restrict__ pm, float* __restrict__ pflag, int cg, int h) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  PrepSm<K> S;
  S.carve(cv);
  static_assert(K + 8 >= LD64 && CH * LF64 * 4 >= CH * LD64 * 2, "V slices must fit");
  static_assert(CH * LD64 * 2 + 10 * TWSZ * 2 <= CH * LF64 * 4, "tw must fit behind V slice 0");
  static_assert(CH * CH / 8 == 2 * 256, "the T pass assumes 256 threads, 2 steps each");
  const QkHead qh = qk_head<K>(h, H, VG);
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x;
  // Whether this call formed P, for the reverse pass that reads it with the saved T.
  if (pflag && cg == 0 && h == 0 && tid == 0) *pflag = K <= 128 && pm ? 1.f : 0.f;

  load_rows_async<K, 256>(S.ks, K + 8, k + qh.at(start), qh.ld, len);
  if (K <= 128 && pm)
    load_rows_async<K, 256>(S.qs, K + 8, q + qh.at(start), qh.ld, len);
  cp_commit();
  chunk_gates(g, beta, start, len, h, H, S.G, S.gam, S.bs, gc);
  cp_wait<0>();
  __syncthreads();
  if (tid < 32) write_rec(S.G, S.gam, len, rec + ((long)cg * H + h) * RECW);

  if (K <= 128 && pm)
    kk_m_p_rows<K>(S.ks, S.qs, S.G, S.bs, len, scale, S.A, pm + ((long)cg * H + h) * (CH * CH));
  else
    kk_m_lower<K>(S.ks, S.G, S.bs, len, S.A);
  __syncthreads();

  // T = (I + M)^{-1} in f32, by 16x16 blocks, in place over M, as a recursive doubling of the
  // blocked inverse (T of [[A, 0], [C, B]] is [[A⁻¹, 0], [−B⁻¹ C A⁻¹, B⁻¹]]), the products on the
  // tensor cores in 3xTF32 (`mma3_tf32`):
  // 1. diagonal blocks: T_bb = (I + M_bb)^{-1} by forward substitution, 64 threads (block b,
  //    column c; warp 0 holds blocks 0 and 1, warp 1 blocks 2 and 3), 16-long chains in
  //    registers, written over M_bb after a __syncwarp;
  // 2. 32x32 diagonal blocks, by the warp that solved their two halves (no CTA barrier):
  //    T_10 = −T_11 (M_10 T_00) (warp 0) and T_32 = −T_33 (M_32 T_22) (warp 1);
  // 3. the 32x32 block below: Z = M_[2:4,0:2] T_[0:2,0:2], then T_[2:4,0:2] = −T_[2:4,2:4] Z,
  //    one 16x8 tile of each per warp.
  // Three barriers where the FMA solve by block rows had seven, and the products' shared-memory
  // reads are fragment loads (ncu, session 12, call 6: the FMA solve was 9.1 M of prep's 35.5 M
  // shared-memory wavefronts and its barriers the largest stall). The partial products live in
  // the tb array, dead until the T pass below.
  float* scratch = reinterpret_cast<float*>(S.tb);
  static_assert(CH * LD64 * 2 >= 4 * (32 * ZLD), "Z and the pair scratch fit in tb");
  if (tid < CH) {
    const int bb = tid >> 4, c = tid & 15;
    float* Ab = S.A + (16 * bb) * LF64 + 16 * bb;
    float t[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float acc = (r == c) ? 1.f : 0.f;
#pragma unroll
      for (int j = 0; j < r; ++j) acc -= Ab[r * LF64 + j] * t[j];
      t[r] = acc;
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 16; ++r) Ab[r * LF64 + c] = t[r];
    __syncwarp();
    // Step 2: warp p (0 or 1) forms T_(2p+1, 2p); its X = M T_cc goes through its own 16x16
    // stretch of scratch (C layout out, B layout in).
    const int p = tid >> 5, r0 = 32 * p + 16, c0 = 32 * p;
    float* xs = scratch + p * (16 * ZLD);
    float x[2][4] = {};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
      mma3_tf32<2>(x[nt], S.A + r0 * LF64 + c0, LF64, S.A + c0 * LF64 + c0 + 8 * nt, LF64);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) store_acc_f32(x[nt], xs + 8 * nt, ZLD, 1.f);
    __syncwarp();
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      float y[4] = {};
      mma3_tf32<2>(y, S.A + r0 * LF64 + r0, LF64, xs + 8 * nt, ZLD);
      store_acc_f32(y, S.A + r0 * LF64 + c0 + 8 * nt, LF64, -1.f);
    }
  }
  __syncthreads();
  {
    // Step 3: warp w forms rows 32 + 16 (w >> 2) .. + 15, columns 8 (w & 3) .. + 7 of Z and then
    // of T. Zero blocks are skipped: T_01 (Z's columns 16–31 take k from 16) and T_23 (T's row
    // block 2 takes k from 32 to 47 only).
    const int warp = tid >> 5, m = warp >> 2, nt = warp & 3, kz = nt >= 2 ? 16 : 0;
    const int rz = 16 * m;
    float z[4] = {};
    if (kz == 0)
      mma3_tf32<4>(z, S.A + (32 + rz) * LF64, LF64, S.A + 8 * nt, LF64);
    else
      mma3_tf32<2>(z, S.A + (32 + rz) * LF64 + 16, LF64, S.A + 16 * LF64 + 8 * nt, LF64);
    store_acc_f32(z, scratch + rz * ZLD + 8 * nt, ZLD, 1.f);
    __syncthreads();
    float y[4] = {};
    if (m == 0)
      mma3_tf32<2>(y, S.A + 32 * LF64 + 32, LF64, scratch + 8 * nt, ZLD);
    else
      mma3_tf32<4>(y, S.A + 48 * LF64 + 32, LF64, scratch + 8 * nt, ZLD);
    store_acc_f32(y, S.A + (32 + rz) * LF64 + 8 * nt, LF64, -1.f);
  }
  __syncthreads();
  {
    // T (f32) to tmat and tb = bf16(strictLower(T) diag(β)), 8 columns per thread and step;
    // blocks above the diagonal are 0. The unit diagonal is applied in f32 by the U epilogue.
    float* tg = tmat ? tmat + ((long)cg * H + h) * (CH * CH) : nullptr;
    bf16* tw = reinterpret_cast<bf16*>(S.A) + CH * LD64;  // behind V slice 0 (9216 bytes)
    const bf16* vsrc = v + ((long)start * H + h) * V;
    for (int idx = tid; idx < CH * CH / 8; idx += blockDim.x) {
      const int i = idx >> 3, c = (idx & 7) << 3;
      float x[8], b[8];
      ld8_swz(S.A + i * LF64, c, x);
      ld8_swz(S.bs, c, b);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = ((c + e) >> 4) > (i >> 4) ? 0.f : x[e];
      if (tg) {
        *reinterpret_cast<float4*>(tg + i * CH + c) = make_float4(x[0], x[1], x[2], x[3]);
        *reinterpret_cast<float4*>(tg + i * CH + c + 4) = make_float4(x[4], x[5], x[6], x[7]);
      }
      *reinterpret_cast<uint4*>(S.tb + i * LD64 + c) = tb_piece(x, i, c, b);
    }
    // tw = bf16(T diag(βγ)), lower tiles only, 2 steps of 8 columns per thread. tw overwrites T
    // rows 33–62: each thread holds its packed values in registers across the barrier, then
    // stores them while V slice 0 (into rows 0–33) is in flight. (tw formed in the same pass as
    // tb and tmat took prep to 60–61 registers (ptxas, sm_90a); as a second pass, T read twice
    // from shared memory, prep needs 43.)
    uint4 pw[2];
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int idx = tid + it * 256, i = idx >> 3, c = (idx & 7) << 3;
      float x[8], b[8], g[8];
      ld8_swz(S.A + i * LF64, c, x);
      ld8_swz(S.bs, c, b);
      ld8_swz(S.gam, c, g);
      pw[it] = tw_piece(x, i, c, b, g);
    }
    __syncthreads();  // T (f32) is dead: V slice 0 and tw take its place
    load_rows_async<64, 256>(reinterpret_cast<bf16*>(S.A), LD64, vsrc, (long)H * V, len);
    cp_commit();
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int idx = tid + it * 256, i = idx >> 3, c = (idx & 7) << 3;
      if ((c >> 4) <= (i >> 4)) *reinterpret_cast<uint4*>(tw_at(tw, i, c)) = pw[it];
    }
  }
  __syncthreads();

  wu_products<K>(S.ks, reinterpret_cast<bf16*>(S.A),
                 reinterpret_cast<const bf16*>(S.A) + CH * LD64, S.tb, S.bs,
                 v + ((long)start * H + h) * V, start, len, h, H, V, w, u);
}

// ------------------------------------------------------------------------------------------
// Kernel 1b (`wu`): the backward's W and U from the T that kernel 1 saved in the forward (tmat,
// f32 [NC,H,64,64], blocks above the diagonal 0), per (chunk, head), 256 threads: G (to gc), γ,
// β, then tb and tw from T and the products of kernel 1 (wu_products), so W, U and gc are
// kernel 1's bit for bit and the T solve (the expensive part of kernel 1) is not redone. FLA's
// backward does the same (recompute_w_u from the forward's A).
//
// Per CTA: K and V slice 0 by cp.async (two groups, in flight while T is read and converted);
// each thread reads its 2 × 8 elements of T (float4 pairs, only the 10 lower 16x16 blocks: 10 KB
// of the 16 KB per chunk and head) straight into registers, since T is needed only as bf16.
// Shared memory at K = 64 / 128 / 256: 36096 / 44288 / 60672 bytes (kernel 1: 39680 / 47872 /
// 64256). Registers (ptxas -v through NVRTC, sm_90a): 56 at K = 128, no spills (kernel 1: 54),
// so 4 CTAs per SM by registers; per CTA 74 KB of traffic at K = V = 128 (K, V, 10 KB of T read;
// W, U written), against kernel 1's 64 KB plus the T solve.

template <int K>
struct WuSm {
  // CTAs per SM the registers are capped for: wu is short and memory-bound, and at 56 registers
  // (K = 128) only 4 of its 44 KB CTAs fit where shared memory allows 5.
  static constexpr int MINB = K <= 128 ? 5 : 3;
  bf16* ks;   // [64][K+8]  K rows; after the W product: V slice buffer 1
  bf16* vb;   // [64][72]   V slice buffer 0
  bf16* tw;   // 10 tiles [16][24]: bf16(T diag(βγ)), lower tiles
  bf16* tb;   // [64][72]   bf16(strictLower(T) diag(β))
  float* G;   // [64]
  float* bs;  // [64]
  float* gam; // [64]
  __device__ void carve(Carve& c) {
    ks = c.take<bf16>(CH * (K + 8));
    vb = c.take<bf16>(CH * LD64);
    tw = c.take<bf16>(10 * TWSZ);
    tb = c.take<bf16>(CH * LD64);
    G = c.take<float>(CH);
    bs = c.take<float>(CH);
    gam = c.take<float>(CH);
  }
};

template <int K>
__device__ void wu_impl(const bf16* __restrict__ k, const bf16* __restrict__ v,
                        const float* __restrict__ g, const float* __restrict__ beta,
                        const float* __restrict__ tmat, const int* __restrict__ ctab, int H, int VG,
                        int V, float* __restrict__ gc, float* __restrict__ rec,
                        bf16* __restrict__ w, bf16* __restrict__ u) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  WuSm<K> S;
  S.carve(cv);
  static_assert(K + 8 >= LD64, "V slice 1 must fit in K's buffer");
  static_assert(CH * CH / 8 == 2 * 256, "the T pass assumes 256 threads, 2 steps each");
  const int cg = blockIdx.x, h = blockIdx.y;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x;
  const bf16* vsrc = v + ((long)start * H + h) * V;

  load_rows_async<K, 256>(S.ks, K + 8, k + qh.at(start), qh.ld, len);
  cp_commit();
  load_rows_async<64, 256>(S.vb, LD64, vsrc, (long)H * V, len);
  cp_commit();
  // This thread's pieces of T (row i, columns c..c+7, step it), read before the gates so that
  // the loads are in flight during the scan; pieces above the diagonal blocks are 0 (not read).
  const float* tg = tmat + ((long)cg * H + h) * (CH * CH);
  float x[2][8];
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int idx = tid + it * 256, i = idx >> 3, c = (idx & 7) << 3;
    if ((c >> 4) > (i >> 4)) {
#pragma unroll
      for (int e = 0; e < 8; ++e) x[it][e] = 0.f;
    } else {
      const float4 a = *reinterpret_cast<const float4*>(tg + i * CH + c);
      const float4 b = *reinterpret_cast<const float4*>(tg + i * CH + c + 4);
      x[it][0] = a.x, x[it][1] = a.y, x[it][2] = a.z, x[it][3] = a.w;
      x[it][4] = b.x, x[it][5] = b.y, x[it][6] = b.z, x[it][7] = b.w;
    }
  }
  chunk_gates(g, beta, start, len, h, H, S.G, S.gam, S.bs, gc);
  __syncthreads();  // β, γ
  if (tid < 32) write_rec(S.G, S.gam, len, rec + ((long)cg * H + h) * RECW);
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int idx = tid + it * 256, i = idx >> 3, c = (idx & 7) << 3;
    float b[8], g[8];
    ld8_swz(S.bs, c, b);
    ld8_swz(S.gam, c, g);
    if ((c >> 4) <= (i >> 4))
      *reinterpret_cast<uint4*>(tw_at(S.tw, i, c)) = tw_piece(x[it], i, c, b, g);
    *reinterpret_cast<uint4*>(S.tb + i * LD64 + c) = tb_piece(x[it], i, c, b);
  }
  cp_wait<1>();  // K (V slice 0 may still be in flight)
  __syncthreads();
  wu_products<K>(S.ks, S.vb, S.tw, S.tb, S.bs, vsrc, start, len, h, H, V, w, u);
}

// ------------------------------------------------------------------------------------------
// Kernel 2: the state pass per (sequence, head, tile of 16·NWC columns of V), NWC warps.
// v5: each warp keeps the transposed state rows of its 16 value columns, Sᵀ [16 × K] f32, in
// registers as K/8 accumulator tiles, and does all of a chunk's products itself:
//   Ṽᵀ = Uᵀ − Sᵀ Wᵀ  (A = Sᵀ rounded to bf16 straight from the accumulators, B = W by ldmatrix),
//   Sᵀ ← γ_last Sᵀ + (diag(δ) Ṽ)ᵀ K  (A = the Ṽᵀ accumulators scaled and rounded, B = K by
//   ldmatrix.trans).
// No cross-warp reduction: the CTA shares only the W, K, U and G tiles, double-buffered
// (cp.async, one group per chunk). Measured with K single-buffered and issued at the end of the
// step, a CTA's step took 3.6 µs at K = 128 however few CTAs ran.
// MODE_FUSED, the forward fused with the output (instead of MODE_SPLIT + kernel 3): per chunk also
//   Oᵀ = diag-scaled Sᵀ Qᵀ (column t times s γ_t)  +  Ṽᵀ Pᵀ,  P = s (QKᵀ ⊙ Γ ⊙ L) (bf16),
// with A = Sᵀ and the bf16 Ṽᵀ from registers; P is formed once per CTA (warps 0–3, a 16-row
// block each) into shared memory. h_c and Ṽ never leave the SM: the backward recomputes them.
// Q has one buffer: it is dead after P and Sᵀ Qᵀ, so the next chunk's group (with Q) is issued
// after the second barrier, ahead of the Ṽ, output and update products.
// MODE_SPLIT (the forward for kernel 3; also the backward's recompute of h_c and Ṽ): h_c and Ṽ to
// global, staged (`store_tiles_staged`) unsplit and with store_tile_t under a K split (their
// global layouts are the transposes of what a warp holds). Until session 7 the recompute was a
// mode of its own that also read dh_c (f32) for the ⟨h_c, dh_c⟩ term of dG; kernel 6 forms that
// term now, from the bf16 h_c and f32 dh_c it loads anyway.
// K split (KS = 2, 4; KS = 1 is the above): few long sequences give too few CTAs to hide a
// warp's ~2,000-instruction step, so KS warps share a 16-column group, warp (kp, cw) holding
// state rows [kp K/KS, (kp+1) K/KS): each forms its partial −Sᵀ_kp W_kpᵀ (slice 0 adds Uᵀ) and,
// fused, Sᵀ_kp Q_kpᵀ, writes them to shared memory and, after one more barrier (fused: the one that
// publishes P, which then also guards Q), sums the KS partials in slice order; the update, h_c,
// h0/ht are per slice; Ṽ and O stores, and fused the Sᵀ Qᵀ sums and Ṽᵀ Pᵀ products, are split
// among the slices by column pairs (`owns`).

// The chunks of one sequence, [cs, ce) in the chunk table: 64 tokens each from the sequence's
// first token, the last one partial (set_seqlens builds ctab so). The state passes' sequential
// loops take (start, len) of a chunk from here instead of a ctab row per step: in the reverse
// pass the per-step ctab loads drew 7 % of the warp stall samples (Nsight Compute, session 14
// call 6).
struct SeqChunks {
  int cs, bos, eos;
  __device__ SeqChunks(const int* ctab, int cs_, int ce) : cs(cs_), bos(0), eos(0) {
    if (cs_ < ce) {
      bos = ctab[2 * cs_];
      eos = ctab[2 * (ce - 1)] + ctab[2 * (ce - 1) + 1];
    }
  }
  __device__ __forceinline__ int start(int c) const { return bos + CH * (c - cs); }
  __device__ __forceinline__ int len(int c) const {
    const int r = eos - start(c);
    return r < CH ? r : CH;
  }
};

// 4-byte async copy (cp.async.ca); ok == false zero-fills without reading.
__device__ __forceinline__ void cp4(void* smem, const void* gmem, bool ok) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = ok ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}

constexpr int MODE_FUSED = 0, MODE_SPLIT = 1, MODE_WS = 2;
// The state passes' per-chunk tiles come through L1 (cp16's VIA_L1) at K <= 128 only, where it
// was measured faster (session 14, call 2); at K = 256 it was slower.
// The items (chunk order[i / H], head i mod H), i < items, by ticket (ticket[0]); each once its
// count in done reaches need; body(chunk, head) with the whole CTA.
template <class F>
__device__ __forceinline__ void follow(const int* __restrict__ order, int items, int H,
                                       unsigned* ticket, const unsigned* done, unsigned need,
                                       F body) {
  __shared__ int item;
  for (;;) {
    __syncthreads();  // the last item's shared memory is free, and so is `item`
    if (threadIdx.x == 0) {
      const int i = (int)atomicAdd(ticket, 1u);
      if (i < items) wait_count(done + (long)order[i / H] * H + i % H, need);
      item = i;
    }
    __syncthreads();
    const int i = item;
    if (i >= items) return;
    body(order[i / H], i % H);
  }
}

template <int K> constexpr bool STATE_VIA_L1 = K <= 128;

template <int K, int NWC, int MODE, int KS = 1>
struct StateFwdSm {
  // NW: the state warps (the warp-specialised forward adds NWO output warps behind them).
  static constexpr int NW = NWC * KS, BVC = 16 * NWC, WLD = K + 8, ULD = BVC + 8;
  // Warp-specialised: NWO output warps in two groups of NWG; a hand-off barrier joins the state
  // warps and one group.
  static constexpr int NWO = MODE == MODE_WS ? 8 : 0, NWG = NWO / 2, HANDOFF = 32 * (NW + NWG);
  static constexpr int W_SZ = CH * WLD, U_SZ = CH * ULD;
  // K split: one [16 × 64] f32 partial per warp (Ṽᵀ; fused also Sᵀ Qᵀ) in accumulator order.
  static constexpr int PART = 16 * CH, NPART = MODE == MODE_FUSED ? 2 : 1;
  static constexpr int RED_SZ = KS > 1 ? NPART * NW * PART : 0;
  bf16* w;     // 2 x [64][WLD]
  bf16* k;     // 2 x [64][WLD]
  bf16* u;     // 2 x [64][ULD]
  float* R;    // 2 x [REC_FWD]: δ_t, γ_last (the decay record)
  float* G;    // fused: 2 x [64]; warp-specialised: 2 x [64], an output group's chunk each
  bf16* q;     // forward: [64][WLD]; warp-specialised: 2 x (one per output group)
  bf16* pb;    // fused: [64][LD64]  P, bf16
  float* red;  // K split: RED_SZ
  // Warp-specialised: the output groups' P tiles (kernel 1's), and the state warps' hand-off of
  // chunk c to them in buffer (c − cs) mod 2: h_c (K × 64) and Ṽ (64 × 64), bf16, as the output
  // products' B operands: wgmma's core matrices (`stage_tiles_t`, column blocks K·16 and
  // 64·16 bytes apart).
  bf16* po;    // 2 x [64][LD64]
  bf16* hx;    // 2 x K·64
  bf16* vx;    // 2 x 64·64
  __device__ void carve(Carve& c) {
    constexpr bool WS = MODE == MODE_WS;
    w = c.take<bf16>(2 * W_SZ);
    k = c.take<bf16>(2 * W_SZ);
    u = c.take<bf16>(2 * U_SZ);
    R = c.take<float>(2 * REC_FWD);
    G = MODE == MODE_SPLIT ? nullptr : c.take<float>(2 * CH);
    q = MODE == MODE_SPLIT ? nullptr : c.take<bf16>((WS ? 2 : 1) * W_SZ);
    pb = MODE == MODE_FUSED ? c.take<bf16>(CH * LD64) : nullptr;
    red = KS > 1 ? c.take<float>(RED_SZ) : nullptr;
    po = WS ? c.take<bf16>(2 * CH * LD64) : nullptr;
    hx = WS ? c.take<bf16>(2 * K * 64) : nullptr;
    vx = WS ? c.take<bf16>(2 * CH * 64) : nullptr;
  }
};

// The warp-specialised passes' named barriers: the state warps' own (they never meet the other
// warps at __syncthreads), each group's own, and per hand-off buffer b "full" (its writer
// arrives once a chunk's tiles are in, its reader waits) and "empty" (the reader arrives once it
// has read them, the writer waits before refilling it). Forward: the state warps write h_c and
// Ṽ, an output group reads them; reverse pass: a dṼ_loc group writes dṼ_loc, the state warps
// read it.
constexpr int BAR_STATE = 1, BAR_OUT = 2, BAR_FULL = 4, BAR_EMPTY = 6;

// The state warps' barrier: the whole CTA, or (warp-specialised, WS) the N threads of the state
// warps alone, which never meet the other warps at __syncthreads.
template <bool WS, int N>
__device__ __forceinline__ void state_sync() {
  if constexpr (WS)
    bar_sync(BAR_STATE, N);
  else
    __syncthreads();
}

// One warp: rows [16 rb, +16) of P (p_frags' values) as bf16 into pb ([64][LD64]), the column
// tiles up to the diagonal block (the fused pass's output products read no others).
template <int K>
__device__ __forceinline__ void p_rows(const bf16* qs, const bf16* ks, const float* G, int len,
                                       float scale, int rb, bf16* pb) {
  const int lane = threadIdx.x & 31, i0 = 16 * rb + (lane >> 2), j0 = 2 * (lane & 3);
  unsigned pa[4][4];
  p_frags<K>(rows_from<K>(qs, rb), ks, G, rb, len, scale, pa);
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    if (ks > rb) break;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      *reinterpret_cast<unsigned*>(pb + (i0 + 8 * (e & 1)) * LD64 + 16 * ks + 8 * (e >> 1) + j0) =
          pa[ks][e];
  }
}

// acc (one warp's 16 rows, 16·NJP columns from c0) += A B over the k-steps ks < NKS with
// use(ks): a[ks], the A fragments of k-step ks (rows of the warp, columns [16 ks, +16)), and B's
// rows [16 ks, +16) from b ([·][ld] bf16 in shared memory) by ldmatrix.trans.
template <int NKS, int NJP, class Use>
__device__ __forceinline__ void frags_times(float (*acc)[4], const unsigned (*a)[4], const bf16* b,
                                            int ld, int c0, Use use) {
  const int lane = threadIdx.x & 31, lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
#pragma unroll
  for (int ks = 0; ks < NKS; ++ks) {
    if (!use(ks)) continue;
#pragma unroll
    for (int jp = 0; jp < NJP; ++jp) {
      unsigned r[4];
      ldsm_x4_t(r, b + (16 * ks + 8 * lm_lo + lr) * ld + c0 + 16 * jp + 8 * lm_hi);
      mma_bf16(acc[2 * jp], a[ks], r[0], r[1]);
      mma_bf16(acc[2 * jp + 1], a[ks], r[2], r[3]);
    }
  }
}

// acc += P Ṽ with pa as p_frags forms it (k-steps up to the diagonal block; TR: Pᵀ's, from it)
// and the B rows [64][ld] in vs.
template <int NJP, bool TR = false>
__device__ __forceinline__ void p_times(float (*acc)[4], const unsigned (*pa)[4], const bf16* vs,
                                        int ld, int c0, int rb) {
  frags_times<4, NJP>(acc, pa, vs, ld, c0, [rb](int ks) { return TR ? ks >= rb : ks <= rb; });
}

// One warp's output tiles, rows [16 rb, +16) and 16·NJP columns from c0: acc = diag(fs) Q h_c +
// P Ṽ, with qa and pa as p_frags takes and forms them, h_c [K][ld] and Ṽ [64][ld] bf16 in shared
// memory (B operands by ldmatrix.trans). Kernel 3; the warp-specialised forward's output warps
// form the same products in the same order on wgmma (ws_output).
template <int K, int NJP>
__device__ __forceinline__ void out_tiles(float (*acc)[4], const unsigned (*qa)[4],
                                          const unsigned (*pa)[4], const bf16* hs, const bf16* vs,
                                          int ld, int c0, int rb, const float* fs) {
#pragma unroll
  for (int nt = 0; nt < 2 * NJP; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  frags_times<K / 16, NJP>(acc, qa, hs, ld, c0, [](int) { return true; });
#pragma unroll
  for (int nt = 0; nt < 2 * NJP; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] *= fs[e >> 1];
  p_times<NJP>(acc, pa, vs, ld, c0, rb);
}

// The warp-specialised forward's output warps (MODE_WS, behind the state warps): kernel 3's
// products for the CTA's 64 columns of V, from h_c and Ṽ that the state warps hand over in
// shared memory (`hx`, `vx`) instead of through global memory. Two groups of 4 warps take the
// chunks in turn (group gi the chunks cs + gi, cs + gi + 2, ..., which use hand-off buffer gi),
// each with its own Q, P and G. A group is one warpgroup, and output warp w of it forms rows
// [16 w, +16) of the chunk's O: Q rows as A fragments, P rows (kernel 1's P, pm, the bits kernel
// 3's p_frags forms) as A fragments by ldmatrix, then O = diag(s γ) Q h_c + P Ṽ on wgmma (A from
// those registers, B the hand-off buffers), the k-steps in kernel 3's order. On the H200 that gives
// kernel 3's mma.sync bits (the selftest's bitwise row); the group reads h_c and Ṽ once where
// each mma.sync warp read its own copy, and the forward's pass took 5–7 % less (session 28,
// call 4: its output warps had cost the state warps 17 %, call 2). The group's next Q, P and G
// load while it waits for its hand-off and multiplies. Until session 20 the groups formed P
// themselves from Q and K: one chunk's output was then a chain (Q and K in, P, then Q h_c and P
// Ṽ after the hand-off) about twice as long as a state step, and the row block rb = 3 formed 4
// of P's 10 tiles while the group waited for it at its barrier (session 15: a fifth of the stall
// samples, with the state warps waiting on "empty"). (Session 15, call 5: the state warps forming
// diag(s γ) Q h_c from their registers instead made the state step 4.2 µs and the pass 0.270 ms,
// against 0.237 ms.)
template <int K, bool LED, class L>
__device__ void ws_output(const L& S, const bf16* __restrict__ q, const bf16* __restrict__ pm,
                          const float* __restrict__ gc, const SeqChunks& sq, int cs, int ce,
                          int h, int H, int VG, int V, int v0, float scale,
                          bf16* __restrict__ o, const unsigned* __restrict__ lead_done) {
  constexpr int WLD = L::WLD, NTH = L::NWG * 32;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int t = threadIdx.x - 32 * L::NW, gi = t / NTH, tg = t % NTH, ow = tg >> 5;
  const int lane = t & 31, g = lane >> 2;
  const int rb = ow, r0 = 16 * rb, i0 = r0 + g;
  bf16* qs = S.q + gi * L::W_SZ;
  bf16* ps = S.po + gi * CH * LD64;
  float* G = S.G + gi * CH;
  auto issue = [&](int c) {
    // P and G come from prep: this group's chunks are cs + gi + 2j, its batches start at
    // cs + gi + LEAD_BATCH·m.
    if constexpr (LED) {
      if ((c - cs - gi) % LEAD_BATCH == 0) lead_wait(lead_done, c, h, H, ce);
    }
    const int s0 = sq.start(c), l = sq.len(c);
    load_rows_async<K, NTH>(qs, WLD, q + qh.at(s0), qh.ld, l, tg);
    // Every row of P (kernel 1 wrote zeros at rows >= len).
    load_rows_async<CH, NTH>(ps, LD64, pm + ((long)c * H + h) * (CH * CH), CH, CH, tg);
    if (tg < CH) {
      const bool ok = tg < l;
      cp4(G + tg, ok ? (const void*)(gc + (long)(s0 + tg) * H + h) : (const void*)gc, ok);
    }
    cp_commit();
  };
  if (cs + gi < ce) issue(cs + gi);
  for (int c = cs + gi; c < ce; c += 2) {
    const int start = sq.start(c), len = sq.len(c);
    cp_wait<0>();
    bar_sync(BAR_OUT + gi, NTH);  // Q, P, G of chunk c
    unsigned qa[K / 16][4];
    row_frags<K>(qa, qs, rb);
    // P's k-steps up to the diagonal block (p_times reads no others).
    unsigned pa[4][4];
    const auto prow = rows_from<CH>(ps, rb);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if (ks <= rb) {
        prow(ks, pa[ks]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) pa[ks][e] = 0u;  // P is zero above the diagonal block
      }
    }
    const float fs[2] = {i0 < len ? scale * __expf(G[i0]) : 0.f,
                         i0 + 8 < len ? scale * __expf(G[i0 + 8]) : 0.f};
    bar_sync(BAR_OUT + gi, NTH);  // the group is done with Q, P and G
    if (c + 2 < ce) issue(c + 2);

    bar_sync(BAR_FULL + gi, L::HANDOFF);  // h_c and Ṽ of chunk c
    // O = diag(s γ) Q h_c + P Ṽ, the group's 64 rows on wgmma (see above).
    float acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    const unsigned hxs = smem_u32(S.hx + gi * K * 64), vxs = smem_u32(S.vx + gi * CH * 64);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk)
      wg_mma64<true>(acc, qa[kk], wg_desc(hxs + kk * 256, 128, K * 16));
    wg_commit();
    wg_wait_all();
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] *= fs[e >> 1];
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
      wg_mma64<true>(acc, pa[ks], wg_desc(vxs + ks * 256, 128, CH * 16));
    wg_commit();
    wg_wait_all();
    // The state warps refill this buffer for chunk c + 2 only.
    if (c + 2 < ce) bar_arrive(BAR_EMPTY + gi, L::HANDOFF);
#pragma unroll
    for (int half = 0; half < 2; ++half)
      store_rows16<4>(
          acc + 4 * half,
          [&](int r) { return o + ((long)(start + r0 + r) * H + h) * V + v0 + 32 * half; },
          [&](int r) { return r0 + r < len; });
  }
}

template <int K, int NWC, int MODE, int KS = 1, bool SEG = false, bool LED = false>
__device__ void state_fwd_impl(const bf16* __restrict__ w, const bf16* __restrict__ u,
                               const bf16* __restrict__ k, const bf16* __restrict__ qg,
                               const bf16* __restrict__ pm, const float* __restrict__ gc, const float* __restrict__ rec,
                               const int* __restrict__ ctab,
                               const int* __restrict__ seq_chunk, const float* __restrict__ h0,
                               int H, int VG, int V, float scale, bf16* __restrict__ hout,
                               bf16* __restrict__ vnew, bf16* __restrict__ o,
                               float* __restrict__ ht, float* __restrict__ at,
                               unsigned* __restrict__ done, const unsigned* __restrict__ lead_done,
                               unsigned* __restrict__ lead_started) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef StateFwdSm<K, NWC, MODE, KS> L;
  constexpr bool FUSED = MODE == MODE_FUSED, WS = MODE == MODE_WS;
  static_assert(!WS || (KS == 1 && NWC == 4), "the output warps take 64 columns, unsplit");
  constexpr int KR = K / KS;   // state rows of a warp
  constexpr int NJ = KR / 8;   // accumulator tiles of a warp's state rows
  static_assert(KR % 16 == 0, "a warp's state rows must make whole k-steps of the A operand");
  L S;
  S.carve(cv);
  const int n = blockIdx.x, h = blockIdx.y, v0 = blockIdx.z * L::BVC;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  // Column group and K slice of the warp (KS = 1: the warp's column group only).
  const int cw = KS == 1 ? warp : warp % NWC, kp = KS == 1 ? 0 : warp / NWC;
  const int vl = 16 * cw, vw = v0 + vl;  // the warp's first value column (CTA tile, global)
  const int k0 = kp * KR;                // the warp's first state row
  const int cs = seq_chunk[n], ce = seq_chunk[n + 1];
  // SEG, the sequence-parallel transition pass (split, unsplit, over the segments of long
  // sequences; h_c and Ṽ not stored): the CTAs past V's columns form their segment's transition
  // A (the state after it from S = I with U = 0; K × K, to at) beside the others' state from
  // zero (to ht), for seg_combine_impl. Same products, same roundings. A template parameter:
  // as a run-time flag in every split pass it cost the recompute 10 % at B4·T4096·H16·K128
  // (session 22, call 1: ptxas scheduled the loop differently).
  static_assert(!SEG || (MODE == MODE_SPLIT && KS == 1), "the transition pass is split, unsplit");
  constexpr bool PUBLISH = MODE == MODE_SPLIT && !SEG;
  const bool trans = SEG && v0 >= V;
  // LED: the warp-specialised forward led by prep (the host's `Lead`), waiting for each
  // chunk's prep outputs (lead_wait); it counts its CTAs as they start, and the rest of prep is
  // queued only once every one has its SM (`dr_lead_gate`).
  static_assert(!LED || WS, "only the warp-specialised forward is led");
  if constexpr (LED) {
    if (threadIdx.x == 0) atomicAdd(lead_started, 1u);
  }
  if constexpr (WS) {
    // Registers from the output warpgroups (two) to the state warpgroup: the launch's cap is 168
    // a thread, and at 168 the state warps spilled (ptxas: 56 bytes) where the split pass takes
    // 210. 128 × (2 · 136 + 232) = 64,512 of the SM's 65,536.
    constexpr int OUT_REGS = 136, STATE_REGS = 232;
    if (warp >= NWC) {
      regs_dec<OUT_REGS>();
      ws_output<K, LED>(S, qg, pm, gc, SeqChunks(ctab, cs, ce), cs, ce, h, H, VG, V, v0, scale,
                        o, lead_done);
      return;
    }
    regs_inc<STATE_REGS>();
  }
  // ldmatrix row addresses: lane → (matrix lane >> 3, row lane & 7).
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  // The K slice that finishes column pair np (tiles 2np, 2np+1) of the chunk: stores Ṽ or O
  // there and, fused, sums Sᵀ Qᵀ and forms Ṽᵀ Pᵀ for it. Pair np needs np + 1 k-steps of Ṽᵀ Pᵀ,
  // so with KS = 2 the pairs {0, 3} and {1, 2} balance them.
  auto owns = [kp](int np) { return KS == 1 || (KS == 4 ? np : (np ^ (np >> 1)) & 1) == kp; };
  // This lane's float4 of accumulator tile nt in partial slot i (a warp's 32 lanes × 16 bytes
  // are contiguous: conflict-free stores and loads).
  float4* red4 = reinterpret_cast<float4*>(S.red);
  auto part = [&](int i, int nt) -> float4& { return red4[(i * 8 + nt) * 32 + lane]; };
  // Sᵀ Qᵀ column t times s γ_t (of the column pairs this warp finishes); unsplit before P is
  // formed (as before the K split: the same register allocation), split once summed.
  auto scale_sq = [&](float(*ot)[4], const float* G, int len) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (!owns(nt >> 1)) continue;
      const int t0 = 8 * nt + 2 * q;
      const float f0 = t0 < len ? scale * __expf(G[t0]) : 0.f;
      const float f1 = t0 + 1 < len ? scale * __expf(G[t0 + 1]) : 0.f;
      ot[nt][0] *= f0;
      ot[nt][1] *= f1;
      ot[nt][2] *= f0;
      ot[nt][3] *= f1;
    }
  };

  // Sᵀ: st[j][e] = S[k][v] with k = k0 + 8j + 2q + (e & 1), v = vw + g + 8 (e >> 1).
  float st[NJ][4];
  const long sbase = (long)(n * H + h) * K * V + (long)k0 * V + vw;
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int kr = k0 + 8 * j + 2 * q + (e & 1), vc = vw + g + 8 * (e >> 1);
      st[j][e] = trans ? (kr == vc - V ? 1.f : 0.f)
                       : (h0 ? h0[sbase + (long)(8 * j + 2 * q + (e & 1)) * V + g + 8 * (e >> 1)]
                             : 0.f);
    }

  // Chunk ci's group: W, K, U, its decay record (and fused G) into buffer b, and Q (fused).
  auto issue = [&](int ci, int s0, int l, int b) {
    // LED: W, U and the record come from prep (the output warps wait for P and G themselves).
    if constexpr (LED) {
      if ((ci - cs) % LEAD_BATCH == 0) lead_wait(lead_done, ci, h, H, ce);
    }
    // The fused pass at K = 256 is at 255 registers: the unrolled loads' addresses spilled there,
    // so it keeps the generic loop.
    auto rows = [&](auto cols, bf16* dst, int dld, const bf16* src, long sld, int valid) {
      constexpr int COLS = decltype(cols)::value;
      if constexpr (!(FUSED && K >= 256))
        load_rows_async<COLS, L::NW * 32, bf16, STATE_VIA_L1<K>>(dst, dld, src, sld, valid);
      else
        load_bf16_async(dst, dld, src, sld, CH, COLS, valid);
    };
    using KC = IntC<K>;
    using VC = IntC<L::BVC>;
    rows(KC{}, S.w + b * L::W_SZ, L::WLD, w + ((long)s0 * H + h) * K, (long)H * K, l);
    rows(KC{}, S.k + b * L::W_SZ, L::WLD, k + qh.at(s0), qh.ld, l);
    // A transition's U is zero: no row is read (the address is never dereferenced).
    rows(VC{}, S.u + b * L::U_SZ, L::ULD, u + ((long)s0 * H + h) * V + v0, (long)H * V,
         SEG && trans ? 0 : l);
    if (tid < REC_FWD / 4)
      cp16(S.R + b * REC_FWD + 4 * tid, rec + ((long)ci * H + h) * RECW + 4 * tid, true);
    if (FUSED)
      for (int i = tid; i < CH; i += L::NW * 32) {
        const bool ok = i < l;
        cp4(S.G + b * CH + i, ok ? (const void*)(gc + (long)(s0 + i) * H + h) : (const void*)gc,
            ok);
      }
    if (FUSED) rows(KC{}, S.q, L::WLD, qg + qh.at(s0), qh.ld, l);
    cp_commit();
  };

  // (start, len) of chunks c and c+1 in registers; c+2's formed one chunk ahead.
  const SeqChunks sq(ctab, cs, ce);
  int start = 0, len = 0, nstart = 0, nlen = 0;
  if (cs < ce) {
    start = sq.start(cs);
    len = sq.len(cs);
    if (cs + 1 < ce) {
      nstart = sq.start(cs + 1);
      nlen = sq.len(cs + 1);
    }
    issue(cs, start, len, 0);
  }
  for (int c = cs; c < ce; ++c) {
    const int b = (c - cs) & 1;
    const bool more = c + 1 < ce;
    int nnstart = 0, nnlen = 0;
    if (more && c + 2 < ce) {
      nnstart = sq.start(c + 2);
      nnlen = sq.len(c + 2);
    }

    // h_c = S (bf16) to global: tile j is rows k = k0 + 8j.., columns vw.. of h_c [K][V]
    // (unsplit: after U is read, staged through this warp's U columns); the fused pass has no
    // h_c output (hout is null there).
    bf16* hc = MODE != MODE_SPLIT ? nullptr : hout + ((long)c * H + h) * K * V + (long)k0 * V + vw;
    if (!FUSED && KS > 1) {
#pragma unroll
      for (int j = 0; j < NJ; ++j)
        store_tile_t(st[j], hc + (long)8 * j * V, V, [](int) { return true; });
    }
    // The only pending group is chunk c's.
    cp_wait<0>();
    state_sync<WS, 32 * NWC>();
    // Every warp stored chunk c − 1's h_c and Ṽ before this barrier: a following fwd_o may take
    // that chunk (`done`, split pass only; see follow()).
    if (PUBLISH && done && c > cs && tid == 0) publish(done + (long)(c - 1) * H + h);

    const bf16* wb = S.w + b * L::W_SZ;
    const bf16* kb = S.k + b * L::W_SZ;
    const bf16* ub = S.u + b * L::U_SZ;
    // Unsplit, this warp's columns of U are dead once read: the stage of its stores.
    bf16* ustage = S.u + b * L::U_SZ + vl;
    const float* G = FUSED ? S.G + b * CH : nullptr;
    const float* R = S.R + b * REC_FWD;

    // Forward: Oᵀ's first term, Sᵀ Qᵀ (this warp's K slice), and P; then Q is dead.
    float ot[8][4];
    if (FUSED) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) ot[nt][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KR / 16; ++kk) {
        const unsigned a[4] = {pack_bf2(st[2 * kk][0], st[2 * kk][1]),
                               pack_bf2(st[2 * kk][2], st[2 * kk][3]),
                               pack_bf2(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                               pack_bf2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          unsigned r[4];
          ldsm_x4(r, S.q + (8 * (2 * np + lm_hi) + lr) * L::WLD + k0 + 16 * kk + 8 * lm_lo);
          mma_bf16(ot[2 * np], a, r[0], r[1]);
          mma_bf16(ot[2 * np + 1], a, r[2], r[3]);
        }
      }
      if (KS == 1) scale_sq(ot, G, len);
      for (int rb = warp; rb < 4; rb += L::NW) p_rows<K>(S.q, kb, G, len, scale, rb, S.pb);
      if (KS == 1) __syncthreads();  // P complete; every warp is done with Q
    }
    // Buffer b^1 was last read in chunk c-1, before the first barrier above; fused with a K split,
    // Q is read until the barrier of the reduction.
    if (more && (KS == 1 || !FUSED)) issue(c + 1, nstart, nlen, b ^ 1);

    // Ṽᵀ [16 × 64] = Uᵀ + Sᵀ (−W)ᵀ: p[nt] is columns t = 8nt.. of the chunk; with a K split, this
    // warp's partial (U counted by slice 0).
    float p[8][4];
    if (KS == 1 || kp == 0) {
      load_tiles_t(p, ub + vl, L::ULD);
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) p[nt][e] = 0.f;
    }
    const unsigned wl = smem_u32(wb + (8 * lm_hi + lr) * L::WLD + k0 + 8 * lm_lo);
#pragma unroll
    for (int kk = 0; kk < KR / 16; ++kk) {
      // B is −W (kernel 1 stores it negated).
      const unsigned a[4] = {pack_bf2(st[2 * kk][0], st[2 * kk][1]),
                             pack_bf2(st[2 * kk][2], st[2 * kk][3]),
                             pack_bf2(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                             pack_bf2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        unsigned r[4];
        ldsm_x4(r, wl + 2 * (16 * np * L::WLD + 16 * kk));
        mma_bf16(p[2 * np], a, r[0], r[1]);
        mma_bf16(p[2 * np + 1], a, r[2], r[3]);
      }
    }

    if (KS > 1) {
      // The K slices' partials, summed by every warp of the column group in slice order (so all
      // hold bitwise the same Ṽᵀ). Slot reuse: chunk c+1 writes only after its first barrier,
      // which a warp reaches only after its reads below.
      constexpr int SQ = L::NW;  // first slot of the Sᵀ Qᵀ partials
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        part(warp, nt) = make_float4(p[nt][0], p[nt][1], p[nt][2], p[nt][3]);
        if (FUSED) part(SQ + warp, nt) = make_float4(ot[nt][0], ot[nt][1], ot[nt][2], ot[nt][3]);
      }
      __syncthreads();  // fused: also P complete and every warp done with Q
      if (FUSED && more) issue(c + 1, nstart, nlen, b ^ 1);
      auto sum = [&](float* x, int slot0, int nt) {
        float4 s = part(slot0 + cw, nt);
#pragma unroll
        for (int i = 1; i < KS; ++i) {
          const float4 y = part(slot0 + i * NWC + cw, nt);
          s.x += y.x;
          s.y += y.y;
          s.z += y.z;
          s.w += y.w;
        }
        x[0] = s.x;
        x[1] = s.y;
        x[2] = s.z;
        x[3] = s.w;
      };
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        sum(p[nt], 0, nt);
        if (FUSED && owns(nt >> 1)) sum(ot[nt], SQ, nt);
      }
    }
    if (FUSED && KS > 1) scale_sq(ot, G, len);

    // The A operands of Ṽᵀ (bf16, for the output) and of (diag(δ) Ṽ)ᵀ (for the update); the
    // recompute stores Ṽ (bf16) to global, rows t < len.
    unsigned av[4][4], an[4][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const float2 dd = *reinterpret_cast<const float2*>(R + 8 * nt + 2 * q);
      const float d0 = dd.x, d1 = dd.y;
      if (!FUSED) {
        const int lim = len - 8 * nt;
        if (KS > 1 && owns(nt >> 1))
          store_tile_t(p[nt], vnew + ((long)(start + 8 * nt) * H + h) * V + vw, (long)H * V,
                       [lim](int col) { return col < lim; });
      } else {
        an[nt >> 1][2 * (nt & 1)] = pack_bf2(p[nt][0], p[nt][1]);
        an[nt >> 1][2 * (nt & 1) + 1] = pack_bf2(p[nt][2], p[nt][3]);
      }
      av[nt >> 1][2 * (nt & 1)] = pack_bf2(p[nt][0] * d0, p[nt][1] * d1);
      av[nt >> 1][2 * (nt & 1) + 1] = pack_bf2(p[nt][2] * d0, p[nt][3] * d1);
    }
    if (MODE == MODE_SPLIT && KS == 1 && !SEG) {
      // h_c, then Ṽ, through this warp's U columns (read into p above). h_c goes after the Ṽ
      // product, so that the product's first ldmatrix and mma issue right after the barrier.
#pragma unroll
      for (int r = 0; r < NJ / 8; ++r)
        store_tiles_staged<8, (K >= 256)>(st + 8 * r, ustage, L::ULD, hc + (long)64 * r * V, V,
                                          CH);
      store_tiles_staged<8, (K >= 256)>(p, ustage, L::ULD, vnew + ((long)start * H + h) * V + vw,
                                        (long)H * V, len);
    }
    if constexpr (WS) {
      // Chunk c to the output warps: h_c (the state before this chunk's update) and Ṽ, into
      // buffer b once they are done with chunk c − 2.
      if (c - cs >= 2) bar_sync(BAR_EMPTY + b, L::HANDOFF);
      // This warp's columns vl.. are column blocks vl / 8, + 1 of each operand.
      bf16* hxb = S.hx + b * K * 64 + (vl / 8) * (K * 8);
#pragma unroll
      for (int r = 0; r < NJ / 8; ++r)
        stage_tiles_t<8>(st + 8 * r, hxb + 64 * r * 8, 8, K * 8);
      stage_tiles_t<8>(p, S.vx + b * CH * 64 + (vl / 8) * (CH * 8), 8, CH * 8);
      fence_async_smem();  // the output group reads them through wgmma
      bar_arrive(BAR_FULL + b, L::HANDOFF);
    }

    if (FUSED) {
      // Oᵀ += Ṽᵀ Pᵀ (B = P rows by ldmatrix; P is zero above the diagonal, so output tile nt
      // needs the k-steps ks ≤ nt / 2 only), then O (bf16) to global, rows t < len.
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
        for (int np = ks; np < 4; ++np) {
          if (!owns(np)) continue;
          unsigned r[4];
          ldsm_x4(r, S.pb + (8 * (2 * np + lm_hi) + lr) * LD64 + 16 * ks + 8 * lm_lo);
          mma_bf16(ot[2 * np], an[ks], r[0], r[1]);
          mma_bf16(ot[2 * np + 1], an[ks], r[2], r[3]);
        }
      }
      if (KS == 1) {
        store_tiles_staged<8>(ot, ustage, L::ULD, o + ((long)start * H + h) * V + vw,
                              (long)H * V, len);
      } else {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int lim = len - 8 * nt;
          if (owns(nt >> 1))
            store_tile_t(ot[nt], o + ((long)(start + 8 * nt) * H + h) * V + vw, (long)H * V,
                         [lim](int col) { return col < lim; });
        }
      }
    }

    // Sᵀ ← γ_last Sᵀ + (diag(δ) Ṽ)ᵀ K (B = this warp's K columns).
    const float gl = R[REC_GL];
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] *= gl;
    const unsigned kl = smem_u32(kb + (8 * lm_lo + lr) * L::WLD + k0 + 8 * lm_hi);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
      for (int jp = 0; jp < NJ / 2; ++jp) {
        unsigned r[4];
        ldsm_x4_t(r, kl + 2 * (16 * ks * L::WLD + 16 * jp));
        mma_bf16(st[2 * jp], av[ks], r[0], r[1]);
        mma_bf16(st[2 * jp + 1], av[ks], r[2], r[3]);
      }
    }
    // Buffer b (and P) are rewritten only after the next chunk's first barrier.
    start = nstart;
    len = nlen;
    nstart = nnstart;
    nlen = nnlen;
  }
  if (PUBLISH && done && cs < ce) {
    __syncthreads();
    if (tid == 0) publish(done + (long)(ce - 1) * H + h);
  }
  if (SEG && trans)
    store_state<NJ>(st, at + (long)(n * H + h) * K * K + (long)k0 * K + vw - V, K);
  else if (ht)
    store_state<NJ>(st, ht + sbase, V);
}

// Sequence-parallel state passes: the start state X_p of each segment p of a sequence cut into
// segments (the host's `SegPlan`, segments seq_seg[n] .. seq_seg[n + 1] − 1 of sequence n):
// X_0 = h0 (0 without one), X_{p+1} = A_p X_p + B_p, with A_p (K × K, at) and B_p (K × V, ht)
// from the transition pass over the segments (SEG in state_fwd_impl). X_p to X [segments, H, K,
// V], the sequence's final state to ht when given; f32 throughout, each sum in the order of k.
// `reverse` (the reverse pass's, SEG in state_bwd_impl): the segments last to first, h0 the dS
// leaving the sequence, X_p the dS leaving segment p, ht the dS entering the sequence (dh0), and
// A_p read transposed (the reverse transition of a segment is the forward one's transpose; the
// reverse transition pass stores its own transposed, so both sources read alike).
// One CTA per (sequence, head, 16 columns of V), 256 threads: TPR threads per row of X, each
// with CPT adjacent columns, so that a thread reads its row of A_p once (float4 along k) and
// X_p's rows from shared memory (the same address across the CTA: a broadcast). Shared memory:
// K · 192 bytes (the host's launch).
// seg_combine streams A through shared memory in k-tiles of 32 (forward: columns k0..k0+31 of
// every row, [K][36]; reverse: rows k0..k0+31, [32][K+4]), NB tiles in flight by cp.async across
// the segments of a sequence: A does not depend on the chain, so the next segment's tiles load
// while this one's products run. (Loaded a row per thread before each product, 8 float4s in
// flight, the L2 latency set the pace: 0.036 ms for 4 segments at B1·T16384·H16·K128, about 9 µs
// a segment; session 22, call 5.)
template <int K>
struct SegCombineSm {
  static constexpr int NB = 4, KT = 32, NKT = K / KT;
  static constexpr int FLD = KT + 4, RLD = K + 4;  // row strides of the forward / reverse tiles
  static constexpr int TILE = K * FLD > KT * RLD ? K * FLD : KT * RLD;
  float* xs;  // [K][16]: X_p's column block
  float* at;  // NB x TILE
  __device__ void carve(Carve& c) {
    xs = c.take<float>(K * 16);
    at = c.take<float>(NB * TILE);
  }
};

template <int K>
__device__ void seg_combine_impl(const float* __restrict__ A, const float* __restrict__ B,
                                 const int* __restrict__ seq_seg, const float* __restrict__ h0,
                                 int H, int V, int reverse, float* __restrict__ X,
                                 float* __restrict__ ht) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef SegCombineSm<K> L;
  L S;
  S.carve(cv);
  constexpr int TPR = 256 / K, CPT = 16 / TPR, NB = L::NB, KT = L::KT, NKT = L::NKT;
  static_assert(256 % K == 0 && CPT % 4 == 0, "whole float4s of columns per thread");
  const int n = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int r = tid / TPR, cl = (tid % TPR) * CPT, c0 = 16 * blockIdx.z + cl;
  const int s0 = seq_seg[n], ns = seq_seg[n + 1] - s0;
  // Tile t: k-tile t mod NKT of the (t / NKT)-th segment walked; beyond the last, an empty group
  // (uniform wait counts).
  auto issue = [&](int t) {
    if (t < ns * NKT) {
      const int i = t / NKT, k0 = (t % NKT) * KT;
      const float* as = A + ((long)(reverse ? s0 + ns - 1 - i : s0 + i) * H + h) * K * K;
      float* dst = S.at + (t % NB) * L::TILE;
      if (reverse) {
        for (int e = tid; e < KT * K / 4; e += 256) {
          const int row = e / (K / 4), c4 = 4 * (e % (K / 4));
          cp16(dst + row * L::RLD + c4, as + (long)(k0 + row) * K + c4, true);
        }
      } else {
        for (int e = tid; e < K * KT / 4; e += 256) {
          const int row = e / (KT / 4), c4 = 4 * (e % (KT / 4));
          cp16(dst + row * L::FLD + c4, as + (long)row * K + k0 + c4, true);
        }
      }
    }
    cp_commit();
  };
#pragma unroll
  for (int t = 0; t < NB - 1; ++t) issue(t);

  float x[CPT];
  const long sb = ((long)n * H + h) * K * V + (long)r * V + c0;
#pragma unroll
  for (int j = 0; j < CPT; ++j) x[j] = h0 ? h0[sb + j] : 0.f;
  for (int i = 0; i < ns; ++i) {
    const int s = reverse ? s0 + ns - 1 - i : s0 + i;
    const long xb = ((long)s * H + h) * K * V + (long)r * V + c0;
    float bv[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      X[xb + j] = x[j];
      S.xs[r * 16 + cl + j] = x[j];
      bv[j] = B[xb + j];  // in flight during the products
    }
    float y[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) y[j] = 0.f;
    for (int kt = 0; kt < NKT; ++kt) {
      const int t = i * NKT + kt;
      // Tile t landed for every thread, and every thread is done with tile t − 1 (whose buffer
      // tile t + NB − 1 takes) and, at kt = 0, has written its part of xs.
      cp_wait<NB - 2>();
      __syncthreads();
      issue(t + NB - 1);
      const float* tile = S.at + (t % NB) * L::TILE;
      const int k0 = kt * KT;
#pragma unroll
      for (int u = 0; u < KT / 4; ++u) {
        // A[r][k0 + 4u ..] (forward), or Aᵀ's: column r of rows k0 + 4u .. (reverse).
        const float4 av =
            reverse ? make_float4(tile[(4 * u) * L::RLD + r], tile[(4 * u + 1) * L::RLD + r],
                                  tile[(4 * u + 2) * L::RLD + r], tile[(4 * u + 3) * L::RLD + r])
                    : *reinterpret_cast<const float4*>(tile + r * L::FLD + 4 * u);
        const float a4[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float4* xr = reinterpret_cast<const float4*>(S.xs + (k0 + 4 * u + e) * 16 + cl);
#pragma unroll
          for (int j4 = 0; j4 < CPT / 4; ++j4) {
            const float4 xv = xr[j4];
            y[4 * j4] += a4[e] * xv.x;
            y[4 * j4 + 1] += a4[e] * xv.y;
            y[4 * j4 + 2] += a4[e] * xv.z;
            y[4 * j4 + 3] += a4[e] * xv.w;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < CPT; ++j) x[j] = y[j] + bv[j];
    __syncthreads();  // xs is rewritten by the next segment
  }
  cp_wait<0>();
  if (ht)
#pragma unroll
    for (int j = 0; j < CPT; ++j) ht[sb + j] = x[j];
}

// Kernel 3 (v5): O = s[diag(γ) Q h_c + (QKᵀ ⊙ Γ ⊙ L) Ṽ] per (chunk, head), in the register-resident
// raw-mma style of kernels 2, 6 and 7. 8 warps: warp w owns the output rows [16 rb, +16), rb = w
// mod 4 for w < 4 and 3 − w mod 4 for w ≥ 4 (warps w and w + 4 share a sub-partition, so each gets
// one short and one long row block of the triangular P work), and, with sp = w / 4, the columns
// [32 sp, +32) of every 64-column V slice (4 accumulator tiles).
// Prologue: q and k (one cp.async group) and the first NB slices (h_c [K][64] and Ṽ [64][64], one
// group each) are issued at once. Each warp keeps its Q rows as A fragments in registers (K/4 of
// them) and forms its P rows, s (QKᵀ ⊙ Γ ⊙ L) zero at rows ≥ len, straight into bf16 A fragments
// (16 registers; the two warps of a row block both form them: no P in shared memory, no barrier;
// tiles above the diagonal block are not formed). Then q and k are dead and their region is slice
// buffer NB. Per slice: O = Q h_c (B = h_c by ldmatrix.trans), rows scaled by s γ_i in f32 (Q
// enters the product unscaled, as in the fused pass and the CPU mirror), + P Ṽ (B = Ṽ by
// ldmatrix.trans, k-steps up to the diagonal block), stored as bf16 from the accumulators, rows
// < len. One barrier per slice, after which slice s + NB is issued into the buffer slice s − 1
// used (s = 0: the q/k region). v4 formed P and every output tile with wmma through per-warp
// staging tiles, rounded diag(s γ) Q to bf16 in place (an extra pass, a rounding point the mirror
// does not have) and walked V in 32-column slices with two barriers each.
template <int K>
struct FwdOSm {
  static constexpr int NW = 8;                         // the host launches 256 threads
  static constexpr int MINB = K >= 256 ? 1 : 2;        // CTAs per SM the registers are capped for
  static constexpr int NB = K >= 256 ? 3 : 2;          // dedicated slice buffers
  static constexpr int NBUF = NB + 1;                  // + the q/k region after the prologue
  static constexpr int BV = 64, SLD = BV + 8, QLD = K + 8;  // slice width; row strides
  static constexpr unsigned OFF_V = K * SLD * 2;       // Ṽ [64][SLD] after h_c [K][SLD]
  static constexpr unsigned BUF = OFF_V + CH * SLD * 2;  // bytes of a slice buffer
  static constexpr unsigned QK = 2 * CH * QLD * 2;     // q, k [64][QLD] each
  static_assert(QK >= BUF, "a slice fits the q/k region");
  static_assert(OFF_V % 128 == 0 && BUF % 128 == 0 && (CH * QLD * 2) % 128 == 0,
                "slice and q/k arrays start at 128-byte boundaries");
  char* buf;  // NB x BUF, then q, k (slice buffer NB once the prologue is done)
  float* G;   // [64]
  __device__ void carve(Carve& c) {
    buf = c.take<char>(NB * BUF + QK);
    G = c.take<float>(CH);
  }
};

template <int K>
__device__ void fwd_o_impl(const bf16* __restrict__ q, const bf16* __restrict__ k,
                           const float* __restrict__ gc, const bf16* __restrict__ hstates,
                           const bf16* __restrict__ vnew, const int* __restrict__ ctab, int H,
                           int VG, int V, float scale, bf16* __restrict__ o, int cg, int h) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef FwdOSm<K> L;
  L S;
  S.carve(cv);
  const QkHead qh = qk_head<K>(h, H, VG);
  constexpr int BV = L::BV, SLD = L::SLD, QLD = L::QLD, NB = L::NB, NBUF = L::NBUF;
  constexpr int NTH = L::NW * 32;
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  // This warp: rows r0.., slice columns c0..; this lane: rows i0, i0 + 8.
  const int sp = warp >> 2, rb = sp ? 3 - (warp & 3) : (warp & 3);
  const int r0 = 16 * rb, i0 = r0 + g, c0 = 32 * sp;
  const int nsl = V / BV;
  const bf16* vn0 = vnew + ((long)start * H + h) * V;
  const bf16* hc = hstates + ((long)cg * H + h) * K * V;
  bf16* qs = reinterpret_cast<bf16*>(S.buf + NB * L::BUF);
  bf16* kls = qs + CH * QLD;

  // Item it: slice it (h_c and Ṽ columns [64 it, +64)) into buffer it mod NBUF; beyond the last
  // slice an empty group (uniform wait counts).
  auto issue = [&](int it) {
    if (it < nsl) {
      char* b = S.buf + (it % NBUF) * L::BUF;
      const int v0 = it * BV;
#pragma unroll
      for (int r = 0; r < K; r += CH)
        load_rows_async<BV, NTH>(reinterpret_cast<bf16*>(b) + r * SLD, SLD,
                                 hc + (long)r * V + v0, V, CH);
      load_rows_async<BV, NTH>(reinterpret_cast<bf16*>(b + L::OFF_V), SLD, vn0 + v0, (long)H * V,
                               len);
    }
    cp_commit();
  };
  load_rows_async<K, NTH>(qs, QLD, q + qh.at(start), qh.ld, len);
  load_rows_async<K, NTH>(kls, QLD, k + qh.at(start), qh.ld, len);
  cp_commit();
#pragma unroll
  for (int it = 0; it < NB; ++it) issue(it);
  if (tid < CH) S.G[tid] = tid < len ? gc[(long)(start + tid) * H + h] : 0.f;
  cp_wait<NB>();  // q and k (the NB slices may still be in flight)
  __syncthreads();

  // Q rows r0.. as A fragments.
  unsigned qa[K / 16][4];
  row_frags<K>(qa, qs, rb);

  // P rows r0.. = s (QKᵀ ⊙ Γ ⊙ L) as bf16 A fragments.
  unsigned pa[4][4];
  p_frags<K>(frags_in(qa), kls, S.G, rb, len, scale, pa);
  // The row scales s γ_i of Q h_c (zero at rows ≥ len).
  const float fs[2] = {i0 < len ? scale * __expf(S.G[i0]) : 0.f,
                       i0 + 8 < len ? scale * __expf(S.G[i0 + 8]) : 0.f};

  for (int s = 0; s < nsl; ++s) {
    // Slice s landed (only the NB − 1 newer groups may be pending); after the barrier every warp
    // is done with slice s − 1 (s = 0: with q and k), whose buffer slice s + NB takes.
    cp_wait<NB - 1>();
    __syncthreads();
    issue(s + NB);
    const char* b = S.buf + (s % NBUF) * L::BUF;
    const bf16* hs = reinterpret_cast<const bf16*>(b);
    const bf16* vs = reinterpret_cast<const bf16*>(b + L::OFF_V);
    float acc[4][4];
    out_tiles<K, 2>(acc, qa, pa, hs, vs, SLD, c0, rb, fs);
    store_rows16<4>(
        acc, [&](int r) { return o + ((long)(start + r0 + r) * H + h) * V + s * BV + c0; },
        [&](int r) { return r0 + r < len; });
  }
}

// Kernel 4 (v6): dṼ_loc = Pᵀ dO (bf16), P = s (QKᵀ ⊙ Γ ⊙ L), per (chunk, head), 8 warps. Warp w
// forms rows [16 rb, +16) of Pᵀ (rb = w mod 4) as A fragments in its registers (p_frags, TR),
// then for each 64-column slice of dO (two buffers: slice s + 2 loads while s + 1 is multiplied)
// its 16 × 32 tile (columns 32 (w / 4)..), written as bf16 straight from the accumulators. The
// warp-specialised reverse pass's dṼ_loc warps form the same tiles by the same helpers, bit for
// bit. (v5 formed P once into shared memory with warps 0–3 and balanced the product by giving
// each warp row blocks p and 3 − p; v6 forms each warp's Pᵀ rows twice, once per column half, and
// needs neither P's buffer nor the barrier after it.) bf16 out since session 7: the rounding is
// below the mirror's resolution (dg 8.2e-3 → 8.1e-3 worst over 80 cases), and it halves this
// kernel's store and the reverse pass's read of it.
template <int K>
struct DvlocSm {
  bf16* q;   // [64][K+8]
  bf16* k;   // [64][K+8]
  bf16* x0;  // [64][72]  dO slices s even
  bf16* x1;  // [64][72]  dO slices s odd
  float* G;  // [64]
  __device__ void carve(Carve& c) {
    q = c.take<bf16>(CH * (K + 8));
    k = c.take<bf16>(CH * (K + 8));
    x0 = c.take<bf16>(CH * LD64);
    x1 = c.take<bf16>(CH * LD64);
    G = c.take<float>(CH);
  }
};

template <int K>
__device__ void dvloc_impl(const bf16* __restrict__ q, const bf16* __restrict__ k,
                           const float* __restrict__ gc, const bf16* __restrict__ d_o,
                           const int* __restrict__ ctab, int H, int VG, int V, float scale,
                           bf16* __restrict__ dvl) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  DvlocSm<K> S;
  S.carve(cv);
  const int cg = blockIdx.x, h = blockIdx.y;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x, warp = tid >> 5, rb = warp & 3, c0 = 32 * (warp >> 2);
  const bf16* do0 = d_o + ((long)start * H + h) * V;
  const long ld = (long)H * V;
  const int ns = V / 64;
  load_rows_async<K, 256>(S.q, K + 8, q + qh.at(start), qh.ld, len);
  load_rows_async<K, 256>(S.k, K + 8, k + qh.at(start), qh.ld, len);
  load_rows_async<64, 256>(S.x0, LD64, do0, ld, len);
  if (ns > 1) load_rows_async<64, 256>(S.x1, LD64, do0 + 64, ld, len);
  cp_commit();
  if (tid < CH) S.G[tid] = tid < len ? gc[(long)(start + tid) * H + h] : 0.f;
  cp_wait<0>();
  __syncthreads();
  unsigned pa[4][4];
  if constexpr (K >= 256) {
    // K's rows as fragments up front. At K <= 128 they are read as the products go instead,
    // which frees the registers for a fourth CTA per SM (80 → 58 registers; 0.090 → 0.085 ms
    // at B2·T8192·H16); at K = 256 shared memory allows two CTAs per SM either way, and that
    // was slower (0.105 → 0.112 ms at B4·T4096·H6·V512; session 16, call 6).
    unsigned ka[K / 16][4];
    row_frags<K>(ka, S.k, rb);
    p_frags<K, true>(frags_in(ka), S.q, S.G, rb, len, scale, pa);
  } else {
    p_frags<K, true>(rows_from<K>(S.k, rb), S.q, S.G, rb, len, scale, pa);
  }
  for (int s = 0; s < ns; ++s) {
    const int v0 = s * 64;
    bf16* xs = (s & 1) ? S.x1 : S.x0;
    if (s >= 2) {
      // Slice s was issued during slice s−2; slice s+1 (if any) during slice s−1.
      if (s + 1 < ns)
        cp_wait<1>();
      else
        cp_wait<0>();
      __syncthreads();
    }
    float acc[4][4] = {};
    p_times<2, true>(acc, pa, xs, LD64, c0, rb);
    store_rows16<4>(
        acc, [&](int r) { return dvl + ((long)(start + 16 * rb + r) * H + h) * V + v0 + c0; },
        [&](int r) { return 16 * rb + r < len; });
    if (s + 2 < ns) {
      __syncthreads();  // every warp is done with this slice's buffer
      load_rows_async<64, 256>(xs, LD64, do0 + v0 + 128, ld, len);
      cp_commit();
    }
  }
}

// ------------------------------------------------------------------------------------------
// Kernel 5: reverse state pass per (sequence, head, tile of 16·NWC columns of V), NWC warps. dS
// is the gradient of the state leaving the current chunk. For each chunk, last to first:
//   dh_c = bf16(dS) (global);  per warp ⟨h_c, dS⟩ over its share of dS (f32, global: `sdp`);
//   dṼ = dṼ_loc + (δK) dS (bf16, global);
//   dS ← γ_last dS + (sγQ)ᵀ dO + (−W)ᵀ dṼ;  at the end dh0 = dS (f32).
// dh_c leaves in bf16, half of the f32 bytes it was (written here, read by kernel 6). The state
// term of dG_last, γ_last ⟨h_c, dh_c⟩, cancels heavily against the other dG terms: from a bf16
// dh_c it costs 2.0–2.4e-2 relative error in dg (the CPU mirror, `dh_store_precision`), so it is
// formed here from the f32 dS, before the rounding, with the bf16 h_c that the recompute (run
// before this pass) wrote: 1.08e-2, against 8.1e-3 with the f32 dh_c of sessions 7–10. The
// h_c tile of the chunk ([K][16·NWC] bf16) travels with k and dṼ_loc; ldmatrix.trans of it puts
// h_c at the positions of the dSᵀ accumulators. Kernel 6 sums the partials of a chunk and head
// in a fixed order (deterministic).
// v5, the layout of kernel 2 v5: each warp keeps dSᵀ of its 16 value columns, [16 × K] f32, in
// registers as K/8 accumulator tiles and does all of a chunk's products itself:
//   dṼᵀ = dṼ_locᵀ + dSᵀ (δK)ᵀ  (the accumulators start from dṼ_loc, read from shared memory in
//   accumulator order; A = dSᵀ rounded to bf16 straight from the accumulators, B = δK by
//   ldmatrix),
//   dSᵀ ← γ_last dSᵀ + dOᵀ (sγQ) + dṼᵀ (−W)  (A = dO by ldmatrix.trans and the bf16 dṼᵀ
//   accumulators; B = sγQ and −W, stored negated by kernel 1, by ldmatrix.trans).
// The rounding points are v4's: bf16(dS), bf16(δ·K), bf16(sγ·Q), one bf16 dṼ both stored and
// used in the update, f32 accumulation.
// Shared memory: q, w, k ([64][K+8] bf16), dO ([64][16·NWC+8] bf16) and dṼ_loc
// ([64][16·NWC+8] bf16) once each, the decay record R (δ_t, γ_last, γ_t: `chunk_gates`) twice.
// δ and sγ are folded into k and q in place, each 16-byte piece by the thread that copied it
// (scale_own_rows), right after that thread's cp_wait: a thread sees its own cp.async writes once
// it has waited for them, so the fold needs no barrier before it, only the one that publishes
// it. The fold reads all of a chunk's R, so R (double-buffered) travels one step early: R(c−1)
// comes with chunk c's q/w/dO group and is published by chunk c's middle barrier.
// cp.async groups, in commit order: KD(ce−1) = {k, dṼ_loc}, QWO(ce−1) = {q, w, dO, R(ce−2)};
// then per chunk c, whose top finds KD(c), QWO(c) pending: KD(c−1) after the middle barrier (k
// and dṼ_loc are dead once dṼ is built), QWO(c−1) with R(c−2) after the last barrier (q, w, dO
// and R(c) are dead after the update). So KD(c−1) loads during chunk c's update, and q, w, dO of
// chunk c−1 during its own dh store, δ fold and dṼ product.

// Scales in place the rows r < len of a [64][COLS] bf16 tile (row stride ld) by f(r), rounding
// to bf16: each thread only the 16-byte pieces that its own load_rows_async of the tile copied,
// so it may run right after the thread's cp_wait, before any barrier. Rows >= len were
// zero-filled and stay zero.
template <int COLS, int NTH, class F>
__device__ __forceinline__ void scale_own_rows(bf16* t, int ld, int len, F f) {
  for_own_pieces<COLS, NTH, bf16>([&](int r, int c) {
    if (r < len) {
      const float s = f(r);
      uint4* p = reinterpret_cast<uint4*>(t + r * ld + c);
      uint4 x = *p;
      x.x = pack_bf2(bf_lo(x.x) * s, bf_hi(x.x) * s);
      x.y = pack_bf2(bf_lo(x.y) * s, bf_hi(x.y) * s);
      x.z = pack_bf2(bf_lo(x.z) * s, bf_hi(x.z) * s);
      x.w = pack_bf2(bf_lo(x.w) * s, bf_hi(x.w) * s);
      *p = x;
    }
  });
}

// K split (KS > 1, for few long sequences, where a CTA per 16 columns leaves most of the GPU
// idle and each warp's ~1,600 instructions per chunk run one at a time on its sub-partition):
// KS warps share a column group, warp (kp, cw) keeping dSᵀ rows [kp·K/KS, (kp+1)·K/KS). dṼᵀ needs
// the whole of K: each warp writes its partial (kp = 0's starting from dṼ_loc) to `red` before
// the middle barrier, and after it every warp of the group sums the KS partials in kp order (the
// same bits in each), stores its share of dṼ's column tiles and updates its own dS rows. `red` is
// written again only after the next chunk's first barrier, which each warp passes after its reads.
template <int K, int NWC, int KS, int NG = 0>
struct StateBwdSm {
  static constexpr int BVC = 16 * NWC, WLD = K + 8, OLD = BVC + 8, DLD = BVC + 8;
  // Warp-specialised (NG > 0, see ws_dvloc): the state warps, then NG groups of NWG dṼ_loc
  // warps; a hand-off barrier joins the state warps and one group.
  static constexpr bool WS = NG > 0;
  static constexpr int GROUPS = NG;
  static constexpr int NW = NWC * KS, NWG = WS ? 4 : 0, HANDOFF = 32 * (NW + NWG);
  static constexpr int W_SZ = CH * WLD;
  bf16* q;     // [64][WLD]  Q, then s·γ·Q
  bf16* w;     // [64][WLD]  W
  bf16* k;     // [64][WLD]  K, then δ·K
  bf16* dos;   // [64][OLD]  dO
  bf16* dvl;   // [64][DLD]  dṼ_loc (warp-specialised: only the stage of the dh and dṼ stores)
  bf16* hc;    // [K][OLD]   h_c (this CTA's columns)
  float* R;    // 2 x [RECW]  decay records
  float* red;  // KS > 1: [KS·NWC warps][8 tiles][32 lanes] float4, partial dṼᵀ per warp
  // Warp-specialised: two sets of the dṼ_loc warps' Q, K, dO and G, and two hand-off buffers of
  // dṼ_loc ([64][DLD] bf16), set and buffer b for the chunks ce − 1 − b, ce − 3 − b, ....
  bf16* qo;   // 2 x [64][WLD]
  bf16* ko;   // 2 x [64][WLD]
  bf16* oo;   // 2 x [64][OLD]
  float* G;   // 2 x [64]
  bf16* dx;   // 2 x [64][DLD]
  __device__ void carve(Carve& c) {
    q = c.take<bf16>(CH * WLD);
    w = c.take<bf16>(CH * WLD);
    k = c.take<bf16>(CH * WLD);
    dos = c.take<bf16>(CH * OLD);
    dvl = c.take<bf16>(CH * DLD);
    hc = c.take<bf16>(K * OLD);
    R = c.take<float>(2 * RECW);
    red = KS > 1 ? c.take<float>(KS * NWC * 8 * 32 * 4) : nullptr;
    qo = WS ? c.take<bf16>(2 * W_SZ) : nullptr;
    ko = WS ? c.take<bf16>(2 * W_SZ) : nullptr;
    oo = WS ? c.take<bf16>(2 * CH * OLD) : nullptr;
    G = WS ? c.take<float>(2 * CH) : nullptr;
    dx = WS ? c.take<bf16>(2 * CH * DLD) : nullptr;
  }
};

// The warp-specialised reverse pass's dṼ_loc warps (behind the state warps): kernel 4's tiles
// for the CTA's 64 columns of V, handed to the state warps in shared memory instead of through
// global memory. dṼ_loc does not depend on the state, so these warps run ahead of the state
// warps by up to two chunks. NG groups of 4 warps take the chunks in turn from the last (group
// gi the chunks ce − 1 − gi, ce − 1 − gi − NG, ...); chunk c uses input set and hand-off buffer
// b = (ce − 1 − c) mod 2, and its set is refilled with chunk c − 2 right after (one group: two
// chunks in flight; two: one each). Warp rb of a group forms rows [16 rb, +16) of Pᵀ as A
// fragments and its 16 × 64 tile of Pᵀ dO with kernel 4's helpers in kernel 4's order (bit for
// bit kernel 4's values), waits until the state warps have read the buffer's previous chunk
// ("empty"), stores the tile as bf16 in kernel 4's row-major layout and arrives on "full".
// Where the forward formed P (kernel 1, kept with the saved T; pflag, when given, says whether
// it did), the warps load P (8 KB a chunk, into the Q tile's place; no K tile) and take Pᵀ's
// fragments from it by ldmatrix.trans: the same bits, and the P formation that took a third of
// this pass's stall samples is gone (session 20: 0.322 → 0.257 ms at B4·T4096·H16·K128, call 9).
// The warp-specialised reverse pass's dṼ_loc groups per head size (the host's
// `bwd_ws_groups`): two at K = 64, one at K = 128, as measured (H200, session 16 call 2, fwd+bwd
// graph ms at B4·T4096·H16, plain / one group / two: K = 128 1.551 / 1.530 / 1.553; K = 64,
// V = 128 1.137 / 1.125 / 1.088). At K = 128 a second group's Pᵀ products slow the state warps
// more than its parallelism gains (12 warps cap registers at 168: 16 bytes of spills).
template <int K> constexpr int BWD_WS_GROUPS = K <= 64 ? 2 : 1;

template <int K, class L>
__device__ void ws_dvloc(const L& S, const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const float* __restrict__ gc, const bf16* __restrict__ d_o,
                         const bf16* __restrict__ pmp, const float* __restrict__ pflag,
                         const SeqChunks& sq, int cs, int ce, int h, int H, int VG, int V,
                         int v0, float scale) {
  constexpr int WLD = L::WLD, NTH = L::NWG * 32, NG = L::GROUPS, PF = 2 / NG;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int t = threadIdx.x - 32 * L::NW, gi = t / NTH, tg = t % NTH, rb = tg >> 5;
  const int lane = t & 31, g = lane >> 2, qd = lane & 3;
  // The forward's P where it formed one (pflag, when given, says so), else Pᵀ from Q and K.
  const bf16* pm = pmp && (!pflag || *pflag != 0.f) ? pmp : nullptr;
  // Chunk c's set (beyond the sequence an empty group: uniform wait counts).
  auto issue = [&](int c) {
    if (c >= cs) {
      const int s0 = sq.start(c), l = sq.len(c), b = (ce - 1 - c) & 1;
      if (pm) {
        load_rows_async<CH, NTH>(S.qo + b * L::W_SZ, LD64, pm + ((long)c * H + h) * (CH * CH), CH,
                                 CH, tg);
      } else {
        load_rows_async<K, NTH>(S.qo + b * L::W_SZ, WLD, q + qh.at(s0), qh.ld, l, tg);
        load_rows_async<K, NTH>(S.ko + b * L::W_SZ, WLD, k + qh.at(s0), qh.ld, l, tg);
      }
      load_rows_async<L::BVC, NTH>(S.oo + b * CH * L::OLD, L::OLD,
                                   d_o + ((long)s0 * H + h) * V + v0, (long)H * V, l, tg);
      if (tg < CH) {
        const bool ok = tg < l;
        cp4(S.G + b * CH + tg,
            ok ? (const void*)(gc + (long)(s0 + tg) * H + h) : (const void*)gc, ok);
      }
    }
    cp_commit();
  };
  const int c1 = ce - 1 - gi;
  for (int j = 0; j < PF; ++j) issue(c1 - j * NG);
  for (int c = c1; c >= cs; c -= NG) {
    const int len = sq.len(c), b = (ce - 1 - c) & 1;
    const bf16* qs = S.qo + b * L::W_SZ;
    const bf16* ks = S.ko + b * L::W_SZ;
    const bf16* os = S.oo + b * CH * L::OLD;
    const float* G = S.G + b * CH;
    bf16* dx = S.dx + b * CH * L::DLD;
    cp_wait<PF - 1>();
    bar_sync(BAR_OUT + gi, NTH);  // Q, K, dO, G of chunk c
    unsigned pa[4][4] = {};
    if (pm) {
      // Pᵀ's rows [16 rb, +16) are P's columns: A fragments by ldmatrix.trans of P's rows
      // [16 ks, +16) (matrix i: rows + 8 (i >> 1), columns 16 rb + 8 (i & 1)), k-steps ks >= rb.
      const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
      const bf16* pt = qs + (8 * lm_hi + lr) * LD64 + 16 * rb + 8 * lm_lo;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        if (ks >= rb) ldsm_x4_t(pa[ks], pt + 16 * ks * LD64);
    } else {
      // (Read as the products go, as kernel 4 does at K <= 128, ptxas spilled 12 bytes at
      // K = 128 and the pass took 0.321 against 0.311 ms at B4·T4096·H16: session 16, call 6.)
      unsigned ka[K / 16][4];
      row_frags<K>(ka, ks, rb);
      p_frags<K, true>(frags_in(ka), qs, G, rb, len, scale, pa);
    }
    float acc[8][4] = {};
    p_times<4, true>(acc, pa, os, L::OLD, 0, rb);
    bar_sync(BAR_OUT + gi, NTH);  // the group is done with Q, K, dO and G of set b
    issue(c - 2);
    if (c + 2 < ce) bar_sync(BAR_EMPTY + b, L::HANDOFF);  // the state warps read chunk c + 2
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        *reinterpret_cast<unsigned*>(dx + (16 * rb + g + 8 * hf) * L::DLD + 8 * nt + 2 * qd) =
            pack_bf2(acc[nt][2 * hf], acc[nt][2 * hf + 1]);
    bar_arrive(BAR_FULL + b, L::HANDOFF);
  }
}

// Warp-specialised (NG > 0 groups of dṼ_loc warps, 4 state warps, KS = 1): dṼ_loc comes from
// the CTA's own dṼ_loc warps (ws_dvloc) through shared memory, not from kernel 4 through global
// memory; gc (the in-chunk gates, which they need) is read only then. The state warps'
// arithmetic is unchanged.
template <int K, int NWC, int KS, int NG = 0, bool SEG = false>
__device__ void state_bwd_impl(const bf16* __restrict__ q, const bf16* __restrict__ k,
                               const bf16* __restrict__ w, const float* __restrict__ gc,
                               const float* __restrict__ rec, const bf16* __restrict__ d_o,
                               const bf16* __restrict__ dvl, const bf16* __restrict__ hs,
                               const int* __restrict__ ctab, const int* __restrict__ seq_chunk,
                               const float* __restrict__ dht, int H, int VG, int V, float scale,
                               bf16* __restrict__ dh, float* __restrict__ sdp,
                               bf16* __restrict__ dvnew, float* __restrict__ dh0,
                               const bf16* __restrict__ pm, const float* __restrict__ pflag,
                               float* __restrict__ at, unsigned* __restrict__ done) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef StateBwdSm<K, NWC, KS, NG> L;
  constexpr bool WS = L::WS;
  static_assert(!WS || (KS == 1 && NWC == 4), "the dṼ_loc warps take 64 columns, unsplit");
  L S;
  S.carve(cv);
  constexpr int KW = K / KS;      // a warp's dS rows
  constexpr int NJ = KW / 8;      // their accumulator tiles
  constexpr int NTH = NWC * KS * 32;
  constexpr int NTW = 8 / KS;     // dṼ column tiles a warp stores
  const int n = blockIdx.x, h = blockIdx.y, v0 = blockIdx.z * L::BVC;
  const QkHead qh = qk_head<K>(h, H, VG);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const int cw = warp % NWC, kp = warp / NWC, k0 = kp * KW;
  const int vl = 16 * cw, vw = v0 + vl;  // the warp's first value column (CTA tile, global)
  const int cs = seq_chunk[n], ce = seq_chunk[n + 1];
  // SEG, the sequence-parallel transition pass of the reverse pass (as the forward's, see
  // state_fwd_impl): over the segments of long sequences, dS from zero at each segment's end
  // (its dS at the start to dh0) and, in the CTAs past V's columns, from dS = I with dO = 0 and
  // dṼ_loc = 0 (the transition, K × K, to at); no dh_c, ⟨h_c, dh_c⟩ or dṼ stored, no h_c read.
  static_assert(!SEG || (KS == 1 && NG == 0), "the transition pass is plain, unsplit");
  const bool trans = SEG && v0 >= V;
  constexpr bool PUBLISH = !WS && !SEG;
  if constexpr (WS) {
    if (warp >= NWC) {
      ws_dvloc<K>(S, q, k, gc, d_o, pm, pflag, SeqChunks(ctab, cs, ce), cs, ce, h, H, VG, V, v0,
                  scale);
      return;
    }
  }
  // ldmatrix row addresses: lane → (matrix lane >> 3, row lane & 7).
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;

  // dSᵀ: ds[j][e] = dS[k][v] with k = k0 + 8j + 2qd + (e & 1), v = vw + g + 8 (e >> 1). Per
  // (j, e) the 8 lanes of one qd cover 8 consecutive v of one row k: one 32-byte sector.
  float ds[NJ][4];
  const long sbase = (long)(n * H + h) * K * V + (long)k0 * V + vw;
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int kr = k0 + 8 * j + 2 * qd + (e & 1), vc = vw + g + 8 * (e >> 1);
      ds[j][e] = SEG && trans ? (kr == vc - V ? 1.f : 0.f)
                 : dht        ? dht[sbase + (long)(8 * j + 2 * qd + (e & 1)) * V + g + 8 * (e >> 1)]
                              : 0.f;
    }

  // k, dṼ_loc and h_c of chunk ci (first token s0, length l).
  constexpr bool VL1 = STATE_VIA_L1<K>;
  auto issue_kd = [&](int ci, int s0, int l) {
    load_rows_async<K, NTH, bf16, VL1>(S.k, L::WLD, k + qh.at(s0), qh.ld, l);
    if constexpr (!WS)
      load_rows_async<L::BVC, NTH, bf16, VL1>(S.dvl, L::DLD, dvl + ((long)s0 * H + h) * V + v0,
                                              (long)H * V, SEG && trans ? 0 : l);
    if constexpr (!SEG) {
      const bf16* hsrc = hs + ((long)ci * H + h) * K * V + v0;
#pragma unroll
      for (int r = 0; r < K; r += CH)
        load_rows_async<L::BVC, NTH, bf16, VL1>(S.hc + r * L::OLD, L::OLD, hsrc + (long)r * V, V,
                                                CH);
    }
    cp_commit();
  };
  // q, w, dO of a chunk and, when gci >= 0, the decay record of chunk gci (the one before it)
  // into record buffer gb.
  auto issue_qwo = [&](int s0, int l, int gci, int gb) {
    load_rows_async<K, NTH, bf16, VL1>(S.q, L::WLD, q + qh.at(s0), qh.ld, l);
    load_rows_async<K, NTH, bf16, VL1>(S.w, L::WLD, w + ((long)s0 * H + h) * K, (long)H * K, l);
    load_rows_async<L::BVC, NTH, bf16, VL1>(S.dos, L::OLD, d_o + ((long)s0 * H + h) * V + v0,
                                            (long)H * V, SEG && trans ? 0 : l);
    for (int i = tid; gci >= 0 && i < RECW / 4; i += NTH)
      cp16(S.R + gb * RECW + 4 * i, rec + ((long)gci * H + h) * RECW + 4 * i, true);
    cp_commit();
  };

  // (start, len) of chunks c and c−1 in registers; c−2's formed at the top of chunk c.
  const SeqChunks sq(ctab, cs, ce);
  int start = 0, len = 0, pstart = 0, plen = -1;
  if (cs < ce) {
    start = sq.start(ce - 1);
    len = sq.len(ce - 1);
    if (ce - 2 >= cs) {
      pstart = sq.start(ce - 2);
      plen = sq.len(ce - 2);
    }
    // The last chunk's decay record: plain loads, published by the barrier below.
    for (int i = tid; i < RECW; i += NTH)
      S.R[((ce - 1) & 1) * RECW + i] = rec[((long)(ce - 1) * H + h) * RECW + i];
    issue_kd(ce - 1, start, len);
    issue_qwo(start, len, ce - 2 >= cs ? ce - 2 : -1, (ce - 2) & 1);
    state_sync<WS, 32 * NWC>();
  }
  for (int c = ce - 1; c >= cs; --c) {
    const bool more = c > cs;
    int ppstart = 0, pplen = -1;
    if (c - 2 >= cs) {
      ppstart = sq.start(c - 2);
      pplen = sq.len(c - 2);
    }
    const float* R = S.R + (c & 1) * RECW;

    // Pending groups: KD(c), QWO(c). Wait for KD(c), fold δ into this thread's pieces of k.
    cp_wait<1>();
    scale_own_rows<K, NTH>(S.k, L::WLD, len, [&](int r) { return R[r]; });
    state_sync<WS, 32 * NWC>();

    // dṼᵀ [16 × 64] = dṼ_locᵀ + dSᵀ (δK)ᵀ: p[nt] is columns t = 8nt.. of the chunk (with a K
    // split, this warp's rows' share; dṼ_loc in kp = 0's).
    float p[8][4];
    if constexpr (WS) {
      // Chunk c's dṼ_loc from its group's hand-off buffer, which that group refills for chunk
      // c − 2 once every state warp has read it.
      const int b = (ce - 1 - c) & 1;
      bar_sync(BAR_FULL + b, L::HANDOFF);
      load_tiles_t(p, S.dx + b * CH * L::DLD + vl, L::DLD);
      if (c - 2 >= cs) bar_arrive(BAR_EMPTY + b, L::HANDOFF);
    } else if (kp == 0) {
      load_tiles_t(p, S.dvl + vl, L::DLD);
    } else {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) p[nt][e] = 0.f;
    }
    // Unsplit, this warp's dṼ_loc columns are dead once read (refilled after the next barrier):
    // the stage of its dṼ store. At K = 256 this spilled (nw8, 60 bytes at 255 registers) until
    // the decay record and the 32-bit shared addresses (session 8): now 246 registers, no spill.
    constexpr bool STAGE = KS == 1;
    bf16* dstage = S.dvl + vl;
    const unsigned kl = smem_u32(S.k + (8 * lm_hi + lr) * L::WLD + k0 + 8 * lm_lo);
    // dh_c = bf16(dS) to global ([K][V], rows k, this warp's 16 columns): the A operands below
    // are those bf16 values. Each k-step's 16 × 16 block goes transposed into one of four 16-row
    // slots of a stage (stmatrix.trans), then leaves as one 16-byte store per lane; a slot is
    // written again four k-steps later, past three __syncwarp. The stage: unsplit, the warp's
    // dṼ_loc columns (read into p above); with a K split, the warp's own `red` partials (free
    // from the first barrier, where the other warps' reads of them ended, to its write below),
    // so that both take one store path. (Stored tile by tile with shuffles instead, call 5, the
    // K splits were no faster: fwd+bwd 2–3 % over session 10's f32 stores at B1·T16384 and
    // B2·T8192 either way. A stage of its own per warp, copied out after the middle barrier,
    // took more shared memory than K = 256 had room for beside a second CTA: 3.13 → 3.52 ms at
    // B4·T4096·H6, call 3.)
    // This warp's ⟨h_c, dS⟩ (f32 dS) along the way: per k-step, ldmatrix.trans of the h_c rows
    // puts them at the positions of the two dSᵀ tiles (as load_tiles_t). The FMAs run beside the
    // products (two partial sums; formed before the dṼ product as one chain they cost the pass
    // 11 % at B4·T4096, session 11, call 1), then one warp sum (a partial per lane instead was
    // no faster, call 4).
    bf16* dhc = dh + ((long)c * H + h) * K * V + (long)k0 * V + vw;
    constexpr int HLD = STAGE ? L::DLD : 24;  // 48-byte rows: conflict-free 16-byte pieces
    bf16* hst = STAGE ? dstage : reinterpret_cast<bf16*>(S.red + warp * 8 * 32 * 4);
    const unsigned dst0 = smem_u32(hst + (8 * lm_hi + lr) * HLD + 8 * lm_lo);
    const int drow = lane >> 1, dhalf = lane & 1;
    if constexpr (STAGE) __syncwarp();  // load_tiles_t's reads of the stage are done
    const unsigned hl = smem_u32(S.hc + (k0 + 8 * lm_hi + lr) * L::OLD + vl + 8 * lm_lo);
    float sd[2] = {0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < KW / 16; ++kk) {
      const unsigned a[4] = {pack_bf2(ds[2 * kk][0], ds[2 * kk][1]),
                             pack_bf2(ds[2 * kk][2], ds[2 * kk][3]),
                             pack_bf2(ds[2 * kk + 1][0], ds[2 * kk + 1][1]),
                             pack_bf2(ds[2 * kk + 1][2], ds[2 * kk + 1][3])};
      if constexpr (!SEG) {
        const int slot = 16 * (kk % 4);
        stsm_x4_t(dst0 + 2 * slot * HLD, a);
        __syncwarp();
        *reinterpret_cast<uint4*>(dhc + (long)(16 * kk + drow) * V + 8 * dhalf) =
            *reinterpret_cast<const uint4*>(hst + (slot + drow) * HLD + 8 * dhalf);
      }
      if constexpr (!SEG) {
        unsigned r[4];
        ldsm_x4_t(r, hl + 2 * 16 * kk * L::OLD);
        float& a = sd[kk % 2];
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          a = fmaf(ds[2 * kk + (m >> 1)][2 * (m & 1)], bf_lo(r[m]), a);
          a = fmaf(ds[2 * kk + (m >> 1)][2 * (m & 1) + 1], bf_hi(r[m]), a);
        }
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        unsigned r[4];
        ldsm_x4(r, kl + 2 * (16 * np * L::WLD + 16 * kk));
        mma_bf16(p[2 * np], a, r[0], r[1]);
        mma_bf16(p[2 * np + 1], a, r[2], r[3]);
      }
    }
    if constexpr (!SEG) {
      const float x = warp_sum(sd[0] + sd[1]);
      if (lane == 0) sdp[((long)c * H + h) * (V / 16 * KS) + (v0 / 16 + cw) * KS + kp] = x;
    }
    if constexpr (KS > 1) {
      __syncwarp();  // every lane's reads of the dh stage are done
      float4* mine = reinterpret_cast<float4*>(S.red) + warp * 8 * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) mine[nt * 32] = make_float4(p[nt][0], p[nt][1], p[nt][2], p[nt][3]);
    }

    // dṼ (bf16) to global, rows t < len (a K split: this warp's share of the column tiles); the
    // same bf16 values are the A operands of dṼᵀ (−W).
    unsigned av[4][4];
    auto emit_dv = [&]() {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (!STAGE && nt / NTW == kp) {
          const int lim = len - 8 * nt;
          store_tile_t(p[nt], dvnew + ((long)(start + 8 * nt) * H + h) * V + vw, (long)H * V,
                       [lim](int col) { return col < lim; });
        }
        av[nt >> 1][2 * (nt & 1)] = pack_bf2(p[nt][0], p[nt][1]);
        av[nt >> 1][2 * (nt & 1) + 1] = pack_bf2(p[nt][2], p[nt][3]);
      }
      if (STAGE && !SEG)
        store_tiles_staged<8>(p, dstage, L::DLD,
                              dvnew + ((long)start * H + h) * V + vw, (long)H * V, len);
    };
    if constexpr (KS == 1) emit_dv();

    // Pending: QWO(c). Wait for it, fold sγ into this thread's pieces of q; the barrier publishes
    // q, w, dO, R(c−1) and the partials, and ends every warp's reads of k and dṼ_loc.
    cp_wait<0>();
    scale_own_rows<K, NTH>(S.q, L::WLD, len, [&](int r) { return scale * R[REC_GAM + r]; });
    state_sync<WS, 32 * NWC>();
    if (more) issue_kd(c - 1, pstart, plen);
    if constexpr (KS > 1) {
      const float4* part = reinterpret_cast<const float4*>(S.red) + cw * 8 * 32 + lane;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        float4 x = part[nt * 32];
#pragma unroll
        for (int j = 1; j < KS; ++j) {
          const float4 y = part[(j * NWC * 8 + nt) * 32];
          x.x += y.x;
          x.y += y.y;
          x.z += y.z;
          x.w += y.w;
        }
        p[nt][0] = x.x;
        p[nt][1] = x.y;
        p[nt][2] = x.z;
        p[nt][3] = x.w;
      }
      emit_dv();
    }

    // dSᵀ ← γ_last dSᵀ + dOᵀ (sγQ) + dṼᵀ (−W), per k-step the dO product first (v4's order).
    const float gl = R[REC_GL];
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[j][e] *= gl;
    const unsigned ol = smem_u32(S.dos + (8 * lm_hi + lr) * L::OLD + vl + 8 * lm_lo);
    const unsigned ql = smem_u32(S.q + (8 * lm_lo + lr) * L::WLD + k0 + 8 * lm_hi);
    const unsigned wl = smem_u32(S.w + (8 * lm_lo + lr) * L::WLD + k0 + 8 * lm_hi);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      // A = dOᵀ rows v, columns t = 16ks..: matrices (t +0, v +0), (t +0, v +8), (t +8, v +0),
      // (t +8, v +8) are a0..a3.
      unsigned ao[4];
      ldsm_x4_t(ao, ol + 2 * 16 * ks * L::OLD);
#pragma unroll
      for (int jp = 0; jp < NJ / 2; ++jp) {
        unsigned rq[4], rw[4];
        ldsm_x4_t(rq, ql + 2 * (16 * ks * L::WLD + 16 * jp));
        ldsm_x4_t(rw, wl + 2 * (16 * ks * L::WLD + 16 * jp));
        mma_bf16(ds[2 * jp], ao, rq[0], rq[1]);
        mma_bf16(ds[2 * jp], av[ks], rw[0], rw[1]);
        mma_bf16(ds[2 * jp + 1], ao, rq[2], rq[3]);
        mma_bf16(ds[2 * jp + 1], av[ks], rw[2], rw[3]);
      }
    }
    // Every warp is done with q, w, dO and R(c): refill them (R(c−2) into R(c)'s buffer). Every
    // warp stored chunk c's dh_c, dṼ and partials before this barrier: a following dqkwy may
    // take that chunk (`done`, the plain pass only; see follow()).
    state_sync<WS, 32 * NWC>();
    if (PUBLISH && done && tid == 0) publish(done + (long)c * H + h);
    if (more) issue_qwo(pstart, plen, c - 2 >= cs ? c - 2 : -1, c & 1);
    start = pstart;
    len = plen;
    pstart = ppstart;
    plen = pplen;
  }
  if (SEG && trans) {
    // Stored transposed: a chunk's reverse transition γI − Wᵀ diag(δ) K is the forward's
    // γI − Kᵀ diag(δ) W transposed, and so is a segment's, and seg_combine reads the reverse
    // pass's transitions as the forward pass's, transposed (the recompute's serve as they are).
    store_state<NJ, true>(ds, at + (long)(n * H + h) * K * K + (long)(vw - V) * K + k0, K);
    return;
  }
  store_state<NJ>(ds, dh0 + sbase, V);
}

// One warp's accumulator rows i0 + g and i0 + g + 8 (NKT 16 × 8 tiles, lane (g, q) as in the
// raw helpers) scaled in place by f[0] and f[1]; out[row] (written by lane q = 0) is each scaled
// row's dot with the bf16 row of x (row stride ld, the tiles' columns from x's start).
template <int NKT>
__device__ __forceinline__ void scale_rows_dot(float (*acc)[4], const float* f, const bf16* x,
                                               int ld, int i0, float* out) {
  const int lane = threadIdx.x & 31, qd = lane & 3;
  float a[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const unsigned xv =
          *reinterpret_cast<const unsigned*>(x + (i0 + 8 * hf) * ld + 8 * nt + 2 * qd);
      acc[nt][2 * hf] *= f[hf];
      acc[nt][2 * hf + 1] *= f[hf];
      a[hf] += acc[nt][2 * hf] * bf_lo(xv);
      a[hf] += acc[nt][2 * hf + 1] * bf_hi(xv);
    }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    a[hf] += __shfl_xor_sync(0xffffffffu, a[hf], 1);
    a[hf] += __shfl_xor_sync(0xffffffffu, a[hf], 2);
    if (qd == 0) out[i0 + 8 * hf] = a[hf];
  }
}

// ------------------------------------------------------------------------------------------
// The chunk's k rows ([64][K + 8] bf16), carved first by kernels 6 (DqkSm) and 7 (WySm): as one
// kernel (dr_dqkwy) kernel 6 loads them and kernel 7 reads them where kernel 6 left them.
template <int K>
struct KTile {
  static constexpr int LD = K + 8;
  // Taken first by both carves, so that both layouts put it at offset 0.
  static __device__ bf16* take(Carve& c) { return c.take<bf16>(CH * LD); }
};

// Kernel 6: per (chunk, head), looping over V in slices of 32 columns:
//   dP = dO Ṽᵀ, dQ1 = dO h_cᵀ, dKi = Ṽ dh_cᵀ (dh_c in bf16, as kernel 5 stores it);
//   ⟨h_c, dh_c⟩ as the sum of kernel 5's partials (formed from its f32 dS; see there why);
// then, with pb = bf16(s dP ⊙ Γ) on j <= i < len (zero elsewhere) and E = s dP ⊙ (QKᵀ ⊙ Γ ⊙ L),
//   dq = s diag(γ) dQ1 + pb K (final),  dk = diag(δ) dKi + pbᵀ Q (partial, completed by kernel 7;
//   both leave in bf16, as FLA's do: the partial is rounded once more than the rest of dk),
//   dG_i = Σ_j E_ij − Σ_j E_ji + q_i·(s γ_i dQ1)_i − k_i·(δ_i dKi)_i, at i = len − 1 also
//          + Σ_r k_r·(δ_r dKi)_r + γ_last ⟨h_c, dh_c⟩ (partial, completed by kernel 7, into dg).
//
// v5, the register-resident style of the state passes (raw mma.sync + ldmatrix). 4·NS warps
// (NS = 2; 4 at K = 256, 512 threads): warp w owns the rows t ∈ [16 rb, 16 rb + 16), rb = w mod 4,
// and, with sp = w / 4, the columns [sp·K/NS, +K/NS) of dQ1 and dKi and [sp·64/NS, +64/NS) of dP,
// as m16n8 accumulator tiles that stay in registers across the V loop (64 f32 registers for dQ1 and
// dKi, 16 or 8 for dP). Loop operands: A = dO and Ṽ rows by ldmatrix, B = Ṽ, h_c and dh_c rows
// by ldmatrix. dP tiles above the diagonal block are not formed (they are masked out anyway).
// After the loop: pb tiles (bf16) go to shared memory, the only product operand that crosses
// warps; then each warp forms its dq and dk rows from its accumulators (row scale, row-dot partial
// by quad shuffles, + pb K resp. pbᵀ Q with A = pb by ldmatrix(.trans), B = K, Q by
// ldmatrix.trans, bf16 to global by store_grad_rows), then QKᵀ on its dP tiles, E in registers,
// E's row sums over its columns (quad shuffles) and column sums over its 16 rows (shuffles across
// g). Warp 0 adds the per-warp partials in a fixed order for dG (no atomics: deterministic).
// The V slices (dO, Ṽ, h_c and dh_c, bf16) go through NBUF shared buffers by cp.async, one
// group per slice issued NBUF − 1 slices ahead, one barrier per slice; q loads into the buffer
// the slice after the last would use, and k into its own tile (KTile, where kernel 7 reads it),
// during the last slices; pb goes into the last slice's buffer. Rows t >= len of a partial chunk
// are zero-filled (dO, Ṽ, q, k), have γ = δ = 0 and are never written.

template <int K>
struct DqkSm {
  static constexpr int NS = (K >= 256) ? 4 : 2;  // column splits (warps per 16-row block)
  static constexpr int NW = 4 * NS;
  static constexpr int MINB = (K >= 256) ? 1 : 2;    // CTAs per SM the registers are capped for
  static constexpr int NBUF = (K == 128) ? 2 : 3;    // slice buffers (K = 128: 2 CTAs per SM)
  static constexpr int KW = K / NS, PW = CH / NS;    // dQ1/dKi and dP columns per warp
  static constexpr int SW = 32, SLD = SW + 8;        // slice width; row stride (elements)
  static constexpr int QLD = KTile<K>::LD;           // row stride of q and k
  // A slice buffer: dO [64][SLD], Ṽ [64][SLD], h_c [K][SLD], dh_c [K][SLD] (bf16); q ([64][QLD])
  // takes one buffer too. k has its own tile, at the front, where wy finds it (KTile).
  static constexpr unsigned OFF_V = CH * SLD * 2, OFF_H = 2 * CH * SLD * 2,
                            OFF_D = OFF_H + K * SLD * 2, SLICE = OFF_D + K * SLD * 2,
                            QB = CH * QLD * 2, BUF = SLICE > QB ? SLICE : QB;
  static_assert(CH * LD64 * 2 <= BUF, "pb fits one slice buffer");
  static_assert(OFF_V % 128 == 0 && OFF_H % 128 == 0 && OFF_D % 128 == 0 && BUF % 128 == 0,
                "slice arrays start at 128-byte boundaries");
  bf16* k;                     // [64][QLD]
  char* buf;                   // NBUF x BUF
  float *G, *gam, *dec;        // [64]
  float *rsp, *qp, *kp;        // [NS][64]: per-split partials of E's row sums, q·dq, k·dk
  float* csp;                  // [4][64]: per-row-block partials of E's column sums
  __device__ void carve(Carve& c) {
    k = KTile<K>::take(c);
    buf = c.take<char>(NBUF * BUF);
    G = c.take<float>(CH);
    gam = c.take<float>(CH);
    dec = c.take<float>(CH);
    rsp = c.take<float>(NS * CH);
    qp = c.take<float>(NS * CH);
    kp = c.take<float>(NS * CH);
    csp = c.take<float>(4 * CH);
  }
};

// Not inlined: see dqk_then_wy.
template <int K>
__device__ __noinline__ void dqk_impl(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const float* __restrict__ gc, const bf16* __restrict__ d_o,
                         const bf16* __restrict__ vnew, const bf16* __restrict__ hst,
                         const bf16* __restrict__ dh, const float* __restrict__ sdp, int npart,
                         const int* __restrict__ ctab, int H, int VG, int V, float scale,
                         bf16* __restrict__ dq, bf16* __restrict__ dk, float* __restrict__ dg,
                         int cg, int h) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef DqkSm<K> L;
  L S;
  S.carve(cv);
  const QkHead qh = qk_head<K>(h, H, VG);
  constexpr int SW = L::SW, SLD = L::SLD, QLD = L::QLD, KW = L::KW, PW = L::PW, NBUF = L::NBUF;
  constexpr int NTH = L::NW * 32;
  constexpr int NKT = KW / 8;  // accumulator tiles of a warp's dQ1 (and dKi) rows
  constexpr int NPT = PW / 8;  // of its dP rows
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  // ldmatrix row addresses: lane → (matrix lane >> 3, row lane & 7).
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  // This warp: rows r0.., dQ1/dKi columns kc0.., dP columns pc0..; this lane: rows i0, i0 + 8.
  const int rb = warp & 3, r0 = 16 * rb, sp = warp >> 2, kc0 = sp * KW, pc0 = sp * PW;
  const int i0 = r0 + g;
  const int pdiag = rb - pc0 / 16;  // dP tile pairs 0..pdiag are on or below the diagonal
  const int nsl = V / SW;
  const bf16* do0 = d_o + ((long)start * H + h) * V;
  const bf16* vn0 = vnew + ((long)start * H + h) * V;
  const long hoff = ((long)cg * H + h) * K * V;

  // Item it: slice it into buffer it mod NBUF; it == nsl: q into buffer nsl mod NBUF (last read
  // by slice nsl − NBUF, and by no later one) and k into S.k; beyond: an empty group (uniform
  // wait counts).
  auto issue = [&](int it) {
    if (it < nsl) {
      char* b = S.buf + (it % NBUF) * L::BUF;
      const int v0 = it * SW;
      load_rows_async<SW, NTH>(reinterpret_cast<bf16*>(b), SLD, do0 + v0, (long)H * V, len);
      load_rows_async<SW, NTH>(reinterpret_cast<bf16*>(b + L::OFF_V), SLD, vn0 + v0, (long)H * V,
                               len);
      load_rows_async<SW, NTH, bf16, false, K>(reinterpret_cast<bf16*>(b + L::OFF_H), SLD,
                                               hst + hoff + v0, V, K);
      load_rows_async<SW, NTH, bf16, false, K>(reinterpret_cast<bf16*>(b + L::OFF_D), SLD,
                                               dh + hoff + v0, V, K);
    } else if (it == nsl) {
      bf16* qb = reinterpret_cast<bf16*>(S.buf + (nsl % NBUF) * L::BUF);
      load_rows_async<K, NTH>(qb, QLD, q + qh.at(start), qh.ld, len);
      load_rows_async<K, NTH>(S.k, QLD, k + qh.at(start), qh.ld, len);
    }
    cp_commit();
  };
#pragma unroll
  for (int it = 0; it < NBUF - 1; ++it) issue(it);

  // ⟨h_c, dh_c⟩ for dG: kernel 5's npart partials of this chunk and head (one per warp),
  // lane-strided in warp 0, then a warp sum after the loop (a fixed order). Read here, where the
  // slices' loads hide their latency; read at the end, warp 0 waited for them while the other
  // warps waited for warp 0.
  float sd = 0.f;
  if (warp == 0)
    for (int x = lane; x < npart; x += 32) sd += sdp[((long)cg * H + h) * npart + x];
  // G, γ, δ (published by the loop's first barrier).
  if (tid < CH) {
    const bool ok = tid < len;
    const float gt = ok ? gc[(long)(start + tid) * H + h] : 0.f;
    const float gl = gc[(long)(start + len - 1) * H + h];
    S.G[tid] = gt;
    S.gam[tid] = ok ? __expf(gt) : 0.f;
    S.dec[tid] = ok ? __expf(gl - gt) : 0.f;
  }
  // Accumulators: tile nt of dq1/dki is columns kc0 + 8nt.., of dp columns pc0 + 8nt..; element
  // e is row i0 + 8 (e >> 1), column + 2qd + (e & 1).
  float dp[NPT][4], dq1[NKT][4], dki[NKT][4];
#pragma unroll
  for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dp[nt][e] = 0.f;
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dq1[nt][e] = 0.f;
      dki[nt][e] = 0.f;
    }

  for (int s = 0; s < nsl; ++s) {
    // Slice s landed (only the NBUF − 2 newer groups may be pending); after the barrier every
    // warp is done with slice s − 1, whose buffer the next item takes.
    cp_wait<NBUF - 2>();
    __syncthreads();
    issue(s + NBUF - 1);
    const char* b = S.buf + (s % NBUF) * L::BUF;
    const bf16* dos = reinterpret_cast<const bf16*>(b);
    const bf16* vns = reinterpret_cast<const bf16*>(b + L::OFF_V);
    const bf16* hs = reinterpret_cast<const bf16*>(b + L::OFF_H);
    const bf16* dhs = reinterpret_cast<const bf16*>(b + L::OFF_D);
#pragma unroll
    for (int ks = 0; ks < SW / 16; ++ks) {
      // A = dO and Ṽ rows r0..: matrices (rows +0, v +0), (rows +8, v +0), (+0, +8), (+8, +8).
      unsigned ao[4], av[4];
      ldsm_x4(ao, dos + (r0 + 8 * lm_lo + lr) * SLD + 16 * ks + 8 * lm_hi);
      ldsm_x4(av, vns + (r0 + 8 * lm_lo + lr) * SLD + 16 * ks + 8 * lm_hi);
      // dP += dO Ṽᵀ (B = Ṽ rows t' = pc0 + 16 jp..).
#pragma unroll
      for (int jp = 0; jp < NPT / 2; ++jp) {
        if (jp > pdiag) break;
        unsigned r[4];
        ldsm_x4(r, vns + (pc0 + 16 * jp + 8 * lm_hi + lr) * SLD + 16 * ks + 8 * lm_lo);
        mma_bf16(dp[2 * jp], ao, r[0], r[1]);
        mma_bf16(dp[2 * jp + 1], ao, r[2], r[3]);
      }
      // dQ1 += dO h_cᵀ and dKi += Ṽ dh_cᵀ (B = h_c and dh_c rows kc0 + 16 jp..).
#pragma unroll
      for (int jp = 0; jp < NKT / 2; ++jp) {
        const int off = (kc0 + 16 * jp + 8 * lm_hi + lr) * SLD + 16 * ks + 8 * lm_lo;
        unsigned r[4], d[4];
        ldsm_x4(r, hs + off);
        mma_bf16(dq1[2 * jp], ao, r[0], r[1]);
        mma_bf16(dq1[2 * jp + 1], ao, r[2], r[3]);
        ldsm_x4(d, dhs + off);
        mma_bf16(dki[2 * jp], av, d[0], d[1]);
        mma_bf16(dki[2 * jp + 1], av, d[2], d[3]);
      }
    }
  }
  cp_wait<0>();     // q and k
  __syncthreads();  // every slice buffer but q's is dead
  const bf16* qs = reinterpret_cast<const bf16*>(S.buf + (nsl % NBUF) * L::BUF);
  const bf16* kls = S.k;
  bf16* pb = reinterpret_cast<bf16*>(S.buf + ((nsl - 1) % NBUF) * L::BUF);
  const float gi[2] = {S.G[i0], S.G[i0 + 8]};

  // pb = s dP ⊙ Γ on j <= i < len (bf16), every element of this warp's tiles. The f32 values
  // replace dP in its registers (0 off the mask): E below is them times QKᵀ, no second e^.
#pragma unroll
  for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = i0 + 8 * hf, j = pc0 + 8 * nt + 2 * qd;
      float& x0 = dp[nt][2 * hf];
      float& x1 = dp[nt][2 * hf + 1];
      x0 = (j <= i && i < len) ? scale * x0 * __expf(gi[hf] - S.G[j]) : 0.f;
      x1 = (j + 1 <= i && i < len) ? scale * x1 * __expf(gi[hf] - S.G[j + 1]) : 0.f;
      *reinterpret_cast<unsigned*>(pb + i * LD64 + j) = pack_bf2(x0, x1);
    }
  __syncthreads();  // pb complete

  // dq = s γ_i dQ1 + pb K; qdot_i = q_i · (s γ_i dQ1)_i over this warp's columns.
  {
    const float f[2] = {scale * S.gam[i0], scale * S.gam[i0 + 8]};
    scale_rows_dot<NKT>(dq1, f, qs + kc0, QLD, i0, S.qp + sp * CH);
    // A = pb rows r0.., columns j = 16 kk.. (zero above the diagonal: kk <= rb only); B = K rows
    // j, columns kc0 + 16 jp.. by ldmatrix.trans.
    for (int kk = 0; kk <= rb; ++kk) {
      unsigned ap[4];
      ldsm_x4(ap, pb + (r0 + 8 * lm_lo + lr) * LD64 + 16 * kk + 8 * lm_hi);
#pragma unroll
      for (int jp = 0; jp < NKT / 2; ++jp) {
        unsigned r[4];
        ldsm_x4_t(r, kls + (16 * kk + 8 * lm_lo + lr) * QLD + kc0 + 16 * jp + 8 * lm_hi);
        mma_bf16(dq1[2 * jp], ap, r[0], r[1]);
        mma_bf16(dq1[2 * jp + 1], ap, r[2], r[3]);
      }
    }
    store_grad_rows<NKT>(dq1, dq + (long)h * K + kc0, H * K, start, i0, len);
  }

  // dk (partial) = δ_i dKi + pbᵀ Q; kdot_i = k_i · (δ_i dKi)_i over this warp's columns.
  {
    const float f[2] = {S.dec[i0], S.dec[i0 + 8]};
    scale_rows_dot<NKT>(dki, f, kls + kc0, QLD, i0, S.kp + sp * CH);
    // A = pbᵀ rows r0.., columns j = 16 kk.. (kk >= rb only) by ldmatrix.trans: matrices
    // (j +0, i +0), (j +0, i +8), (j +8, i +0), (j +8, i +8); B = Q rows j by ldmatrix.trans.
    for (int kk = rb; kk < 4; ++kk) {
      unsigned ap[4];
      ldsm_x4_t(ap, pb + (16 * kk + 8 * lm_hi + lr) * LD64 + r0 + 8 * lm_lo);
#pragma unroll
      for (int jp = 0; jp < NKT / 2; ++jp) {
        unsigned r[4];
        ldsm_x4_t(r, qs + (16 * kk + 8 * lm_lo + lr) * QLD + kc0 + 16 * jp + 8 * lm_hi);
        mma_bf16(dki[2 * jp], ap, r[0], r[1]);
        mma_bf16(dki[2 * jp + 1], ap, r[2], r[3]);
      }
    }
    store_grad_rows<NKT>(dki, dk + (long)h * K + kc0, H * K, start, i0, len);
  }

  // E = (s dP ⊙ Γ) ⊙ QKᵀ on j <= i < len over this warp's dP tiles (the f32 pb values in dp, 0
  // off the mask; QKᵀ from bf16 q, k, f32 accumulation); row sums over its columns and column
  // sums over its rows.
  {
    float pa[NPT][4];
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) pa[nt][e] = 0.f;
#pragma unroll 4
    for (int kk = 0; kk < K / 16; ++kk) {
      unsigned aq[4];
      ldsm_x4(aq, qs + (r0 + 8 * lm_lo + lr) * QLD + 16 * kk + 8 * lm_hi);
#pragma unroll
      for (int jp = 0; jp < NPT / 2; ++jp) {
        if (jp > pdiag) break;
        unsigned r[4];
        ldsm_x4(r, kls + (pc0 + 16 * jp + 8 * lm_hi + lr) * QLD + 16 * kk + 8 * lm_lo);
        mma_bf16(pa[2 * jp], aq, r[0], r[1]);
        mma_bf16(pa[2 * jp + 1], aq, r[2], r[3]);
      }
    }
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt) {
      float cs[2] = {0.f, 0.f};
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float x = dp[nt][2 * hf + e] * pa[nt][2 * hf + e];
          rs[hf] += x;
          cs[e] += x;
        }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 4);
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 8);
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 16);
      }
      if (g == 0) {
        S.csp[rb * CH + pc0 + 8 * nt + 2 * qd] = cs[0];
        S.csp[rb * CH + pc0 + 8 * nt + 2 * qd + 1] = cs[1];
      }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      rs[hf] += __shfl_xor_sync(0xffffffffu, rs[hf], 1);
      rs[hf] += __shfl_xor_sync(0xffffffffu, rs[hf], 2);
      if (qd == 0) S.rsp[sp * CH + i0 + 8 * hf] = rs[hf];
    }
  }
  __syncthreads();  // the row-dot and E-sum partials are complete

  // Partial dG, by warp 0: every sum over the partials in a fixed order; Σ kdot as a warp sum.
  if (warp == 0) {
    float ksum = 0.f;
    for (int r = lane; r < len; r += 32) {
      float kd = 0.f;
#pragma unroll
      for (int x = 0; x < L::NS; ++x) kd += S.kp[x * CH + r];
      ksum += kd;
    }
    ksum = warp_sum(ksum);
    sd = warp_sum(sd);
    for (int i = lane; i < len; i += 32) {
      float rsum = 0.f, csum = 0.f, qdt = 0.f, kdt = 0.f;
#pragma unroll
      for (int x = 0; x < L::NS; ++x) {
        rsum += S.rsp[x * CH + i];
        qdt += S.qp[x * CH + i];
        kdt += S.kp[x * CH + i];
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) csum += S.csp[x * CH + i];
      float val = rsum - csum + qdt - kdt;
      if (i == len - 1) val += ksum + S.gam[len - 1] * sd;
      dg[(long)(start + i) * H + h] = val;
    }
  }
}

// One warp's acc (NT 16 × 8 tiles) = rows 16 rb.. of Tᵀ times B (bf16, row stride ld, NT·8
// columns from b): Σ over k-blocks kk ≥ rb (T is lower triangular), A = Tᵀ by ldmatrix.trans of
// tb ([64][LD64] bf16), B by ldmatrix.trans.
template <int NT>
__device__ __forceinline__ void tt_rows(float (*acc)[4], const bf16* tb, int rb, const bf16* b,
                                        int ld) {
  const int lane = threadIdx.x & 31, lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  for (int kk = rb; kk < 4; ++kk) {
    unsigned at[4];
    ldsm_x4_t(at, tb + (16 * kk + 8 * lm_hi + lr) * LD64 + 16 * rb + 8 * lm_lo);
#pragma unroll
    for (int jp = 0; jp < NT / 2; ++jp) {
      unsigned r[4];
      ldsm_x4_t(r, b + (16 * kk + 8 * lm_lo + lr) * ld + 16 * jp + 8 * lm_hi);
      mma_bf16(acc[2 * jp], at, r[0], r[1]);
      mma_bf16(acc[2 * jp + 1], at, r[2], r[3]);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Kernel 7: WY backward per (chunk, head). Loop over V slices: dW' = dṼ h_cᵀ (dW = −dW'),
// dTv = dṼ Vᵀ, dVβ = Tᵀ dṼ (→ dv = β dVβ, dβ += Σ dVβ ⊙ V). Then dT = dTv diag(β) +
// dW Kᵀ diag(βγ), dKβγ = Tᵀ dW, dM = −Tᵀ strictLower(dT) Tᵀ (tf32), and the M backward. Adds to
// the partial dk and dG of kernel 6, reverse-cumsums dG into dg, writes dbeta.
//
// v5, the register-resident style of kernel 6 (raw mma.sync + ldmatrix). v4 (wmma) was bound by
// shared-memory wavefronts: every tile went through a staging tile and back, the tf32 operands
// were wmma loads of f32 arrays, and the M backward made elementwise passes over 64×64 f32 arrays.
// 4·NS warps (NS = 2; 4 at K = 256): warp w owns the rows [16 rb, 16 rb + 16), rb = w mod 4, and,
// with sp = w / 4, the columns [sp·K/NS, +K/NS) of dW' and dk and [sp·64/NS, +64/NS) of every
// 64×64 matrix (dTv, dT, TMP, dM) and of each slice's dVβ. One ownership for all 64×64 matrices
// means the M backward finds dT's K-side factor (KKᵀ) and dM in its own registers; tiles above
// the diagonal block are not formed.
//   Loop (64-column slices of dṼ, V, h_c through NBUF cp.async buffers, one group per slice
//   issued NBUF − 1 ahead, one barrier per slice): dW' and dTv accumulate in registers; dVβ is
//   formed per slice (A = Tᵀ by ldmatrix.trans of bf16 T, B = dṼ by ldmatrix.trans) and leaves
//   at once as β dVβ (bf16 to global) and the row dot with V (registers, summed over slices).
//   After the loop the slice buffers hold dW (bf16, the only loop result other warps need), the
//   tf32 dT and TMP, and T in f32. dKβγ = Tᵀ dW and dT (with KKᵀ, sharing the B = K fragments)
//   are formed from registers; dk's accumulators start as dk_partial + βγ dKβγ and receive
//   dMm K + dMmᵀ K at the end (dMm = bf16(dM β_i Γ), through shared memory like kernel 6's pb).
//   The T-chain runs on mma.m16n8k8 tf32 with the operands rounded once (cvt.rna) where they are
//   stored, which is where wmma's __float_to_tf32 rounded them: same values.
// Row and column sums (dβ_V, z = rowdot(dKβγ, K), the M-backward sums) are per-warp partials
// by quad / column shuffles, added by warp 0 in a fixed order (deterministic), which also does
// the reverse cumsum of dG with shuffles.

template <int K>
struct WySm {
  static constexpr int NS = (K >= 256) ? 4 : 2;  // column splits (warps per 16-row block)
  static constexpr int NW = 4 * NS;
  static constexpr int MINB = (K >= 256) ? 1 : 2;  // CTAs per SM the registers are capped for
  // Slice buffers: 2 at K = 128 (2 CTAs per SM); 3 at K = 64, where the post-loop arrays need
  // them, and at K = 256, whose one CTA per SM would otherwise have at most one slice in flight.
  static constexpr int NBUF = (K == 128) ? 2 : 3;
  static constexpr int KW = K / NS, PW = CH / NS;  // dW'/dk and 64×64 columns per warp
  static constexpr int KLD = KTile<K>::LD;         // row stride of k and dW (bf16)
  static constexpr int MLD = 72;                   // f32 row stride of TMP (column reads)
  // A slice buffer: dṼ, V [64][LD64], h_c [K][LD64] (bf16).
  static constexpr unsigned OFF_V = CH * LD64 * 2, OFF_H = 2 * CH * LD64 * 2,
                            BUF = OFF_H + K * LD64 * 2;
  // After the loop, in the slice buffers: dW [64][KLD] bf16 (then dMm [64][LD64] in its place),
  // dT [64][LF64], TMP [64][MLD] and T [64][LF64] f32.
  static constexpr unsigned OFF_DT = CH * KLD * 2, OFF_TMP = OFF_DT + CH * LF64 * 4,
                            OFF_TF = OFF_TMP + CH * MLD * 4, POST = OFF_TF + CH * LF64 * 4;
  static_assert(POST <= NBUF * BUF, "the post-loop arrays fit in the slice buffers");
  static_assert(CH * LD64 <= CH * KLD, "dMm fits in dW's place");
  static_assert(BUF % 128 == 0 && OFF_DT % 128 == 0 && OFF_TMP % 128 == 0 && OFF_TF % 128 == 0,
                "arrays start at 128-byte boundaries");
  char* buf;                      // NBUF x BUF
  bf16* k;                        // [64][KLD], loaded by kernel 6 (KTile)
  bf16* tb;                       // [64][LD64] T (bf16)
  float *G, *bs, *gam, *bg, *dgp;  // [64]: G, β, γ, βγ, kernel 6's partial dG
  float *dbp, *zp, *rsp, *dbmp;   // [NS][64]: per-split partials of dβ_V, z, Σ_j x, Σ_j y
  float* csp;                     // [4][64]: per-row-block partials of Σ_i x
  __device__ void carve(Carve& c) {
    k = KTile<K>::take(c);
    buf = c.take<char>(NBUF * BUF);
    tb = c.take<bf16>(CH * LD64);
    G = c.take<float>(CH);
    bs = c.take<float>(CH);
    gam = c.take<float>(CH);
    bg = c.take<float>(CH);
    dgp = c.take<float>(CH);
    dbp = c.take<float>(NS * CH);
    zp = c.take<float>(NS * CH);
    rsp = c.take<float>(NS * CH);
    dbmp = c.take<float>(NS * CH);
    csp = c.take<float>(4 * CH);
  }
};
// The host launches kernels 6 and 7 with one thread count (ChunkKernels::bwd_threads).
static_assert(DqkSm<64>::NW == WySm<64>::NW && DqkSm<128>::NW == WySm<128>::NW &&
                  DqkSm<256>::NW == WySm<256>::NW,
              "dqk and wy run the same number of warps");

// Not inlined: see dqk_then_wy.
template <int K>
__device__ __noinline__ void wy_impl(const bf16* __restrict__ v, const float* __restrict__ beta,
                                     const float* __restrict__ gc, const float* __restrict__ tmat,
                                     const bf16* __restrict__ dvnew, const bf16* __restrict__ hst,
                                     const int* __restrict__ ctab, int H, int V,
                                     bf16* __restrict__ dk, bf16* __restrict__ dv,
                                     float* __restrict__ dg, float* __restrict__ dbeta, int cg,
                                     int h) {
  extern __shared__ __align__(128) char smem[];
  Carve cv(smem);
  typedef WySm<K> L;
  L S;
  S.carve(cv);
  constexpr int NS = L::NS, KW = L::KW, PW = L::PW, NBUF = L::NBUF, KLD = L::KLD, MLD = L::MLD;
  constexpr int NTH = L::NW * 32;
  constexpr int NKT = KW / 8;  // accumulator tiles of a warp's dW' (and dk) rows
  constexpr int NPT = PW / 8;  // of its rows of a 64×64 matrix (and of a slice's dVβ)
  const int start = ctab[2 * cg], len = ctab[2 * cg + 1];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  // ldmatrix row addresses: lane → (matrix lane >> 3, row lane & 7).
  const int lr = lane & 7, lm_lo = (lane >> 3) & 1, lm_hi = lane >> 4;
  const int rb = warp & 3, r0 = 16 * rb, sp = warp >> 2, kc0 = sp * KW, pc0 = sp * PW;
  const int i0 = r0 + g;
  const int pdiag = rb - pc0 / 16;  // 64×64 tile pairs 0..pdiag are on or below the diagonal
  const int nsl = V / 64;
  const long vld = (long)H * V;
  const bf16* dv0 = dvnew + ((long)start * H + h) * V;
  const bf16* vv0 = v + ((long)start * H + h) * V;
  const bf16* hc0 = hst + ((long)cg * H + h) * K * V;
  const float* tsrc = tmat + ((long)cg * H + h) * (CH * CH);

  // Item it: slice it into buffer it mod NBUF; beyond the last slice an empty group (uniform
  // wait counts). k is in place already: kernel 6 loaded it (KTile).
  auto issue = [&](int it) {
    if (it < nsl) {
      char* b = S.buf + (it % NBUF) * L::BUF;
      const int v0 = it * 64;
      load_rows_async<64, NTH>(reinterpret_cast<bf16*>(b), LD64, dv0 + v0, vld, len);
      load_rows_async<64, NTH>(reinterpret_cast<bf16*>(b + L::OFF_V), LD64, vv0 + v0, vld, len);
      load_rows_async<64, NTH, bf16, false, K>(reinterpret_cast<bf16*>(b + L::OFF_H), LD64,
                                               hc0 + v0, V, K);
    }
    cp_commit();
  };
#pragma unroll
  for (int it = 0; it < NBUF - 1; ++it) issue(it);

  // T (bf16) straight from global, and the per-row scalars (published by the loop's first
  // barrier). All of this thread's T loads are issued before any is used, and the scalars' loads
  // go out before T is converted: as a loop of load-then-store, the T loads were four DRAM
  // latencies in a row, the largest long-scoreboard stall of the kernel (session 19, call 4).
  constexpr int TPT = CH * CH / 4 / NTH;  // float4 pieces of T per thread
  static_assert(TPT * 4 * NTH == CH * CH, "T splits evenly over the threads");
  float4 tv[TPT];
#pragma unroll
  for (int p = 0; p < TPT; ++p) {
    const int idx = tid + p * NTH;
    tv[p] = *reinterpret_cast<const float4*>(tsrc + (idx >> 4) * CH + ((idx & 15) << 2));
  }
  if (tid < CH) {
    const bool ok = tid < len;
    const long o = (long)(start + tid) * H + h;
    const float gt = ok ? gc[o] : 0.f, b = ok ? beta[o] : 0.f, ga = ok ? __expf(gt) : 0.f;
    S.G[tid] = gt;
    S.bs[tid] = b;
    S.gam[tid] = ga;
    S.bg[tid] = b * ga;
    S.dgp[tid] = ok ? dg[o] : 0.f;  // partial dG of kernel 6
  }
#pragma unroll
  for (int p = 0; p < TPT; ++p) {
    const int idx = tid + p * NTH, i = idx >> 4, j = (idx & 15) << 2;
    *reinterpret_cast<uint2*>(S.tb + i * LD64 + j) =
        make_uint2(pack_bf2(tv[p].x, tv[p].y), pack_bf2(tv[p].z, tv[p].w));
  }

  // Accumulators: tile nt of dw is columns kc0 + 8nt.., of dtv columns pc0 + 8nt..; element e
  // is row i0 + 8 (e >> 1), column + 2qd + (e & 1).
  float dw[NKT][4], dtv[NPT][4], dbv[2] = {0.f, 0.f};
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dw[nt][e] = 0.f;
#pragma unroll
  for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dtv[nt][e] = 0.f;

  for (int s = 0; s < nsl; ++s) {
    // Slice s landed (only the NBUF − 2 newer groups may be pending); after the barrier every
    // warp is done with slice s − 1, whose buffer the next item takes.
    cp_wait<NBUF - 2>();
    __syncthreads();
    issue(s + NBUF - 1);
    const char* b = S.buf + (s % NBUF) * L::BUF;
    const bf16* dvs = reinterpret_cast<const bf16*>(b);
    const bf16* vs = reinterpret_cast<const bf16*>(b + L::OFF_V);
    const bf16* hs = reinterpret_cast<const bf16*>(b + L::OFF_H);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      // A = dṼ rows r0..: matrices (rows +0, v +0), (rows +8, v +0), (+0, +8), (+8, +8).
      unsigned ad[4];
      ldsm_x4(ad, dvs + (r0 + 8 * lm_lo + lr) * LD64 + 16 * ks + 8 * lm_hi);
      // dTv += dṼ Vᵀ (B = V rows pc0 + 16 jp..).
#pragma unroll
      for (int jp = 0; jp < NPT / 2; ++jp) {
        if (jp > pdiag) break;
        unsigned r[4];
        ldsm_x4(r, vs + (pc0 + 16 * jp + 8 * lm_hi + lr) * LD64 + 16 * ks + 8 * lm_lo);
        mma_bf16(dtv[2 * jp], ad, r[0], r[1]);
        mma_bf16(dtv[2 * jp + 1], ad, r[2], r[3]);
      }
      // dW' += dṼ h_cᵀ (B = h_c rows kc0 + 16 jp..).
#pragma unroll
      for (int jp = 0; jp < NKT / 2; ++jp) {
        unsigned r[4];
        ldsm_x4(r, hs + (kc0 + 16 * jp + 8 * lm_hi + lr) * LD64 + 16 * ks + 8 * lm_lo);
        mma_bf16(dw[2 * jp], ad, r[0], r[1]);
        mma_bf16(dw[2 * jp + 1], ad, r[2], r[3]);
      }
    }
    // dVβ = Tᵀ dṼ on this warp's rows and slice columns pc0..: (Tᵀ)_{it} = T_ti, zero for t < i,
    // so t from 16 rb. A = Tᵀ by ldmatrix.trans of tb (matrices (t +0, i +0), (t +0, i +8),
    // (t +8, i +0), (t +8, i +8)); B = dṼ rows t by ldmatrix.trans.
    float dvb[NPT][4];
    tt_rows<NPT>(dvb, S.tb, rb, dvs + pc0, LD64);
    // dv = β_i dVβ (bf16, global); dβ_V += dVβ ⊙ V over this lane's columns.
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = i0 + 8 * hf;
      float a = 0.f;
#pragma unroll
      for (int nt = 0; nt < NPT; ++nt) {
        const unsigned x =
            *reinterpret_cast<const unsigned*>(vs + i * LD64 + pc0 + 8 * nt + 2 * qd);
        a += dvb[nt][2 * hf] * bf_lo(x);
        a += dvb[nt][2 * hf + 1] * bf_hi(x);
      }
      dbv[hf] += a;
      const float be = S.bs[i];
#pragma unroll
      for (int nt = 0; nt < NPT; ++nt) {
        dvb[nt][2 * hf] *= be;
        dvb[nt][2 * hf + 1] *= be;
      }
    }
    store_grad_rows<NPT>(dvb, dv + (long)h * V + s * 64 + pc0, H * V, start, i0, len);
  }

  // Kernel 6's partial dk (bf16 pairs) for this lane's elements: loads issued now, added after
  // Tᵀ dW.
  unsigned pv[NKT][2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = i0 + 8 * hf;
    const bf16* src = dk + ((long)(start + i) * H + h) * K + kc0 + 2 * qd;
#pragma unroll
    for (int nt = 0; nt < NKT; ++nt)
      pv[nt][hf] = i < len ? *reinterpret_cast<const unsigned*>(src + 8 * nt) : 0u;
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    dbv[hf] += __shfl_xor_sync(0xffffffffu, dbv[hf], 1);
    dbv[hf] += __shfl_xor_sync(0xffffffffu, dbv[hf], 2);
    if (qd == 0) S.dbp[sp * CH + i0 + 8 * hf] = dbv[hf];
  }
  __syncthreads();  // every warp is done with the slice buffers: the post-loop arrays take them
  bf16* dwb = reinterpret_cast<bf16*>(S.buf);
  bf16* pbm = dwb;  // dMm, once dW is dead
  float* DT = reinterpret_cast<float*>(S.buf + L::OFF_DT);
  float* TMP = reinterpret_cast<float*>(S.buf + L::OFF_TMP);
  float* TF = reinterpret_cast<float*>(S.buf + L::OFF_TF);
  load_rows_async<CH, NTH, float>(TF, LF64, tsrc, CH, CH);  // T (f32), waited for before the T-chain
  cp_commit();
  // dW = −dW' (bf16) for the other warps; dTv diag(β) stays here.
#pragma unroll
  for (int nt = 0; nt < NKT; ++nt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      *reinterpret_cast<unsigned*>(dwb + (i0 + 8 * hf) * KLD + kc0 + 8 * nt + 2 * qd) =
          pack_bf2(-dw[nt][2 * hf], -dw[nt][2 * hf + 1]);
#pragma unroll
  for (int nt = 0; nt < NPT; ++nt) {
    const int j = pc0 + 8 * nt + 2 * qd;
    const float b0 = S.bs[j], b1 = S.bs[j + 1];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      dtv[nt][2 * hf] *= b0;
      dtv[nt][2 * hf + 1] *= b1;
    }
  }
  __syncthreads();  // dW complete

  // dk accumulators: dk_partial + βγ_i dKβγ, dKβγ = Tᵀ dW (A = Tᵀ as in the loop, B = dW rows t
  // by ldmatrix.trans); z_i = k_i · dKβγ_i over this warp's columns.
  float xk[NKT][4];
  tt_rows<NKT>(xk, S.tb, rb, dwb + kc0, KLD);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int i = i0 + 8 * hf;
    const float f = S.bg[i];
    float a = 0.f;
#pragma unroll
    for (int nt = 0; nt < NKT; ++nt) {
      const unsigned x = *reinterpret_cast<const unsigned*>(S.k + i * KLD + kc0 + 8 * nt + 2 * qd);
      a += xk[nt][2 * hf] * bf_lo(x);
      a += xk[nt][2 * hf + 1] * bf_hi(x);
      xk[nt][2 * hf] = bf_lo(pv[nt][hf]) + f * xk[nt][2 * hf];
      xk[nt][2 * hf + 1] = bf_hi(pv[nt][hf]) + f * xk[nt][2 * hf + 1];
    }
    a += __shfl_xor_sync(0xffffffffu, a, 1);
    a += __shfl_xor_sync(0xffffffffu, a, 2);
    if (qd == 0) S.zp[sp * CH + i] = a;
  }

  // dT = strictLower(dTv diag(β) + (dW Kᵀ) diag(βγ)) and KKᵀ on this warp's tiles (one pass
  // over K: both take B = K rows pc0 + 16 jp..). dT goes to shared memory tf32-rounded.
  float akk[NPT][4];
  {
    float t2[NPT][4];
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        t2[nt][e] = 0.f;
        akk[nt][e] = 0.f;
      }
#pragma unroll 2
    for (int kk = 0; kk < K / 16; ++kk) {
      unsigned aw[4], ak[4];
      ldsm_x4(aw, dwb + (r0 + 8 * lm_lo + lr) * KLD + 16 * kk + 8 * lm_hi);
      ldsm_x4(ak, S.k + (r0 + 8 * lm_lo + lr) * KLD + 16 * kk + 8 * lm_hi);
#pragma unroll
      for (int jp = 0; jp < NPT / 2; ++jp) {
        if (jp > pdiag) break;
        unsigned r[4];
        ldsm_x4(r, S.k + (pc0 + 16 * jp + 8 * lm_hi + lr) * KLD + 16 * kk + 8 * lm_lo);
        mma_bf16(t2[2 * jp], aw, r[0], r[1]);
        mma_bf16(t2[2 * jp + 1], aw, r[2], r[3]);
        mma_bf16(akk[2 * jp], ak, r[0], r[1]);
        mma_bf16(akk[2 * jp + 1], ak, r[2], r[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt) {
      const int j = pc0 + 8 * nt + 2 * qd;
      const float f0 = S.bg[j], f1 = S.bg[j + 1];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = i0 + 8 * hf;
        const float x0 = j < i ? dtv[nt][2 * hf] + t2[nt][2 * hf] * f0 : 0.f;
        const float x1 = j + 1 < i ? dtv[nt][2 * hf + 1] + t2[nt][2 * hf + 1] * f1 : 0.f;
        *reinterpret_cast<float2*>(DT + i * LF64 + j) = make_float2(tf32r(x0), tf32r(x1));
      }
    }
  }
  cp_wait<0>();     // T (f32)
  __syncthreads();  // dT complete

  // TMP = dT Tᵀ (tf32) on the tiles on or below the diagonal block (the only ones the next
  // product reads): dT_ic = 0 for c >= i, so c < 16 (r + 1) for row block r. A = dT rows, B =
  // (Tᵀ)_cj = T_jc, both scalar f32 reads (row stride 68: conflict-free). TMP goes through shared
  // memory, so its tiles need not follow the ownership above: row block r costs 2 (r + 1) k-steps
  // a tile, and by ownership the warps of row block 3 had 8 of them on 4 tiles while others had
  // none. With 8 warps (NS = 2) each takes one or two 16 × 16 units instead (rows 3: warps 0–3;
  // rows 2: warps 4–6; rows 1 and 0: warps 7 and 4), 16 products each where the busiest warps
  // had 32. Each element is the same sum in the same order either way.
  {
    // Row block r, n8 column tiles j0 .. j0 + nj − 1 (nj <= 4).
    auto tmp_tiles = [&](int r, int j0, int nj) {
      const int ri = 16 * r + g;
      float tm[4][4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) tm[nt][e] = 0.f;
      for (int ks = 0; ks < 2 * (r + 1); ++ks) {
        const float* a = DT + ri * LF64 + 8 * ks + qd;
        const unsigned af[4] = {__float_as_uint(a[0]), __float_as_uint(a[8 * LF64]),
                                __float_as_uint(a[4]), __float_as_uint(a[8 * LF64 + 4])};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          if (nt >= nj) break;
          const float* bp = TF + (8 * (j0 + nt) + g) * LF64 + 8 * ks + qd;
          mma_tf32(tm[nt], af, tf32_rna(bp[0]), tf32_rna(bp[4]));
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        if (nt >= nj) break;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          *reinterpret_cast<float2*>(TMP + (ri + 8 * hf) * MLD + 8 * (j0 + nt) + 2 * qd) =
              make_float2(tf32r(tm[nt][2 * hf]), tf32r(tm[nt][2 * hf + 1]));
      }
    };
    if constexpr (NS == 2) {
      if (warp < 4) {
        tmp_tiles(3, 2 * warp, 2);
      } else if (warp < 7) {
        tmp_tiles(2, 2 * (warp - 4), 2);
        if (warp == 4) tmp_tiles(0, 0, 2);
      } else {
        tmp_tiles(1, 0, 4);
      }
    } else if (pdiag >= 0) {
      // 16 warps, one unit each (row block rb, columns pc0..): at most 8 k-steps already.
      tmp_tiles(rb, pc0 / 8, 2 * (pdiag + 1) < NPT ? 2 * (pdiag + 1) : NPT);
    }
  }
  __syncthreads();  // TMP complete

  // −dM = Tᵀ TMP (tf32) on this warp's tiles: (Tᵀ)_ic = T_ci = 0 for c < i, so c >= 16 rb.
  // Then the M backward per element (j < i < len): dm = −(Tᵀ TMP)_ij, Γ_ij = e^{G_i − G_j},
  // ag = (KKᵀ)_ij Γ_ij; dMm = bf16(dm β_i Γ_ij) (dk term), x = dm β_i ag (dG), y = dm ag (dβ).
  {
    float d2[NPT][4];
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) d2[nt][e] = 0.f;
    for (int ks = 2 * rb; ks < 8; ++ks) {
      const float* a = TF + (8 * ks + qd) * LF64 + i0;
      const unsigned af[4] = {tf32_rna(a[0]), tf32_rna(a[8]), tf32_rna(a[4 * LF64]),
                              tf32_rna(a[4 * LF64 + 8])};
#pragma unroll
      for (int nt = 0; nt < NPT; ++nt) {
        if (nt / 2 > pdiag) break;
        const float* bp = TMP + (8 * ks + qd) * MLD + pc0 + 8 * nt + g;
        mma_tf32(d2[nt], af, __float_as_uint(bp[0]), __float_as_uint(bp[4 * MLD]));
      }
    }
    const float gi[2] = {S.G[i0], S.G[i0 + 8]}, bi[2] = {S.bs[i0], S.bs[i0 + 8]};
    float rs[2] = {0.f, 0.f}, ys[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < NPT; ++nt) {
      float cs[2] = {0.f, 0.f};
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = i0 + 8 * hf;
        float p[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = pc0 + 8 * nt + 2 * qd + e;
          p[e] = 0.f;
          if (j < i && i < len) {
            const float ge = __expf(gi[hf] - S.G[j]);
            const float dm = -d2[nt][2 * hf + e];
            const float ag = akk[nt][2 * hf + e] * ge;
            p[e] = dm * bi[hf] * ge;
            const float x = dm * bi[hf] * ag;
            rs[hf] += x;
            cs[e] += x;
            ys[hf] += dm * ag;
          }
        }
        *reinterpret_cast<unsigned*>(pbm + i * LD64 + pc0 + 8 * nt + 2 * qd) = pack_bf2(p[0], p[1]);
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 4);
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 8);
        cs[e] += __shfl_xor_sync(0xffffffffu, cs[e], 16);
      }
      if (g == 0) {
        S.csp[rb * CH + pc0 + 8 * nt + 2 * qd] = cs[0];
        S.csp[rb * CH + pc0 + 8 * nt + 2 * qd + 1] = cs[1];
      }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      rs[hf] += __shfl_xor_sync(0xffffffffu, rs[hf], 1);
      rs[hf] += __shfl_xor_sync(0xffffffffu, rs[hf], 2);
      ys[hf] += __shfl_xor_sync(0xffffffffu, ys[hf], 1);
      ys[hf] += __shfl_xor_sync(0xffffffffu, ys[hf], 2);
      if (qd == 0) {
        S.rsp[sp * CH + i0 + 8 * hf] = rs[hf];
        S.dbmp[sp * CH + i0 + 8 * hf] = ys[hf];
      }
    }
  }
  __syncthreads();  // dMm and every partial complete

  // dβ and dg by warp 0 (lane l: rows 2l, 2l + 1), the partials summed in a fixed order:
  // dβ_i = dβ_V + γ_i z_i + Σ_j y_ij; dG_i += βγ_i z_i + Σ_j x_ij − Σ_j x_ji, then dg = the
  // reverse cumsum of dG (rows >= len hold 0): suffix sums of the pair sums by shuffles.
  if (warp == 0) {
    float dgv[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = 2 * lane + e;
      float z = 0.f, db = 0.f, r = 0.f, y = 0.f, c = 0.f;
#pragma unroll
      for (int x = 0; x < NS; ++x) {
        z += S.zp[x * CH + i];
        db += S.dbp[x * CH + i];
        r += S.rsp[x * CH + i];
        y += S.dbmp[x * CH + i];
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) c += S.csp[x * CH + i];
      dgv[e] = S.dgp[i] + S.bg[i] * z + r - c;
      if (i < len) dbeta[(long)(start + i) * H + h] = db + S.gam[i] * z + y;
    }
    float s = dgv[0] + dgv[1];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float t = __shfl_down_sync(0xffffffffu, s, o);
      if (lane + o < 32) s += t;
    }
    float nx = __shfl_down_sync(0xffffffffu, s, 1);
    if (lane == 31) nx = 0.f;
    const float o1 = dgv[1] + nx, o0 = dgv[0] + o1;
    if (2 * lane < len) dg[(long)(start + 2 * lane) * H + h] = o0;
    if (2 * lane + 1 < len) dg[(long)(start + 2 * lane + 1) * H + h] = o1;
  }

  // dk = dk_partial + βγ dKβγ + dMm K + dMmᵀ K: A = dMm rows r0.. (kk <= rb; zero above the
  // diagonal) resp. dMmᵀ by ldmatrix.trans (kk >= rb); B = K rows 16 kk.. by ldmatrix.trans.
  for (int kk = 0; kk <= rb; ++kk) {
    unsigned ap[4];
    ldsm_x4(ap, pbm + (r0 + 8 * lm_lo + lr) * LD64 + 16 * kk + 8 * lm_hi);
#pragma unroll
    for (int jp = 0; jp < NKT / 2; ++jp) {
      unsigned r[4];
      ldsm_x4_t(r, S.k + (16 * kk + 8 * lm_lo + lr) * KLD + kc0 + 16 * jp + 8 * lm_hi);
      mma_bf16(xk[2 * jp], ap, r[0], r[1]);
      mma_bf16(xk[2 * jp + 1], ap, r[2], r[3]);
    }
  }
  for (int kk = rb; kk < 4; ++kk) {
    unsigned ap[4];
    ldsm_x4_t(ap, pbm + (16 * kk + 8 * lm_hi + lr) * LD64 + r0 + 8 * lm_lo);
#pragma unroll
    for (int jp = 0; jp < NKT / 2; ++jp) {
      unsigned r[4];
      ldsm_x4_t(r, S.k + (16 * kk + 8 * lm_lo + lr) * KLD + kc0 + 16 * jp + 8 * lm_hi);
      mma_bf16(xk[2 * jp], ap, r[0], r[1]);
      mma_bf16(xk[2 * jp + 1], ap, r[2], r[3]);
    }
  }
  store_grad_rows<NKT>(xk, dk + (long)h * K + kc0, H * K, start, i0, len);
}

// ------------------------------------------------------------------------------------------
// Decode: one token per sequence, one block of NT threads per (V-slice of BV columns, head,
// sequence). Fuses the L2 norm of q and k (eps 1e-6), β = bscale·sigmoid(b) (bscale 2 under
// allow_neg_eigval) and α = exp(−exp(A_log)·softplus(a + dt_bias)). The [K, BV] state slice is read once into
// registers (RPT float4 rows per thread, all loads issued before anything else) and written once,
// in place. With q̂, k̂ the normalised vectors and s the read-out scale:
//   u = β (v − α k̂ᵀS),  S' = α S + k̂ uᵀ,  o = s q̂ᵀS' = s (α q̂ᵀS + (q̂·k̂) u),
// so both dot products over K are taken on the state as loaded, and reduced together: within a
// thread (RPT rows), across the warp's row groups (shuffles), then across warps through one
// shared array and one barrier (each thread sums the NW warp partials of its 4 columns itself).
// Each warp computes the norms, q̂·k̂ and the gates redundantly, with shuffles only. The
// normalisation is applied to the sums (k̂ᵀS = |k|⁻¹ kᵀS), so the per-row q and k stay raw bf16.
//
// Thread t: columns c = 4 (t mod TPR) … +3 of the slice, rows r0 = RPT ⌊t / TPR⌋ … +RPT−1.

// `N` consecutive bf16 (N even, 2N-byte aligned) as N/2 packed pairs.
template <int N>
__device__ __forceinline__ void ld_bf16x(const bf16* p, unsigned* out) {
  static_assert(N == 2 || N == 4 || N % 8 == 0, "ld_bf16x");
  if constexpr (N == 2) {
    out[0] = *reinterpret_cast<const unsigned*>(p);
  } else if constexpr (N == 4) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    out[0] = x.x;
    out[1] = x.y;
  } else {
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
      const uint4 x = reinterpret_cast<const uint4*>(p)[j];
      out[4 * j] = x.x;
      out[4 * j + 1] = x.y;
      out[4 * j + 2] = x.z;
      out[4 * j + 3] = x.w;
    }
  }
}
// Element i of a packed bf16 array (i a compile-time constant after unrolling).
__device__ __forceinline__ float bf16_at(const unsigned* w, int i) {
  const unsigned x = w[i >> 1];
  return __uint_as_float((i & 1) ? (x & 0xffff0000u) : (x << 16));
}

template <int K, int V, int BV, int NT>
__device__ __forceinline__ void decode_impl(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                            const bf16* __restrict__ v,
                                            const float* __restrict__ a_in,
                                            const float* __restrict__ b_in,
                                            const float* __restrict__ a_log,
                                            const float* __restrict__ dt_bias,
                                            float* __restrict__ state, bf16* __restrict__ o, int H,
                                            float scale, float bscale, int group) {
  constexpr int TPR = BV / 4;    // threads across one row of the slice (4 columns each)
  constexpr int RG = NT / TPR;   // row groups
  constexpr int RPT = K / RG;    // rows per thread
  constexpr int NW = NT / 32;    // warps
  constexpr int KL = K / 32;     // q, k elements per lane for the norms
  static_assert(TPR >= 4 && TPR <= 32 && 32 % TPR == 0, "decode: BV in 16..128");
  static_assert(NT % 32 == 0 && RG * RPT == K && RPT >= 2 && RPT % 2 == 0, "decode tiling");
  static_assert(V % BV == 0, "decode: BV must divide V");
  __shared__ __align__(16) float red[2][NW][BV];  // per-warp partials of kᵀS, qᵀS

  const int v0 = blockIdx.x * BV, h = blockIdx.y, n = blockIdx.z;
  const long nh = (long)n * H + h;
  // q and k: [N, H / group, K] (GVA: value head h reads q/k head h / group), so row nh / group.
  const long nq = nh / group;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = (tid % TPR) * 4, r0 = (tid / TPR) * RPT;

  // 1. Every load up front: the state rows first, then the small inputs.
  float* sp = state + (nh * K + r0) * V + v0 + c;
  float4 s[RPT];
#pragma unroll
  for (int i = 0; i < RPT; ++i) s[i] = *reinterpret_cast<const float4*>(sp + i * V);
  unsigned kr[RPT / 2], qr[RPT / 2], kw[KL / 2], qw[KL / 2];
  ld_bf16x<RPT>(k + nq * K + r0, kr);
  ld_bf16x<RPT>(q + nq * K + r0, qr);
  ld_bf16x<KL>(k + nq * K + lane * KL, kw);
  ld_bf16x<KL>(q + nq * K + lane * KL, qw);
  const uint2 vraw = *reinterpret_cast<const uint2*>(v + nh * V + v0 + c);
  const float za = a_in[nh], zb = b_in[nh], al = a_log[h], db = dt_bias[h];

  // 2. Norms, q·k and gates, per warp.
  float sq = 0.f, sk = 0.f, sqk = 0.f;
#pragma unroll
  for (int j = 0; j < KL; ++j) {
    const float xq = bf16_at(qw, j), xk = bf16_at(kw, j);
    sq = fmaf(xq, xq, sq);
    sk = fmaf(xk, xk, sk);
    sqk = fmaf(xq, xk, sqk);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    sq += __shfl_xor_sync(0xffffffffu, sq, off);
    sk += __shfl_xor_sync(0xffffffffu, sk, off);
    sqk += __shfl_xor_sync(0xffffffffu, sqk, off);
  }
  const float iq = scale * rsqrtf(sq + 1e-6f);  // s / |q|
  const float ik = rsqrtf(sk + 1e-6f);          // 1 / |k|
  const float beta = bscale * __frcp_rn(1.f + __expf(-zb));
  const float z = za + db;
  const float spl = z > 20.f ? z : log1pf(__expf(z));
  const float alpha = __expf(-__expf(al) * spl);

  // 3. Raw partials kᵀS and qᵀS over this thread's rows, then over the warp's row groups.
  float4 pk = make_float4(0.f, 0.f, 0.f, 0.f), pq = pk;
#pragma unroll
  for (int i = 0; i < RPT; ++i) {
    const float kk = bf16_at(kr, i), qq = bf16_at(qr, i);
    pk.x = fmaf(kk, s[i].x, pk.x);
    pk.y = fmaf(kk, s[i].y, pk.y);
    pk.z = fmaf(kk, s[i].z, pk.z);
    pk.w = fmaf(kk, s[i].w, pk.w);
    pq.x = fmaf(qq, s[i].x, pq.x);
    pq.y = fmaf(qq, s[i].y, pq.y);
    pq.z = fmaf(qq, s[i].z, pq.z);
    pq.w = fmaf(qq, s[i].w, pq.w);
  }
#pragma unroll
  for (int off = TPR; off < 32; off <<= 1) {
    pk.x += __shfl_xor_sync(0xffffffffu, pk.x, off);
    pk.y += __shfl_xor_sync(0xffffffffu, pk.y, off);
    pk.z += __shfl_xor_sync(0xffffffffu, pk.z, off);
    pk.w += __shfl_xor_sync(0xffffffffu, pk.w, off);
    pq.x += __shfl_xor_sync(0xffffffffu, pq.x, off);
    pq.y += __shfl_xor_sync(0xffffffffu, pq.y, off);
    pq.z += __shfl_xor_sync(0xffffffffu, pq.z, off);
    pq.w += __shfl_xor_sync(0xffffffffu, pq.w, off);
  }
  if (lane < TPR) {
    *reinterpret_cast<float4*>(&red[0][warp][c]) = pk;
    *reinterpret_cast<float4*>(&red[1][warp][c]) = pq;
  }
  __syncthreads();

  // 4. u = β (v − α |k|⁻¹ kᵀS) for this thread's 4 columns; one thread per column quad writes o.
  float4 tk = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    const float4 x = *reinterpret_cast<const float4*>(&red[0][w][c]);
    tk.x += x.x;
    tk.y += x.y;
    tk.z += x.z;
    tk.w += x.w;
  }
  const float ak = alpha * ik;
  float4 u;
  u.x = beta * (__uint_as_float(vraw.x << 16) - ak * tk.x);
  u.y = beta * (__uint_as_float(vraw.x & 0xffff0000u) - ak * tk.y);
  u.z = beta * (__uint_as_float(vraw.y << 16) - ak * tk.z);
  u.w = beta * (__uint_as_float(vraw.y & 0xffff0000u) - ak * tk.w);
  if (tid < TPR) {
    float4 tq = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(&red[1][w][c]);
      tq.x += x.x;
      tq.y += x.y;
      tq.z += x.z;
      tq.w += x.w;
    }
    // o = s|q|⁻¹ (α qᵀS + |k|⁻¹ (q·k) u)
    const float qk = ik * sqk;
    __nv_bfloat162 o01 = __floats2bfloat162_rn(iq * fmaf(alpha, tq.x, qk * u.x),
                                               iq * fmaf(alpha, tq.y, qk * u.y));
    __nv_bfloat162 o23 = __floats2bfloat162_rn(iq * fmaf(alpha, tq.z, qk * u.z),
                                               iq * fmaf(alpha, tq.w, qk * u.w));
    uint2 ov;
    ov.x = *reinterpret_cast<unsigned*>(&o01);
    ov.y = *reinterpret_cast<unsigned*>(&o23);
    *reinterpret_cast<uint2*>(o + nh * V + v0 + c) = ov;
  }

  // 5. S' = α S + k uᵀ / |k|, written in place.
  const float4 wu = make_float4(ik * u.x, ik * u.y, ik * u.z, ik * u.w);
#pragma unroll
  for (int i = 0; i < RPT; ++i) {
    const float kk = bf16_at(kr, i);
    float4 x;
    x.x = fmaf(alpha, s[i].x, kk * wu.x);
    x.y = fmaf(alpha, s[i].y, kk * wu.y);
    x.z = fmaf(alpha, s[i].z, kk * wu.z);
    x.w = fmaf(alpha, s[i].w, kk * wu.w);
    *reinterpret_cast<float4*>(sp + i * V) = x;
  }
}

// Kernels 6 and 7 run as one (`dr_dqkwy`): each CTA does its chunk's dqk, then its wy. Same
// grid (chunk, head), same threads (DqkSm::NW = WySm::NW), and wy reads only what its own
// chunk's dqk wrote (the partial dk and dG rows) and what dqk read (k, h_c): as one kernel those
// reads are L2 hits instead of HBM traffic (≈ 0.5 GB at B4·T4096·H16·K128), and the shared
// memory is reused (the launch takes the larger of the two). k is not read again at all: wy
// finds dqk's tile in shared memory (KTile). Between them: no cp.async still in flight into the
// shared memory wy takes over, and a barrier, which also makes dqk's global writes and its k
// tile visible to the whole CTA. Both are compiled as functions of their own (__noinline__):
// inlined into one body, ptxas kept values common to both live across the barrier and spilled
// (88 bytes at K = 128, 128 registers for 2 CTAs per SM); apart, neither spills.
__device__ __forceinline__ void dqk_then_wy() {
  cp_wait<0>();
  __syncthreads();
}

// Shared-memory bytes of every kernel variant, in the order the host expects (see
// src/cuda/delta_rule.rs `SLOT_*`): for K in (64, 128, 256): prep, fwd_o, dvloc, dqk, wy,
// state_fwd (fused with the output), state_split (h_c and Ṽ for fwd_o and the backward),
// state_bwd, each for NWC = 1, 2, 4, 8; then the K splits of state_fwd, state_split and
// state_bwd, each for (NWC, KS) = (1, 2), (1, 4), (2, 2), (2, 4); then wu; then the
// warp-specialised forward and reverse pass (NWC = 4; K <= 128 only has the kernels).
template <class L>
__device__ unsigned smem_of() {
  Carve c(nullptr);
  L l;
  l.carve(c);
  return c.off;
}
template <int K, int MODE>
__device__ void smem_state_ks(unsigned* out) {
  out[0] = smem_of<StateFwdSm<K, 1, MODE, 2>>();
  out[1] = smem_of<StateFwdSm<K, 1, MODE, 4>>();
  out[2] = smem_of<StateFwdSm<K, 2, MODE, 2>>();
  out[3] = smem_of<StateFwdSm<K, 2, MODE, 4>>();
}
// Entries of smem_sizes_k's table per K (the host's SLOTS_PER_K).
constexpr int SMEM_SLOTS = 34;

template <int K>
__device__ void smem_sizes_k(unsigned* out) {
  out[0] = smem_of<PrepSm<K, false>>();
  out[1] = smem_of<FwdOSm<K>>();
  out[2] = smem_of<DvlocSm<K>>();
  out[3] = smem_of<DqkSm<K>>();
  out[4] = smem_of<WySm<K>>();
  out[5] = smem_of<StateFwdSm<K, 1, MODE_FUSED>>();
  out[6] = smem_of<StateFwdSm<K, 2, MODE_FUSED>>();
  out[7] = smem_of<StateFwdSm<K, 4, MODE_FUSED>>();
  out[8] = smem_of<StateFwdSm<K, 8, MODE_FUSED>>();
  out[9] = smem_of<StateFwdSm<K, 1, MODE_SPLIT>>();
  out[10] = smem_of<StateFwdSm<K, 2, MODE_SPLIT>>();
  out[11] = smem_of<StateFwdSm<K, 4, MODE_SPLIT>>();
  out[12] = smem_of<StateFwdSm<K, 8, MODE_SPLIT>>();
  out[13] = smem_of<StateBwdSm<K, 1, 1>>();
  out[14] = smem_of<StateBwdSm<K, 2, 1>>();
  out[15] = smem_of<StateBwdSm<K, 4, 1>>();
  out[16] = smem_of<StateBwdSm<K, 8, 1>>();
  smem_state_ks<K, MODE_FUSED>(out + 17);
  smem_state_ks<K, MODE_SPLIT>(out + 21);
  out[25] = smem_of<StateBwdSm<K, 1, 2>>();
  out[26] = smem_of<StateBwdSm<K, 1, 4>>();
  out[27] = smem_of<StateBwdSm<K, 2, 2>>();
  out[28] = smem_of<StateBwdSm<K, 2, 4>>();
  out[29] = smem_of<WuSm<K>>();
  out[30] = smem_of<StateFwdSm<K, 4, MODE_WS>>();
  out[31] = smem_of<StateBwdSm<K, 4, 1, BWD_WS_GROUPS<K>>>();
  out[32] = smem_of<PrepSm<K>>();  // prep forming P (Q's rows in shared memory)
  out[33] = smem_of<SegCombineSm<K>>();
}

}  // namespace dr

// Holds the side stream until all `need` CTAs of a led pass have started (`lead_started`), so
// that the leader's items queued behind it find the pass's CTAs on their SMs and take only the
// others: queued at once, they could take every SM first, and the pass, one CTA a whole SM, would
// start only after them (H200, session 31, call 1: no gain at B2·T8192·H16·K128).
extern "C" __global__ void dr_lead_gate(const unsigned* started, unsigned need) {
  dr::wait_count(started, need);
}

extern "C" __global__ void dr_smem_sizes(unsigned* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    dr::smem_sizes_k<64>(out);
    dr::smem_sizes_k<128>(out + dr::SMEM_SLOTS);
    dr::smem_sizes_k<256>(out + 2 * dr::SMEM_SLOTS);
  }
}

#define DR_CHUNK_KERNELS(K)                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      dr_prep_k##K(const bf16* k, const bf16* v, const float* g, const float* beta,                \
                   const bf16* q, const int* ctab, int H, int VG, int V, float scale, float* gc,   \
                   float* rec, bf16* w, bf16* u, float* tmat, bf16* pm, float* pflag) {            \
    dr::prep_impl<K>(k, v, g, beta, q, ctab, H, VG, V, scale, gc, rec, w, u, tmat, pm, pflag,      \
                     blockIdx.x, blockIdx.y);                                                      \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256, dr::WuSm<K>::MINB)                             \
      dr_wu_k##K(const bf16* k, const bf16* v, const float* g, const float* beta,                  \
                 const float* tmat, const int* ctab, int H, int VG, int V, float* gc, float* rec,  \
                 bf16* w, bf16* u) {                                                               \
    dr::wu_impl<K>(k, v, g, beta, tmat, ctab, H, VG, V, gc, rec, w, u);                            \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(dr::FwdOSm<K>::NW * 32, dr::FwdOSm<K>::MINB)        \
      dr_fwd_o_k##K(const bf16* q, const bf16* k, const float* gc, const bf16* hs,                 \
                    const bf16* vnew, const int* ctab, int H, int VG, int V, float scale,          \
                    bf16* o) {                                                                     \
    dr::fwd_o_impl<K>(q, k, gc, hs, vnew, ctab, H, VG, V, scale, o, blockIdx.x, blockIdx.y);       \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(dr::FwdOSm<K>::NW * 32, dr::FwdOSm<K>::MINB)        \
      dr_fwd_o_follow_k##K(const bf16* q, const bf16* k, const float* gc, const bf16* hs,          \
                           const bf16* vnew, const int* ctab, int H, int VG, int V, float scale,   \
                           bf16* o, const int* order, int items, unsigned* ticket,                 \
                           const unsigned* done, unsigned need) {                                  \
    dr::follow(order, items, H, ticket, done, need, [&](int cg, int h) {                           \
      dr::fwd_o_impl<K>(q, k, gc, hs, vnew, ctab, H, VG, V, scale, o, cg, h);                      \
    });                                                                                            \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      dr_dvloc_k##K(const bf16* q, const bf16* k, const float* gc, const bf16* d_o,                \
                    const int* ctab, int H, int VG, int V, float scale, bf16* dvl) {               \
    dr::dvloc_impl<K>(q, k, gc, d_o, ctab, H, VG, V, scale, dvl);                                  \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(dr::DqkSm<K>::NW * 32, dr::DqkSm<K>::MINB)          \
      dr_dqkwy_k##K(const bf16* q, const bf16* k, const bf16* v, const float* beta,                \
                    const float* gc, const float* tmat, const bf16* d_o, const bf16* vnew,         \
                    const bf16* dvnew, const bf16* hs, const bf16* dh, const float* sdp,           \
                    int npart, const int* ctab, int H, int VG, int V, float scale, bf16* dq,       \
                    bf16* dk, bf16* dv, float* dg, float* dbeta) {                                 \
    dr::dqk_impl<K>(q, k, gc, d_o, vnew, hs, dh, sdp, npart, ctab, H, VG, V, scale, dq, dk, dg,    \
                    blockIdx.x, blockIdx.y);                                                       \
    dr::dqk_then_wy();                                                                             \
    dr::wy_impl<K>(v, beta, gc, tmat, dvnew, hs, ctab, H, V, dk, dv, dg, dbeta, blockIdx.x,        \
                   blockIdx.y);                                                                    \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(dr::DqkSm<K>::NW * 32, dr::DqkSm<K>::MINB)          \
      dr_dqkwy_follow_k##K(const bf16* q, const bf16* k, const bf16* v, const float* beta,         \
                           const float* gc, const float* tmat, const bf16* d_o, const bf16* vnew,  \
                           const bf16* dvnew, const bf16* hs, const bf16* dh, const float* sdp,    \
                           int npart, const int* ctab, int H, int VG, int V, float scale,          \
                           bf16* dq, bf16* dk, bf16* dv, float* dg, float* dbeta,                  \
                           const int* order, int items, unsigned* ticket, const unsigned* done,    \
                           unsigned need) {                                                        \
    dr::follow(order, items, H, ticket, done, need, [&](int cg, int h) {                           \
      dr::dqk_impl<K>(q, k, gc, d_o, vnew, hs, dh, sdp, npart, ctab, H, VG, V, scale, dq, dk, dg,  \
                      cg, h);                                                                      \
      dr::dqk_then_wy();                                                                           \
      dr::wy_impl<K>(v, beta, gc, tmat, dvnew, hs, ctab, H, V, dk, dv, dg, dbeta, cg, h);          \
    });                                                                                            \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      dr_seg_combine_k##K(const float* A, const float* B, const int* seq_seg, const float* h0,     \
                          int H, int V, int reverse, float* X, float* ht) {                        \
    dr::seg_combine_impl<K>(A, B, seq_seg, h0, H, V, reverse, X, ht);                              \
  }

// The state passes of kernel 2: state_fwd (MODE_FUSED) and state_split (MODE_SPLIT); each uses
// only its own pointers (the others are null).
// K splits state one CTA per SM as the minimum (without it ptxas held k64 nw2 ks4 fused to 128
// registers and spilled); 0 leaves the unsplit kernels' bound unstated, as before.
#define DR_STATE_FWD_KERNEL(K, NWC, KS, SFX, NAME, MODE)                                           \
  extern "C" __global__ void __launch_bounds__(NWC * KS * 32, KS > 1 ? 1 : 0)                      \
      dr_##NAME##_k##K##_nw##NWC##SFX(const bf16* w, const bf16* u, const bf16* k, const bf16* q,  \
                                      const bf16* pm, const float* gc, const float* rec,           \
                                      const int* ctab, const int* seq_chunk, const float* h0,      \
                                      int H, int VG, int V, float scale, bf16* hout, bf16* vnew,   \
                                      bf16* o, float* ht, float* at, unsigned* done,               \
                                      const unsigned* lead_done, unsigned* lead_started) {         \
    dr::state_fwd_impl<K, NWC, MODE, KS>(w, u, k, q, pm, gc, rec, ctab, seq_chunk, h0, H, VG, V,   \
                                         scale, hout, vnew, o, ht, at, done, lead_done,            \
                                         lead_started);                                            \
  }
// Per pass: NWC = 1, 2, 4, 8 unsplit, then the K splits (names ending _ks2, _ks4) for NWC = 1, 2
// (the host's STATE_KS).
#define DR_STATE_FWD_PASS(K, NAME, MODE)                                                           \
  DR_STATE_FWD_KERNEL(K, 1, 1, , NAME, MODE)                                                       \
  DR_STATE_FWD_KERNEL(K, 2, 1, , NAME, MODE)                                                       \
  DR_STATE_FWD_KERNEL(K, 4, 1, , NAME, MODE)                                                       \
  DR_STATE_FWD_KERNEL(K, 8, 1, , NAME, MODE)                                                       \
  DR_STATE_FWD_KERNEL(K, 1, 2, _ks2, NAME, MODE)                                                   \
  DR_STATE_FWD_KERNEL(K, 1, 4, _ks4, NAME, MODE)                                                   \
  DR_STATE_FWD_KERNEL(K, 2, 2, _ks2, NAME, MODE)                                                   \
  DR_STATE_FWD_KERNEL(K, 2, 4, _ks4, NAME, MODE)
#define DR_STATE_FWD_KERNELS(K)                                                                    \
  DR_STATE_FWD_PASS(K, state_fwd, dr::MODE_FUSED)                                                  \
  DR_STATE_FWD_PASS(K, state_split, dr::MODE_SPLIT)

// The sequence-parallel transition pass (SEG): the split pass's layout with 4 column groups.
#define DR_STATE_SEG_KERNEL(K)                                                                     \
  extern "C" __global__ void __launch_bounds__(128)                                                \
      dr_state_seg_k##K(const bf16* w, const bf16* u, const bf16* k, const bf16* q,                \
                        const bf16* pm, const float* gc, const float* rec, const int* ctab,        \
                        const int* seq_chunk, const float* h0, int H, int VG, int V, float scale,  \
                        bf16* hout, bf16* vnew, bf16* o, float* ht, float* at, unsigned* done,     \
                        const unsigned* lead_done, unsigned* lead_started) {                       \
    dr::state_fwd_impl<K, 4, dr::MODE_SPLIT, 1, true>(w, u, k, q, pm, gc, rec, ctab, seq_chunk,    \
                                                      h0, H, VG, V, scale, hout, vnew, o, ht, at,  \
                                                      done, lead_done, lead_started);              \
  }

// The warp-specialised forward (state pass and output in one kernel): 4 state warps, 8 output
// warps, one CTA per SM (its shared memory allows no second).
#define DR_STATE_WS_KERNEL(K)                                                                      \
  extern "C" __global__ void __launch_bounds__(384, 1)                                             \
      dr_state_ws_k##K(const bf16* w, const bf16* u, const bf16* k, const bf16* q,                 \
                       const bf16* pm, const float* gc, const float* rec, const int* ctab,         \
                       const int* seq_chunk, const float* h0, int H, int VG, int V, float scale,   \
                       bf16* hout, bf16* vnew, bf16* o, float* ht, float* at, unsigned* done,      \
                       const unsigned* lead_done, unsigned* lead_started) {                        \
    dr::state_fwd_impl<K, 4, dr::MODE_WS, 1>(w, u, k, q, pm, gc, rec, ctab, seq_chunk, h0, H,      \
                                             VG, V, scale, hout, vnew, o, ht, at, done, lead_done, \
                                             lead_started);                                        \
  }

// Prep leading the warp-specialised forward (the host's `Lead`): its items in the pass's order,
// each counted once stored.
#define DR_PREP_LED_KERNEL(K)                                                                      \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      dr_prep_led_k##K(const bf16* k, const bf16* v, const float* g, const float* beta,            \
                       const bf16* q, const int* ctab, int H, int VG, int V, float scale,          \
                       float* gc, float* rec, bf16* w, bf16* u, float* tmat, bf16* pm,             \
                       float* pflag, const int* order, int base, unsigned* done) {                 \
    const int2 it = dr::lead_item(order, base, H);                                                 \
    dr::prep_impl<K>(k, v, g, beta, q, ctab, H, VG, V, scale, gc, rec, w, u, tmat, pm, pflag,      \
                     it.x, it.y);                                                                  \
    dr::lead_publish(done, it, H);                                                                 \
  }

// The warp-specialised forward led by prep (`LED`: waits for each chunk's prep outputs).
#define DR_STATE_WS_LED_KERNEL(K)                                                                  \
  extern "C" __global__ void __launch_bounds__(384, 1)                                             \
      dr_state_ws_led_k##K(const bf16* w, const bf16* u, const bf16* k, const bf16* q,             \
                           const bf16* pm, const float* gc, const float* rec, const int* ctab,     \
                           const int* seq_chunk, const float* h0, int H, int VG, int V,            \
                           float scale, bf16* hout, bf16* vnew, bf16* o, float* ht, float* at,     \
                           unsigned* done, const unsigned* lead_done, unsigned* lead_started) {    \
    dr::state_fwd_impl<K, 4, dr::MODE_WS, 1, false, true>(w, u, k, q, pm, gc, rec, ctab,           \
                                                          seq_chunk, h0, H, VG, V, scale, hout,    \
                                                          vnew, o, ht, at, done, lead_done,        \
                                                          lead_started);                           \
  }

// The reverse passes, and (NAME state_bwd_ws, 4 state warps and 8 dṼ_loc warps, one CTA per SM)
// the warp-specialised one; all take the same arguments (dvl unread by the latter, gc by the
// others).
#define DR_STATE_BWD_NAMED(K, NWC, KS, NG, NT, MINB, NAME)                                         \
  extern "C" __global__ void __launch_bounds__(NT, MINB)                                           \
      NAME(const bf16* q, const bf16* k, const bf16* w, const float* gc, const float* rec,         \
           const bf16* d_o, const bf16* dvl, const bf16* hs, const int* ctab,                      \
           const int* seq_chunk, const float* dht, int H, int VG, int V, float scale, bf16* dh,    \
           float* sdp, bf16* dvnew, float* dh0, const bf16* pm, const float* pflag,                \
           unsigned* done) {                                                                       \
    dr::state_bwd_impl<K, NWC, KS, NG>(q, k, w, gc, rec, d_o, dvl, hs, ctab, seq_chunk, dht, H,    \
                                       VG, V, scale, dh, sdp, dvnew, dh0, pm, pflag, nullptr,      \
                                       done);                                                      \
  }
// The reverse pass's sequence-parallel transition pass (SEG): the plain pass with 4 column
// groups, the transitions to `at`.
#define DR_STATE_BWD_SEG_KERNEL(K)                                                                 \
  extern "C" __global__ void __launch_bounds__(128)                                                \
      dr_state_bwd_seg_k##K(const bf16* q, const bf16* k, const bf16* w, const float* gc,          \
                            const float* rec, const bf16* d_o, const bf16* dvl, const bf16* hs,    \
                            const int* ctab, const int* seq_chunk, const float* dht, int H,        \
                            int VG, int V, float scale, bf16* dh, float* sdp, bf16* dvnew,         \
                            float* dh0, const bf16* pm, const float* pflag, float* at) {           \
    dr::state_bwd_impl<K, 4, 1, 0, true>(q, k, w, gc, rec, d_o, dvl, hs, ctab, seq_chunk, dht, H,  \
                                         VG, V, scale, dh, sdp, dvnew, dh0, pm, pflag, at,         \
                                         nullptr);                                                 \
  }
#define DR_STATE_BWD_KERNEL(K, NWC, KS, SUFFIX)                                                    \
  DR_STATE_BWD_NAMED(K, NWC, KS, 0, NWC * KS * 32, 0, dr_state_bwd_k##K##_nw##NWC##SUFFIX)
#define DR_STATE_BWD_WS_KERNEL(K)                                                                  \
  DR_STATE_BWD_NAMED(K, 4, 1, dr::BWD_WS_GROUPS<K>, 128 * (1 + dr::BWD_WS_GROUPS<K>), 1,           \
                     dr_state_bwd_ws_k##K)
#define DR_STATE_BWD_KERNELS(K)                                                                    \
  DR_STATE_BWD_KERNEL(K, 1, 1, )                                                                   \
  DR_STATE_BWD_KERNEL(K, 2, 1, )                                                                   \
  DR_STATE_BWD_KERNEL(K, 4, 1, )                                                                   \
  DR_STATE_BWD_KERNEL(K, 8, 1, )                                                                   \
  DR_STATE_BWD_KERNEL(K, 1, 2, _ks2)                                                               \
  DR_STATE_BWD_KERNEL(K, 1, 4, _ks4)                                                               \
  DR_STATE_BWD_KERNEL(K, 2, 2, _ks2)                                                               \
  DR_STATE_BWD_KERNEL(K, 2, 4, _ks4)

// Decode variants (K, BV, NT, min blocks per SM); the host's table `DECODE_CFGS` in
// src/cuda/delta_rule.rs lists the same ones. The minimum-blocks bound caps the registers so that
// about half the register file holds state: 64 registers a thread for RPT <= 8, 128 for RPT = 16.
#define DR_DECODE_KERNEL(K, V, BV, NT, MINB)                                                       \
  extern "C" __global__ void __launch_bounds__(NT, MINB)                                           \
      dr_decode_k##K##_v##V##_bv##BV##_t##NT(const bf16* q, const bf16* k, const bf16* v,          \
                                             const float* a, const float* b, const float* a_log,   \
                                             const float* dt_bias, float* state, bf16* o, int H,   \
                                             float scale, float bscale, int group) {               \
    dr::decode_impl<K, V, BV, NT>(q, k, v, a, b, a_log, dt_bias, state, o, H, scale, bscale,       \
                                  group);                                                          \
  }

// One NVRTC module per key head size: the host compiles this file with DR_ONLY_K = 64, 128 or
// 256 (src/cuda/delta_rule.rs, SOURCES), so a model builds only its own variants.
#ifndef DR_ONLY_K
#define DR_ONLY_K 0
#endif
#define DR_WANTS_K(K) (DR_ONLY_K == 0 || DR_ONLY_K == (K))
#if DR_WANTS_K(64)
DR_CHUNK_KERNELS(64)
DR_STATE_FWD_KERNELS(64)
DR_STATE_SEG_KERNEL(64)
DR_STATE_WS_KERNEL(64)
DR_STATE_WS_LED_KERNEL(64)
DR_PREP_LED_KERNEL(64)
DR_STATE_BWD_KERNELS(64)
DR_STATE_BWD_SEG_KERNEL(64)
DR_STATE_BWD_WS_KERNEL(64)
DR_DECODE_KERNEL(64, 64, 16, 64, 16)
DR_DECODE_KERNEL(64, 64, 64, 128, 8)
DR_DECODE_KERNEL(64, 128, 16, 64, 16)
DR_DECODE_KERNEL(64, 128, 64, 128, 8)
DR_DECODE_KERNEL(64, 128, 128, 256, 4)
#endif
#if DR_WANTS_K(128)
DR_CHUNK_KERNELS(128)
DR_STATE_FWD_KERNELS(128)
DR_STATE_SEG_KERNEL(128)
DR_STATE_WS_KERNEL(128)
DR_STATE_WS_LED_KERNEL(128)
DR_PREP_LED_KERNEL(128)
DR_STATE_BWD_KERNELS(128)
DR_STATE_BWD_SEG_KERNEL(128)
DR_STATE_BWD_WS_KERNEL(128)
DR_DECODE_KERNEL(128, 128, 16, 128, 8)
DR_DECODE_KERNEL(128, 128, 32, 128, 8)
DR_DECODE_KERNEL(128, 128, 64, 128, 4)
DR_DECODE_KERNEL(128, 128, 64, 256, 4)
DR_DECODE_KERNEL(128, 128, 128, 256, 2)
DR_DECODE_KERNEL(128, 128, 128, 512, 2)
DR_DECODE_KERNEL(128, 256, 16, 128, 8)
DR_DECODE_KERNEL(128, 256, 64, 256, 4)
#endif
#if DR_WANTS_K(256)
DR_CHUNK_KERNELS(256)
DR_STATE_FWD_KERNELS(256)
DR_STATE_SEG_KERNEL(256)
DR_STATE_BWD_KERNELS(256)
DR_STATE_BWD_SEG_KERNEL(256)
DR_DECODE_KERNEL(256, 256, 16, 128, 8)
DR_DECODE_KERNEL(256, 256, 64, 256, 2)
DR_DECODE_KERNEL(256, 256, 64, 512, 2)
DR_DECODE_KERNEL(256, 512, 16, 128, 8)
DR_DECODE_KERNEL(256, 512, 32, 256, 4)
DR_DECODE_KERNEL(256, 512, 64, 256, 2)
DR_DECODE_KERNEL(256, 512, 64, 512, 2)
DR_DECODE_KERNEL(256, 512, 128, 512, 1)
#endif
