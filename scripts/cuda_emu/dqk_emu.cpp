// Runs delta_rule.cu's dqk_impl (its own text, see run.sh) on the CPU through emu.h and compares
// dq, dk, dg with a plain double-precision reference of the same definition (same bf16 operands,
// pb rounded to bf16, ⟨h_c, dh_c⟩ the sum of kernel 5's partials, here random).
// Catches fragment-layout, indexing, masking and varlen (partial chunk) mistakes; says nothing
// about speed or cp.async timing.
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
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  auto bfv = [&](size_t n) { return rand_bf16(n, rng); };
  std::vector<bf16> q = bfv((size_t)T * H * K), k = bfv((size_t)T * H * K);
  std::vector<bf16> dO = bfv((size_t)T * H * V), vn = bfv((size_t)T * H * V);
  std::vector<bf16> hs = bfv((size_t)NC * H * K * V), dh = bfv((size_t)NC * H * K * V);
  // Kernel 5's partials of ⟨h_c, dh_c⟩: a count that is not a multiple of 32 (lane-strided sum).
  const int npart = V / 16 * 3;
  std::vector<float> sdp((size_t)NC * H * npart);
  for (auto& x : sdp) x = 8.f * U(rng);
  const std::vector<float> gc = make_gc(ch, H, rng, 0.01f, 0.3f);
  const float scale = 1.f / sqrtf((float)K);
  const float nanv = std::nanf("");
  const bf16 nanb = __float2bfloat16(nanv);
  std::vector<bf16> dq((size_t)T * H * K, nanb), dk((size_t)T * H * K, nanb);
  std::vector<float> dg((size_t)T * H, nanv);

  run_grid<dr::DqkSm<K>>(dr::DqkSm<K>::NW, {(unsigned)NC, (unsigned)H, 1}, true, [&] {
    dr::dqk_impl<K>(q.data(), k.data(), gc.data(), dO.data(), vn.data(), hs.data(), dh.data(),
                    sdp.data(), npart, ctab.data(), H, 1, V, scale, dq.data(), dk.data(), dg.data(),
                    (int)blockIdx.x, (int)blockIdx.y);
  });

  // Reference.
  auto f = [](bf16 x) { return (double)__bfloat162float(x); };
  double e_dq = 0, m_dq = 0, e_dk = 0, m_dk = 0, e_dg = 0, m_dg = 0;
  for (int ci = 0; ci < NC; ++ci)
    for (int hh = 0; hh < H; ++hh) {
      const int st = ctab[2 * ci], len = ctab[2 * ci + 1];
      auto Q = [&](int i, int x) { return f(q[((size_t)(st + i) * H + hh) * K + x]); };
      auto Kk = [&](int i, int x) { return f(k[((size_t)(st + i) * H + hh) * K + x]); };
      auto DO = [&](int i, int x) { return f(dO[((size_t)(st + i) * H + hh) * V + x]); };
      auto VN = [&](int i, int x) { return f(vn[((size_t)(st + i) * H + hh) * V + x]); };
      const size_t ho = ((size_t)ci * H + hh) * K * V;
      std::vector<double> G(len), gam(len), dec(len);
      for (int i = 0; i < len; ++i) G[i] = gc[(size_t)(st + i) * H + hh];
      for (int i = 0; i < len; ++i) {
        gam[i] = exp(G[i]);
        dec[i] = exp(G[len - 1] - G[i]);
      }
      std::vector<double> pb(len * len, 0.0), E(len * len, 0.0);
      for (int i = 0; i < len; ++i)
        for (int j = 0; j <= i; ++j) {
          double dp = 0, p = 0;
          for (int v = 0; v < V; ++v) dp += DO(i, v) * VN(j, v);
          for (int x = 0; x < K; ++x) p += Q(i, x) * Kk(j, x);
          const double ge = exp(G[i] - G[j]);
          pb[i * len + j] = bfr((float)(scale * dp * ge));
          E[i * len + j] = scale * dp * p * ge;
        }
      std::vector<double> qdot(len, 0), kdot(len, 0);
      for (int i = 0; i < len; ++i)
        for (int x = 0; x < K; ++x) {
          double dq1 = 0, dki = 0;
          for (int v = 0; v < V; ++v) {
            dq1 += DO(i, v) * f(hs[ho + (size_t)x * V + v]);
            dki += VN(i, v) * f(dh[ho + (size_t)x * V + v]);
          }
          dq1 *= scale * gam[i];
          dki *= dec[i];
          qdot[i] += Q(i, x) * dq1;
          kdot[i] += Kk(i, x) * dki;
          double a = dq1, b = dki;
          for (int j = 0; j < len; ++j) {
            a += pb[i * len + j] * Kk(j, x);
            b += pb[j * len + i] * Q(j, x);
          }
          const size_t o = ((size_t)(st + i) * H + hh) * K + x;
          e_dq = std::max(e_dq, fabs(a - f(dq[o])));
          m_dq = std::max(m_dq, fabs(a));
          e_dk = std::max(e_dk, fabs(b - f(dk[o])));
          m_dk = std::max(m_dk, fabs(b));
          if (std::isnan(f(dq[o])) || std::isnan(f(dk[o]))) e_dq = e_dk = INFINITY;
        }
      double ksum = 0, sd = 0;
      for (int i = 0; i < len; ++i) ksum += kdot[i];
      for (int x = 0; x < npart; ++x) sd += sdp[((size_t)ci * H + hh) * npart + x];
      for (int i = 0; i < len; ++i) {
        double rs = 0, cs = 0;
        for (int j = 0; j < len; ++j) {
          rs += E[i * len + j];
          cs += E[j * len + i];
        }
        double val = rs - cs + qdot[i] - kdot[i];
        if (i == len - 1) val += ksum + gam[len - 1] * sd;
        const float got = dg[(size_t)(st + i) * H + hh];
        e_dg = std::max(e_dg, std::isnan(got) ? INFINITY : fabs(val - got));
        m_dg = std::max(m_dg, std::max(fabs(rs) + fabs(cs), fabs(qdot[i]) + fabs(kdot[i])));
        if (i == len - 1) m_dg = std::max(m_dg, fabs(gam[len - 1] * sd));
      }
    }
  // Every output row belongs to some chunk, so no NaN may remain anywhere.
  auto bnan = [](bf16 x) { return std::isnan(__bfloat162float(x)); };
  const bool nan_left = std::any_of(dq.begin(), dq.end(), bnan) ||
                        std::any_of(dk.begin(), dk.end(), bnan) ||
                        std::any_of(dg.begin(), dg.end(), [](float x) { return std::isnan(x); });
  const double r_dq = e_dq / m_dq, r_dk = e_dk / m_dk, r_dg = e_dg / m_dg;
  // dq and dk leave in bf16: up to half an ulp (2^-8 ≈ 3.9e-3 relative) of max |ref| from that
  // rounding.
  // pb is rounded to bf16 from an f32 value in the kernel and from a double here, so an element
  // on a rounding boundary can land one ulp (2^-8 relative) apart: up to ~2e-4 more (1.3e-4 seen
  // at K = 64). dg (f32) is typically 1e-7 off. An indexing or layout mistake is O(1).
  const bool ok = !nan_left && r_dq < 5e-3 && r_dk < 5e-3 && r_dg < 1e-4;
  printf("K=%d V=%d H=%d chunks=%d seqlens=", K, V, H, NC);
  for (int L : c.seqlens) printf("%d,", L);
  printf("  dq %.2e  dk %.2e  dg %.2e (max err / max |ref|)%s  %s\n", r_dq, r_dk, r_dg,
         nan_left ? "  NaN left" : "", ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  bool ok = true;
  ok &= run_case<64>({64, 128, 1, {64 + 37, 23}}, 1);
  ok &= run_case<64>({64, 64, 2, {150}}, 2);
  ok &= run_case<128>({128, 128, 2, {64 + 37, 23, 64}}, 3);
  ok &= run_case<128>({128, 256, 1, {128, 1, 50}}, 4);
  ok &= run_case<256>({256, 256, 1, {64 + 9, 64}}, 5);
  ok &= run_case<256>({256, 512, 1, {100}}, 6);
  printf(ok ? "all ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
