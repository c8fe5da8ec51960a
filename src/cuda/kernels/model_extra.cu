// Small element-wise helpers of the GPU language model (cuda::model): residual adds, fp32
// accumulation of bf16 gradients, the b_proj bias and its gradient. Grid-stride loops; the
// bias-gradient column sum runs one thread per column over the rows in order (deterministic).

#define MX_LOOP(i, n) \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// y = a + b
extern "C" __global__ void mx_add_bf16(const bf16* a, const bf16* b, bf16* y, i64 n) {
    MX_LOOP(i, n) { y[i] = tobf(ldf(a, i) + ldf(b, i)); }
}

// acc += x
extern "C" __global__ void mx_acc_bf16_f32(const bf16* x, float* acc, i64 n) {
    MX_LOOP(i, n) { acc[i] += ldf(x, i); }
}

// y[i] += bias[i % h]
extern "C" __global__ void mx_add_bias_bf16(bf16* y, const bf16* bias, i64 n, int h) {
    MX_LOOP(i, n) { y[i] = tobf(ldf(y, i) + ldf(bias, i % h)); }
}

// out[j] += sum_i x[i, j] over rows in order
extern "C" __global__ void mx_colsum_acc(const bf16* x, float* out, int rows, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = 0.0f;
    for (int i = 0; i < rows; ++i) s += ldf(x, (i64)i * cols + j);
    out[j] += s;
}
