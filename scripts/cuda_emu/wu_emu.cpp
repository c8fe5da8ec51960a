// Runs delta_rule.cu's prep_impl (kernel 1, with T saved to tmat) and wu_impl (kernel 1b, W and U
// from that T) on the CPU through emu.h (their own text, see run.sh) and checks that kernel 1b's
// W, U, gc and the decay record are kernel 1's bit for bit (every element; both outputs start as
// the same NaN poison, and no NaN may remain), which is what lets the backward use kernel 1b without
// touching the CPU mirror's rounding points or the selftest's tolerances. As a sanity check of
// kernel 1 itself, W and U are also compared (loosely, bf16) with a double-precision product of
// the saved T: W = T diag(βγ) K, U = T diag(β) V, and the record with make_rec's (from gc, bit for
// bit, every element: the padding too). Kernel 1's P (pm, for the warp-specialised forward) is
// compared with s (q_i · k_j) e^(G_i − G_j) in double, j <= i < len, and must be 0 elsewhere
// (every element of every 64 × 64 block written).
#include "emu.h"

#include <algorithm>
#include <random>

using dr::CH;

template <int K>
static bool run_case(const Case& c, unsigned seed) {
  const int V = c.V, H = c.H;
  const Chunks ch = make_chunks(c.seqlens);
  const std::vector<int>& ctab = ch.ctab;
  const int T = ch.T, NC = ch.NC;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f), Ub(0.05f, 0.95f), Ug(-0.3f, -0.01f);
  // Unit rows of k and q (as the model's L2 norm makes them), then bf16.
  auto unit_rows = [&] {
    std::vector<bf16> y((size_t)T * H * K);
    for (size_t r = 0; r < (size_t)T * H; ++r) {
      std::vector<float> x(K);
      double n = 0;
      for (auto& e : x) e = U(rng), n += (double)e * e;
      for (int i = 0; i < K; ++i) y[r * K + i] = __float2bfloat16(x[i] / (float)sqrt(n));
    }
    return y;
  };
  const std::vector<bf16> k = unit_rows(), q = unit_rows();
  const float scale = 1.f / sqrtf((float)K);
  const std::vector<bf16> v = rand_bf16((size_t)T * H * V, rng);
  std::vector<float> g((size_t)T * H), beta((size_t)T * H);
  for (auto& x : g) x = Ug(rng);
  for (auto& x : beta) x = Ub(rng);

  const float nanv = std::nanf("");
  const bf16 nanb{0xffff};
  std::vector<float> tmat((size_t)NC * H * CH * CH, nanv), gc1((size_t)T * H, nanv), gc2 = gc1;
  std::vector<float> rec1((size_t)NC * H * dr::RECW, nanv), rec2 = rec1;
  std::vector<bf16> w1((size_t)T * H * K, nanb), w2 = w1, u1((size_t)T * H * V, nanb), u2 = u1;
  // P is formed where the warp-specialised forward reads it: K <= 128.
  constexpr bool with_p = K <= 128;
  std::vector<bf16> pm(with_p ? (size_t)NC * H * CH * CH : 0, nanb);
  // The flag the reverse pass reads: 1 where kernel 1 formed P, 0 where it did not.
  float flag1 = nanv, flag0 = nanv;
  const dim3e grid{(unsigned)NC, (unsigned)H, 1};
  run_grid<dr::PrepSm<K>>(8, grid, true, [&] {
    dr::prep_impl<K>(k.data(), v.data(), g.data(), beta.data(), q.data(), ctab.data(), H, 1, V,
                     scale, gc1.data(), rec1.data(), w1.data(), u1.data(), tmat.data(),
                     with_p ? pm.data() : nullptr, &flag1, blockIdx.x, blockIdx.y);
  });
  const size_t smem_prep = g_smem_size;
  // Without P, in the smaller shared memory the host launches it with (no Q rows): the same W,
  // U, gc, record and T, and no access past that size (emu.h asserts every access).
  std::vector<float> tmat0(tmat.size(), nanv), gc0(gc1.size(), nanv), rec0(rec1.size(), nanv);
  std::vector<bf16> w0(w1.size(), nanb), u0(u1.size(), nanb);
  run_grid<dr::PrepSm<K, false>>(8, grid, true, [&] {
    dr::prep_impl<K>(k.data(), v.data(), g.data(), beta.data(), nullptr, ctab.data(), H, 1, V,
                     scale, gc0.data(), rec0.data(), w0.data(), u0.data(), tmat0.data(), nullptr,
                     &flag0, blockIdx.x, blockIdx.y);
  });
  run_grid<dr::WuSm<K>>(8, grid, true, [&] {
    dr::wu_impl<K>(k.data(), v.data(), g.data(), beta.data(), tmat.data(), ctab.data(), H, 1, V,
                   gc2.data(), rec2.data(), w2.data(), u2.data());
  });
  const size_t smem_wu = g_smem_size;

  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  const bool sw = same(w1, w2), su = same(u1, u2), sg = same(gc1, gc2);
  const bool s0 = same(w0, w1) && same(u0, u1) && same(gc0, gc1) && same(rec0, rec1) &&
                  same(tmat0, tmat) && flag1 == (with_p ? 1.f : 0.f) && flag0 == 0.f;
  const bool sr = same(rec1, rec2) && same(rec1, make_rec(ch, gc1, H));
  auto nan_b = [](const std::vector<bf16>& x) {
    return std::any_of(x.begin(), x.end(), [](bf16 y) { return std::isnan(__bfloat162float(y)); });
  };
  const bool nan_left = nan_b(w2) || nan_b(u2) || nan_b(pm) ||
                        std::any_of(gc2.begin(), gc2.end(), [](float y) { return std::isnan(y); });

  // Kernel 1's W and U against the saved T in double; and the saved T against its definition,
  // T (I + M) = I on each chunk's rows and columns < len, M_ij = β_i (k_i · k_j) e^(G_i − G_j)
  // for j < i, from the bf16 k.
  auto f = [](bf16 x) { return (double)__bfloat162float(x); };
  double ew = 0, mw = 0, eu = 0, mu = 0, et = 0, ep = 0, mp = 0;
  bool p_zero = true;
  for (int ci = 0; ci < NC; ++ci)
    for (int hh = 0; hh < H; ++hh) {
      const int st = ctab[2 * ci], l = ctab[2 * ci + 1];
      const float* Tm = tmat.data() + ((size_t)ci * H + hh) * CH * CH;
      auto kx = [&](int i, int x) { return f(k[((size_t)(st + i) * H + hh) * K + x]); };
      auto qx = [&](int i, int x) { return f(q[((size_t)(st + i) * H + hh) * K + x]); };
      std::vector<double> G(l), be(l), ga(l);
      for (int i = 0; i < l; ++i) {
        G[i] = (i ? G[i - 1] : 0.0) + g[(size_t)(st + i) * H + hh];
        be[i] = beta[(size_t)(st + i) * H + hh];
        ga[i] = exp(G[i]);
      }
      for (int i = 0; i < l; ++i) {
        for (int x = 0; x < K; ++x) {
          double s = 0;
          for (int j = 0; j <= i; ++j) s += Tm[i * CH + j] * be[j] * ga[j] * kx(j, x);
          // Kernel 1 stores −W.
          ew = std::max(ew, fabs(s + f(w1[((size_t)(st + i) * H + hh) * K + x])));
          mw = std::max(mw, fabs(s));
        }
        for (int y = 0; y < V; ++y) {
          double s = 0;
          for (int j = 0; j <= i; ++j)
            s += Tm[i * CH + j] * be[j] * f(v[((size_t)(st + j) * H + hh) * V + y]);
          eu = std::max(eu, fabs(s - f(u1[((size_t)(st + i) * H + hh) * V + y])));
          mu = std::max(mu, fabs(s));
        }
      }
      const bf16* Pm = pm.data() + ((size_t)ci * H + hh) * CH * CH;
      for (int i = 0; i < (with_p ? CH : 0); ++i)
        for (int j = 0; j < CH; ++j) {
          const double got = f(Pm[i * CH + j]);
          if (j > i || i >= l) {
            p_zero &= got == 0.0;
            continue;
          }
          double d = 0;
          for (int x = 0; x < K; ++x) d += qx(i, x) * kx(j, x);
          const double want = scale * d * exp(G[i] - G[j]);
          ep = std::max(ep, fabs(got - want));
          mp = std::max(mp, fabs(want));
        }
      std::vector<double> M((size_t)l * l, 0.0);
      for (int i = 0; i < l; ++i)
        for (int j = 0; j < i; ++j) {
          double d = 0;
          for (int x = 0; x < K; ++x) d += kx(i, x) * kx(j, x);
          M[(size_t)i * l + j] = be[i] * d * exp(G[i] - G[j]);
        }
      for (int i = 0; i < l; ++i)
        for (int j = 0; j < l; ++j) {
          double s = Tm[i * CH + j];  // (T I)_ij
          for (int m = j + 1; m <= i; ++m) s += Tm[i * CH + m] * M[(size_t)m * l + j];
          et = std::max(et, fabs(s - (i == j ? 1.0 : 0.0)));
        }
    }
  const double rw = ew / mw, ru = eu / mu, rp = with_p ? ep / mp : 0.0;
  const bool ok = sw && su && sg && sr && s0 && !nan_left && rw < 1e-2 && ru < 1e-2 &&
                  et < 1e-5 && rp < 1e-2 && p_zero;
  printf("K=%d V=%d H=%d chunks=%d smem prep=%zu wu=%zu seqlens=", K, V, H, NC, smem_prep, smem_wu);
  for (int L : c.seqlens) printf("%d,", L);
  printf("  W %s  U %s  gc %s  rec %s (kernel 1b vs 1, rec also vs make_rec)  kernel 1 vs f64: "
         "W %.2e U %.2e, T(I+M)-I %.1e, P %.2e%s%s%s  %s\n",
         sw ? "same" : "DIFFER", su ? "same" : "DIFFER", sg ? "same" : "DIFFER",
         sr ? "same" : "DIFFER", rw, ru, et, rp, p_zero ? "" : " (P not 0 off its support)",
         s0 ? "" : "  kernel 1 without P DIFFERS (or its P flag is wrong)",
         nan_left ? "  NaN left" : "", ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  bool ok = true;
  ok &= run_case<64>({64, 64, 2, {64, 100, 37}}, 21);
  ok &= run_case<64>({64, 128, 1, {130, 23}}, 22);
  ok &= run_case<128>({128, 128, 2, {64, 100, 37, 130}}, 23);
  ok &= run_case<128>({128, 256, 1, {100, 1}}, 24);
  ok &= run_case<256>({256, 256, 1, {64, 100, 37}}, 25);
  ok &= run_case<256>({256, 512, 1, {130}}, 26);
  printf(ok ? "all ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
