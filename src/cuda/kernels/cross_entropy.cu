// Cross-entropy with a fused softmax over bf16 logits [n, V], one block per row. Targets are u32
// with IGNORE = u32::MAX; the mean runs over counted rows. Nothing beyond the logits buffer holds
// a vocabulary-sized tensor: the backward overwrites the logits with their gradient.

// lse[r] = logsumexp(row), loss[r] = lse - row[target] (0 for IGNORE; NaN for a target >= V).
extern "C" __global__ void ce_fwd(const bf16* logits, const unsigned* targets, float* lse, float* loss, int n,
                                  int V) {
    __shared__ float sh[33];
    const int r = blockIdx.x;
    if (r >= n) return;
    const bf16* row = logits + (i64)r * V;
    float mx = GDN_NEG_INF;
    for (int c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, ldf(row, c));
    mx = block_max(mx, sh);
    float s = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) s += expf(ldf(row, c) - mx);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        const float l = mx + logf(s);
        const unsigned t = targets[r];
        lse[r] = l;
        loss[r] = t == GDN_IGNORE ? 0.0f : (t < (unsigned)V ? l - ldf(row, t) : GDN_NAN);
    }
}

// One block: stats[0] = mean loss over counted rows (0 when none), stats[1] = their count. With
// loss null, the count only (stats[0] = 0): what a backward over logits formed in row chunks
// needs before the first chunk's losses exist.
extern "C" __global__ void ce_finalize(const float* loss, const unsigned* targets, int n, double* stats) {
    __shared__ double sh[33];
    double sum = 0.0, cnt = 0.0;
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
        if (targets[r] != GDN_IGNORE) {
            if (loss) sum += (double)loss[r];
            cnt += 1.0;
        }
    }
    sum = block_sum_d(sum, sh);
    cnt = block_sum_d(cnt, sh);
    if (threadIdx.x == 0) {
        stats[0] = cnt > 0.0 ? sum / cnt : 0.0;
        stats[1] = cnt;
    }
}

// d(scale * mean loss)/d logits, in place: (softmax - onehot(target)) * scale / count; zero rows
// for IGNORE.
extern "C" __global__ void ce_bwd(bf16* logits, const unsigned* targets, const float* lse, const double* stats,
                                  int n, int V, float scale) {
    const int r = blockIdx.x;
    if (r >= n) return;
    bf16* row = logits + (i64)r * V;
    const unsigned t = targets[r];
    const double cnt = stats[1];
    const float k = cnt > 0.0 ? (float)((double)scale / cnt) : 0.0f;
    if (t == GDN_IGNORE) {
        for (int c = threadIdx.x; c < V; c += blockDim.x) row[c] = tobf(0.0f);
        return;
    }
    const float l = lse[r];
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        const float p = expf(ldf(row, c) - l);
        row[c] = tobf((p - (c == (int)t ? 1.0f : 0.0f)) * k);
    }
}
