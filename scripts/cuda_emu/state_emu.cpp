// Runs delta_rule.cu's state_fwd_impl (kernel 2, its own text, see run.sh) on the CPU through
// emu.h, in both modes, unsplit and K-split, and compares it with a double-precision
// reference of the chunk recurrence that rounds where the kernel rounds (S to bf16 as an A
// operand, diag(δ) Ṽ to bf16 for the update, Ṽ to bf16 for the output, P to bf16, h_c, Ṽ and O
// to bf16 on store), and the K splits with the unsplit kernel (summation order only).
#include "emu.h"

#include <algorithm>
#include <random>

using dr::CH;

struct Problem : Chunks {
  int K, V, H;
  std::vector<int> seqlens;
  bool with_h0;
  std::vector<bf16> w, u, k, q;
  std::vector<float> gc, rec, h0;
  float scale;
  // Kernel 1's P = s (QKᵀ ⊙ Γ ⊙ L), bf16 [NC, H, 64, 64], zero off its support (the
  // warp-specialised pass reads it), from f32 dot products.
  std::vector<bf16> pm;
};

// W and K rows of norm about 1, |U| ≤ 1, gate steps 0.005–0.05 (γ_last ≥ e^-3.2: the state
// carried across chunks matters).
static Problem make_problem(int K, int V, int H, std::vector<int> seqlens, bool with_h0,
                            unsigned seed) {
  Problem p{make_chunks(seqlens), K, V, H, std::move(seqlens), with_h0};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1.f, 1.f);
  const float rk = 1.7f / sqrtf((float)K);
  auto bfv = [&](size_t n, float s) { return rand_bf16(n, rng, s); };
  const size_t TK = (size_t)p.T * H * K, TV = (size_t)p.T * H * V;
  p.w = bfv(TK, rk);
  p.k = bfv(TK, rk);
  p.q = bfv(TK, 1.f);
  p.u = bfv(TV, 1.f);
  p.gc = make_gc(p, H, rng, 0.005f, 0.05f);
  p.rec = make_rec(p, p.gc, H);
  const size_t N = p.seqlens.size();
  if (with_h0) {
    p.h0.resize(N * H * K * V);
    for (auto& x : p.h0) x = U(rng);
  }
  p.scale = 1.f / sqrtf((float)K);
  p.pm.assign((size_t)p.NC * H * CH * CH, __float2bfloat16(0.f));
  for (int c = 0; c < p.NC; ++c)
    for (int hh = 0; hh < H; ++hh) {
      const int st = p.ctab[2 * c], len = p.ctab[2 * c + 1];
      auto row = [&](const std::vector<bf16>& x, int i) { return &x[((size_t)(st + i) * H + hh) * K]; };
      auto G = [&](int i) { return p.gc[(size_t)(st + i) * H + hh]; };
      for (int i = 0; i < len; ++i)
        for (int j = 0; j <= i; ++j) {
          float d = 0.f;
          for (int x = 0; x < K; ++x)
            d += __bfloat162float(row(p.q, i)[x]) * __bfloat162float(row(p.k, j)[x]);
          p.pm[(((size_t)c * H + hh) * CH + i) * CH + j] =
              __float2bfloat16(p.scale * d * expf(G(i) - G(j)));
        }
    }
  return p;
}

// What a pass writes (NaN where nothing was written): h_c, Ṽ and O as floats of their bf16.
struct Out {
  std::vector<float> hout, vnew, o, ht;
};

template <int K, int NWC, int MODE, int KS>
static Out run_kernel(const Problem& p) {
  const int H = p.H, V = p.V, NC = p.NC, N = (int)p.seqlens.size();
  const float nanv = std::nanf("");
  const bf16 bnan{0x7fc0};
  std::vector<bf16> hout((size_t)NC * H * K * V, bnan), vnew((size_t)p.T * H * V, bnan),
      o((size_t)p.T * H * V, bnan);
  Out r;
  r.ht.assign((size_t)N * H * K * V, nanv);
  // The fused and the warp-specialised pass write O; the split pass h_c and Ṽ.
  const bool fused = MODE != dr::MODE_SPLIT;

  typedef dr::StateFwdSm<K, NWC, MODE, KS> L;
  // Every chunk counted as formed, for the led warp-specialised pass (lead_wait).
  const std::vector<unsigned> formed((size_t)p.NC * H, 1u);
  unsigned started = 0;  // the CTAs that have started, as a led pass counts them
  run_grid<L>(L::NW + L::NWO, {(unsigned)N, (unsigned)H, (unsigned)(V / (16 * NWC))}, false, [&] {
    // The warp-specialised pass runs led (every chunk already counted as formed): its waits.
    dr::state_fwd_impl<K, NWC, MODE, KS, false, MODE == dr::MODE_WS>(
        p.w.data(), p.u.data(), p.k.data(), fused ? p.q.data() : nullptr,
        MODE == dr::MODE_WS ? p.pm.data() : nullptr, p.gc.data(),
        p.rec.data(), p.ctab.data(), p.seq_chunk.data(), p.with_h0 ? p.h0.data() : nullptr, H, 1,
        V, p.scale, fused ? nullptr : hout.data(), fused ? nullptr : vnew.data(),
        fused ? o.data() : nullptr, r.ht.data(), nullptr, nullptr, formed.data(), &started);
  });
  if (MODE == dr::MODE_WS && started != (unsigned)(N * H * (V / (16 * NWC)))) {
    fprintf(stderr, "state_emu: %u CTAs counted as started\n", started);
    exit(1);
  }
  auto tof = [](const std::vector<bf16>& v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
    return f;
  };
  if (!fused) {
    r.hout = tof(hout);
    r.vnew = tof(vnew);
  } else {
    r.o = tof(o);
  }
  return r;
}

// The recurrence in double, rounding where the kernel does (mode as in the kernel).
static Out reference(const Problem& p, int mode) {
  const int K = p.K, V = p.V, H = p.H, N = (int)p.seqlens.size();
  auto f = [](bf16 x) { return (double)__bfloat162float(x); };
  Out r;
  r.ht.resize((size_t)N * H * K * V);
  if (mode == dr::MODE_FUSED) {
    r.o.resize((size_t)p.T * H * V);
  } else {
    r.hout.resize((size_t)p.NC * H * K * V);
    r.vnew.resize((size_t)p.T * H * V);
  }
  for (int n = 0; n < N; ++n)
    for (int hh = 0; hh < H; ++hh) {
      std::vector<double> S((size_t)K * V, 0.0), Sb((size_t)K * V);
      if (p.with_h0)
        for (size_t i = 0; i < S.size(); ++i) S[i] = p.h0[((size_t)n * H + hh) * K * V + i];
      for (int c = p.seq_chunk[n]; c < p.seq_chunk[n + 1]; ++c) {
        const int st = p.ctab[2 * c], len = p.ctab[2 * c + 1];
        auto at = [&](const std::vector<bf16>& x, int i, int j, int W) {
          return f(x[((size_t)(st + i) * H + hh) * W + j]);
        };
        std::vector<double> G(len);
        for (int i = 0; i < len; ++i) G[i] = p.gc[(size_t)(st + i) * H + hh];
        for (size_t i = 0; i < S.size(); ++i) Sb[i] = bfr((float)S[i]);
        const size_t hb = ((size_t)c * H + hh) * K * V;
        if (mode != dr::MODE_FUSED)
          for (size_t i = 0; i < S.size(); ++i) r.hout[hb + i] = Sb[i];
        std::vector<double> Vt((size_t)len * V);
        for (int t = 0; t < len; ++t)
          for (int v = 0; v < V; ++v) {
            double s = at(p.u, t, v, V);
            // p.w is −W, as kernel 1 stores it.
            for (int x = 0; x < K; ++x) s += at(p.w, t, x, K) * Sb[(size_t)x * V + v];
            Vt[(size_t)t * V + v] = s;
            if (mode != dr::MODE_FUSED) r.vnew[((size_t)(st + t) * H + hh) * V + v] = s;
          }
        if (mode == dr::MODE_FUSED) {
          std::vector<double> P((size_t)len * len, 0.0);
          for (int i = 0; i < len; ++i)
            for (int j = 0; j <= i; ++j) {
              double s = 0;
              for (int x = 0; x < K; ++x) s += at(p.q, i, x, K) * at(p.k, j, x, K);
              P[(size_t)i * len + j] = bfr((float)(p.scale * s * exp(G[i] - G[j])));
            }
          for (int t = 0; t < len; ++t)
            for (int v = 0; v < V; ++v) {
              double s = 0, a = 0;
              for (int x = 0; x < K; ++x) s += at(p.q, t, x, K) * Sb[(size_t)x * V + v];
              for (int j = 0; j <= t; ++j) a += P[(size_t)t * len + j] * bfr((float)Vt[(size_t)j * V + v]);
              r.o[((size_t)(st + t) * H + hh) * V + v] = p.scale * exp(G[t]) * s + a;
            }
        }
        const double gl = exp(G[len - 1]);
        for (int x = 0; x < K; ++x)
          for (int v = 0; v < V; ++v) {
            double s = gl * S[(size_t)x * V + v];
            for (int t = 0; t < len; ++t)
              s += bfr((float)(exp(G[len - 1] - G[t]) * Vt[(size_t)t * V + v])) * at(p.k, t, x, K);
            S[(size_t)x * V + v] = s;
          }
      }
      for (size_t i = 0; i < S.size(); ++i) r.ht[((size_t)n * H + hh) * K * V + i] = S[i];
    }
  return r;
}

// max |a − b| / max |b| over one output; infinite where a has NaN (an element never written).
static double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    e = std::max(e, fabs((double)a[i] - b[i]));
    m = std::max(m, fabs((double)b[i]));
  }
  return m > 0 ? e / m : e;
}

static const char* mode_name(int m) {
  return m == dr::MODE_FUSED ? "fused" : m == dr::MODE_WS ? "warp-specialised" : "split";
}

// Worst of the pass's outputs against `b`; prints them.
static double compare(const Out& a, const Out& b, int mode) {
  double worst = rel(a.ht, b.ht);
  printf(" ht %.1e", worst);
  auto one = [&](const char* name, const std::vector<float>& x, const std::vector<float>& y) {
    const double e = rel(x, y);
    printf(" %s %.1e", name, e);
    worst = std::max(worst, e);
  };
  if (mode != dr::MODE_SPLIT) {
    one("o", a.o, b.o);
  } else {
    one("h", a.hout, b.hout);
    one("v", a.vnew, b.vnew);
  }
  return worst;
}

static bool all_ok = true;

template <int K, int NWC, int MODE>
static void check(const Problem& p) {
  const Out ref = reference(p, MODE);
  const Out k1 = run_kernel<K, NWC, MODE, 1>(p);
  const Out k2 = run_kernel<K, NWC, MODE, 2>(p);
  const Out k4 = run_kernel<K, NWC, MODE, 4>(p);
  const double tol_ref = 3e-2, tol_ks = 5e-3;
  const Out* ks[3] = {&k1, &k2, &k4};
  for (int i = 0; i < 3; ++i) {
    printf("K=%3d NWC=%d KS=%d %s h0=%d  vs ref:", K, NWC, 1 << i, mode_name(MODE), p.with_h0);
    bool ok = compare(*ks[i], ref, MODE) < tol_ref;
    if (i > 0) {
      printf("   vs KS=1:");
      ok &= compare(*ks[i], k1, MODE) < tol_ks;
    }
    printf("  %s\n", ok ? "ok" : "FAIL");
    all_ok &= ok;
  }
}

template <int K>
static void check_k(unsigned seed) {
  for (int h0 = 0; h0 < 2; ++h0) {
    // Lengths with partial chunks, one shorter than a chunk, and one exact chunk.
    const Problem p = make_problem(K, 32, 2, {64, 100, 37, 200}, h0, seed + h0);
    check<K, 1, dr::MODE_FUSED>(p);
    check<K, 2, dr::MODE_FUSED>(p);
    check<K, 1, dr::MODE_SPLIT>(p);
    check<K, 2, dr::MODE_SPLIT>(p);
  }
}

// The warp-specialised forward (4 state warps on 64 columns, two groups of 4 output warps): O
// against the reference of the fused pass (the same roundings), the final state bit for bit
// against the split pass's (the state warps' products are the split pass's). Two column groups
// (V = 128), a sequence of many chunks so that both hand-off buffers are refilled.
template <int K>
static void check_ws(unsigned seed) {
  for (int h0 = 0; h0 < 2; ++h0) {
    const Problem p = make_problem(K, 128, 2, {64, 100, 37, 330}, h0, seed + h0);
    const Out ref = reference(p, dr::MODE_FUSED);
    const Out ws = run_kernel<K, 4, dr::MODE_WS, 1>(p);
    const Out split = run_kernel<K, 4, dr::MODE_SPLIT, 1>(p);
    printf("K=%3d NWC=4 warp-specialised h0=%d  vs ref:", K, h0);
    bool ok = compare(ws, ref, dr::MODE_WS) < 3e-2;
    const double ht = rel(ws.ht, split.ht);
    printf("   ht vs split %.1e", ht);
    ok &= ht == 0.0;
    printf("  %s\n", ok ? "ok" : "FAIL");
    all_ok &= ok;
  }
}

// Sequence-parallel (the host's SegPlan): the split pass over segments of 3 chunks with the
// transition CTAs (`at`: A_p from S = I, U = 0; beside them B_p from zero), seg_combine's start
// states X_p and final states, then the split pass over the segments from X_p. h_c, Ṽ and the
// final states against the reference of the whole sequences (the same recurrence composed in
// another order: close, not the same bits).
template <int K>
static void check_seg(unsigned seed) {
  constexpr int V = 64, H = 2, L = 3;
  const float nanv = std::nanf("");
  const bf16 bnan{0x7fc0};
  typedef dr::StateFwdSm<K, 4, dr::MODE_SPLIT, 1> Lay;
  for (int h0 = 0; h0 < 2; ++h0) {
    const Problem p = make_problem(K, V, H, {64, 700, 37, 330}, h0, seed + h0);
    const int N = (int)p.seqlens.size();
    const Segments sg = make_segments(p, L);
    const std::vector<int>&seg_chunk = sg.seg_chunk, &seq_seg = sg.seq_seg;
    const unsigned S = sg.count();
    std::vector<float> A((size_t)S * H * K * K, nanv), B((size_t)S * H * K * V, nanv),
        X((size_t)S * H * K * V, nanv);
    run_grid<Lay>(4, {S, (unsigned)H, (unsigned)((V + K) / 64)}, false, [&] {
      dr::state_fwd_impl<K, 4, dr::MODE_SPLIT, 1, true>(
          p.w.data(), p.u.data(), p.k.data(), nullptr, nullptr, p.gc.data(), p.rec.data(),
          p.ctab.data(), seg_chunk.data(), nullptr, H, 1, V, p.scale, nullptr, nullptr, nullptr,
          B.data(), A.data(), nullptr, nullptr, nullptr);
    });
    Out r;
    r.ht.assign((size_t)N * H * K * V, nanv);
    run_grid<dr::SegCombineSm<K>>(8, {(unsigned)N, (unsigned)H, (unsigned)(V / 16)}, false, [&] {
      dr::seg_combine_impl<K>(A.data(), B.data(), seq_seg.data(),
                              p.with_h0 ? p.h0.data() : nullptr, H, V, 0, X.data(),
                              r.ht.data());
    });
    std::vector<bf16> hout((size_t)p.NC * H * K * V, bnan), vnew((size_t)p.T * H * V, bnan);
    run_grid<Lay>(4, {S, (unsigned)H, (unsigned)(V / 64)}, false, [&] {
      dr::state_fwd_impl<K, 4, dr::MODE_SPLIT, 1>(
          p.w.data(), p.u.data(), p.k.data(), nullptr, nullptr, p.gc.data(), p.rec.data(),
          p.ctab.data(), seg_chunk.data(), X.data(), H, 1, V, p.scale, hout.data(), vnew.data(),
          nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
    });
    auto tof = [](const std::vector<bf16>& v) {
      std::vector<float> f(v.size());
      for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
      return f;
    };
    r.hout = tof(hout);
    r.vnew = tof(vnew);
    printf("K=%3d sequence-parallel, %u segments of %d chunks h0=%d  vs ref:", K, S, L, h0);
    const bool ok = compare(r, reference(p, dr::MODE_SPLIT), dr::MODE_SPLIT) < 3e-2;
    printf("  %s\n", ok ? "ok" : "FAIL");
    all_ok &= ok;
  }
}

int main(int argc, char** argv) {
  check_seg<64>(60);
  check_seg<128>(70);
  // `state_emu seg`: the sequence-parallel passes only.
  if (argc > 1 && !strcmp(argv[1], "seg")) {
    printf(all_ok ? "all ok\n" : "FAILED\n");
    return all_ok ? 0 : 1;
  }
  check_ws<64>(40);
  check_ws<128>(50);
  // `state_emu ws`: the warp-specialised pass only.
  if (argc > 1 && !strcmp(argv[1], "ws")) {
    printf(all_ok ? "all ok\n" : "FAILED\n");
    return all_ok ? 0 : 1;
  }
  check_k<64>(10);
  check_k<128>(20);
  if (argc > 1 && !strcmp(argv[1], "k256")) {
    check_k<256>(30);
    check_seg<256>(80);
  }
  printf(all_ok ? "all ok\n" : "FAILED\n");
  return all_ok ? 0 : 1;
}
