// Runs delta_rule.cu's fwd_o_impl (kernel 3, its own text, see run.sh) on the CPU through emu.h
// and compares O with a double-precision reference of O = s[diag(γ) Q h_c + (QKᵀ ⊙ Γ ⊙ L) Ṽ]
// with the kernel's (and the CPU mirror's) one inner rounding point, P = s (QKᵀ ⊙ Γ ⊙ L) rounded
// to bf16. The inputs are padded with NaN rows past the last token and the output is poisoned
// with NaN: every row of every chunk must be written, nothing past the last token, and nothing
// past a partial chunk may be read. Catches fragment-layout, indexing, masking, buffer-rotation
// and varlen mistakes; says nothing about speed or cp.async timing.
#include "emu.h"

#include <algorithm>
#include <random>

using dr::CH;

template <int K>
static bool run_case(const Case& c, unsigned seed) {
  const int V = c.V, H = c.H;
  const Chunks ch = make_chunks(c.seqlens);
  const std::vector<int>& ctab = ch.ctab;
  const int T = ch.T, NC = ch.NC, TP = T + CH;  // TP: rows with the NaN padding
  std::mt19937 rng(seed);
  const bf16 bnan{0x7fc0};
  auto padded = [&](size_t n, size_t npad, float s) {
    std::vector<bf16> v = rand_bf16(n, rng, s);
    v.resize(n + npad, bnan);
    return v;
  };
  const std::vector<bf16> q = padded((size_t)T * H * K, (size_t)CH * H * K, 1.f);
  const std::vector<bf16> k = padded((size_t)T * H * K, (size_t)CH * H * K, 1.f);
  const std::vector<bf16> vn = padded((size_t)T * H * V, (size_t)CH * H * V, 1.f);
  const std::vector<bf16> hs = rand_bf16((size_t)NC * H * K * V, rng, 2.f);
  // Gate steps 0.01–0.05: γ stays above e^-3.2 in a chunk, so both terms of O matter.
  std::vector<float> gc = make_gc(ch, H, rng, 0.01f, 0.05f);
  gc.resize((size_t)TP * H, std::nanf(""));
  const float scale = 1.f / sqrtf((float)K);
  std::vector<bf16> o((size_t)TP * H * V, bnan);

  run_grid<dr::FwdOSm<K>>(dr::FwdOSm<K>::NW, {(unsigned)NC, (unsigned)H, 1}, true, [&] {
    dr::fwd_o_impl<K>(q.data(), k.data(), gc.data(), hs.data(), vn.data(), ctab.data(), H, 1, V,
                      scale, o.data(), (int)blockIdx.x, (int)blockIdx.y);
  });

  auto f = [](bf16 x) { return (double)__bfloat162float(x); };
  // err: max |O − ref|; ex: max of the part of |O − ref| beyond half a bf16 ulp of ref (what is
  // left once the output's own rounding is accounted for).
  double err = 0, ex = 0, mx = 0;
  bool nan_in = false;
  for (int ci = 0; ci < NC; ++ci)
    for (int hh = 0; hh < H; ++hh) {
      const int st = ctab[2 * ci], len = ctab[2 * ci + 1];
      auto Q = [&](int i, int x) { return f(q[((size_t)(st + i) * H + hh) * K + x]); };
      auto Kk = [&](int i, int x) { return f(k[((size_t)(st + i) * H + hh) * K + x]); };
      auto VN = [&](int i, int x) { return f(vn[((size_t)(st + i) * H + hh) * V + x]); };
      const size_t ho = ((size_t)ci * H + hh) * K * V;
      std::vector<double> G(len);
      for (int i = 0; i < len; ++i) G[i] = gc[(size_t)(st + i) * H + hh];
      std::vector<double> pb((size_t)len * len, 0.0);
      for (int i = 0; i < len; ++i)
        for (int j = 0; j <= i; ++j) {
          double p = 0;
          for (int x = 0; x < K; ++x) p += Q(i, x) * Kk(j, x);
          pb[(size_t)i * len + j] = bfr((float)(scale * p * exp(G[i] - G[j])));
        }
      for (int i = 0; i < len; ++i)
        for (int v = 0; v < V; ++v) {
          double a = 0, b = 0;
          for (int x = 0; x < K; ++x) a += Q(i, x) * f(hs[ho + (size_t)x * V + v]);
          for (int j = 0; j <= i; ++j) b += pb[(size_t)i * len + j] * VN(j, v);
          const double ref = scale * exp(G[i]) * a + b;
          const float got = __bfloat162float(o[((size_t)(st + i) * H + hh) * V + v]);
          nan_in |= std::isnan(got);
          err = std::max(err, fabs(ref - got));
          const double hulp = ref == 0 ? 0 : ldexp(1.0, ilogb(ref) - 8);
          ex = std::max(ex, fabs(ref - got) - hulp);
          mx = std::max(mx, fabs(ref));
        }
    }
  // Rows past the last token must still hold the poison (the reversed grid order makes a write
  // past a partial chunk inside the batch overwrite the next chunk's rows: caught above).
  bool past = false;
  for (size_t e = (size_t)T * H * V; e < o.size(); ++e) past |= o[e].u != bnan.u;
  const double r = err / mx, rx = ex / mx;
  // The output is bf16: up to half an ulp (2^-8 of the element at most), and beyond that only
  // f32 summation and bf16 flips of P elements between the f32 kernel and the f64 reference.
  const bool ok = !nan_in && !past && r < 4e-3 && rx < 1e-4;
  printf("K=%d V=%d H=%d chunks=%d smem=%zu seqlens=", K, V, H, NC, g_smem_size);
  for (int L : c.seqlens) printf("%d,", L);
  printf("  o: max err / max |ref| %.2e, beyond half an ulp %.1e (max |ref| %.2f)%s%s  %s\n", r,
         rx, mx, nan_in ? "  NaN left" : "",
         past ? "  written past the end" : "", ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  bool ok = true;
  ok &= run_case<64>({64, 64, 2, {64 + 37, 23}}, 1);
  ok &= run_case<64>({64, 128, 1, {150, 64}}, 2);
  ok &= run_case<128>({128, 128, 2, {64 + 37, 23, 64}}, 3);
  ok &= run_case<128>({128, 256, 1, {128, 1, 50}}, 4);
  ok &= run_case<256>({256, 256, 1, {64 + 9, 64}}, 5);
  ok &= run_case<256>({256, 512, 1, {100, 30}}, 6);
  printf(ok ? "all ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
