// Layer normalisation of the layer-normalised LSTM and GRU (the option layer_norm of
// src/config.rs, Haste's LayerNormLSTM / LayerNormGRU), on the per-step path. The maths of the
// reference backend, ε = 1e-5:
//
// - a row v of width w: μ = Σv/w, var = Σ(v-μ)²/w (two passes: the mean first, then the squared
//   deviations), rstd = 1/sqrt(var + ε), x̂ = (v-μ)·rstd, LN(v; γ, β) = γ⊙x̂ + β;
// - backward from dy: g = γ⊙dy, dv = rstd·(g − mean(g) − x̂·mean(g⊙x̂)), dγ += dy⊙x̂, dβ += dy.
//
// Where the driver applies them (src/backend/cuda/driver/layer_norm.rs): the input product
// XG = X·W_ih^T becomes LN(XG; γ_ih, b_ih) (the input bias is β; the step kernels then get no
// b_ih), the recurrent product HG = h_prev·W_hh^T becomes γ_hh⊙x̂ (no β: the step kernels add
// b_hh), and an LSTM's output is m = o⊙tanh(LN(c; γ_c, β_c)) while the recurrence carries the raw
// c. Backward, the pre-activation gradients the step kernels leave go through layer_norm_backward
// (dGh per step before the dG·W_hh GEMM, dGi once after the time loop) and the gains' and biases'
// gradients are column sums (layer_norm_param_grads).
//
// Row kernels (layer_norm_forward, layer_norm_backward, lstm_ln_cell_*): a block per row,
// grid-stride over the rows; the block's threads stride over the row and reduce with warp
// shuffles and one shared-memory pass over the warps, in a fixed order, so a result depends on
// the block size (the driver's 256 threads, a multiple of 32) but not on the grid: bit-identical
// run to run. The row statistics and the backward's sums and row expression are f64 (as the
// reference's), rounded once to f32; the gains, the LN output and the cell maths are f32.
// The column sums (layer_norm_param_grads): one thread per column, the rows summed in order in
// f64 and added to the f32 accumulator with one rounding; no atomics.
//
// Storage: the storage-typed arguments (T: the gains and biases, dG, dy, m, y) follow "Storage
// types" in common.cuh; the products XG and HG, the saved x̂ and rstd, the cell state and the
// carried gradients are f32 in every entry. Memory per row of width w, in elements: forward
// reads v three times (the two reductions and the normalisation; after the first pass the row is
// in L1 or L2) and γ, β once (cached across rows), writes v and x̂ (w each); backward reads dy,
// x̂ twice and writes dx; the LSTM pieces read and write [B, H] rows the same way.
#include "common.cuh"

#define RNNK_LN_EPS_F64 1e-5

// The sum of v over the threads of a block, in every thread; every thread of the block must call
// it (the driver's blocks are a multiple of 32 threads). On the host emulation a block is one
// thread, so the row sums are serial, in order. In f64, as the reference's row sums: a row of
// small variance amplifies the rounding of its statistics by rstd (up to 1/sqrt(ε)).
__device__ __forceinline__ double block_sum(double v) {
#ifdef __CUDACC__
    __shared__ double part[32];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // the previous call's readers are done with part
    if (lane == 0) part[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (int k = 0; k < warps; ++k) s += part[k];
    return s;
#else
    return v;
#endif
}

// The mean and 1/sqrt(var + ε) of the row v [w] (two passes, f64).
struct RowStats {
    double mean, rstd;
};
__device__ __forceinline__ RowStats row_stats(const float* __restrict__ v, long long w) {
    double s = 0.0;
    for (long long j = threadIdx.x; j < w; j += blockDim.x) s += v[j];
    const double mean = block_sum(s) / (double)w;
    double q = 0.0;
    for (long long j = threadIdx.x; j < w; j += blockDim.x) {
        const double d = v[j] - mean;
        q += d * d;
    }
    const RowStats r = {mean, 1.0 / sqrt(block_sum(q) / (double)w + (double)RNNK_LN_EPS_F64)};
    return r;
}

// v = LN(v; γ, β) for each of the rows, in place; x̂ and rstd saved when given.
template <typename T>
__device__ __forceinline__ void layer_norm_forward_body(
    int rows, int width,
    float* __restrict__ v,            // [rows, w] in/out: XG or HG rows
    const T* __restrict__ gamma,      // [w]
    const T* __restrict__ beta,       // [w], or null for none
    float* __restrict__ xhat,         // [rows, w] out: x̂, or null (inference)
    float* __restrict__ rstd) {       // [rows] out, or null (inference)
    const long long w = width;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* __restrict__ row = v + r * w;
        const RowStats st_ = row_stats(row, w);
        for (long long j = threadIdx.x; j < w; j += blockDim.x) {
            const float xh = (float)((row[j] - st_.mean) * st_.rstd);
            if (xhat) xhat[r * w + j] = xh;
            row[j] = fmaf(ld(gamma, j), xh, opt(beta, j));
        }
        if (rstd && threadIdx.x == 0) rstd[r] = (float)st_.rstd;
    }
}
#define LAYER_NORM_FORWARD(NAME, T)                                                                                  \
    extern "C" __global__ void NAME(int rows, int width, float* __restrict__ v, const T* __restrict__ gamma,         \
                                    const T* __restrict__ beta, float* __restrict__ xhat, float* __restrict__ rstd) { \
        layer_norm_forward_body<T>(rows, width, v, gamma, beta, xhat, rstd);                                         \
    }
RNNK_INSTANTIATE(LAYER_NORM_FORWARD, layer_norm_forward)

// dx = LNback(dy; γ, x̂, rstd) for each of the rows: the gradient w.r.t. the LN input. dx may be
// dy (in place: every read of a row is done before the row is written).
template <typename T>
__device__ __forceinline__ void layer_norm_backward_body(
    int rows, int width,
    const T* dy,                      // [rows, w]: gradient w.r.t. the LN output
    const T* __restrict__ gamma,      // [w]
    const float* __restrict__ xhat,   // [rows, w]: the forward's x̂
    const float* __restrict__ rstd,   // [rows]
    T* dx) {                          // [rows, w] out (may be dy)
    const long long w = width;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long row = r * w;
        double s1 = 0.0, s2 = 0.0;
        for (long long j = threadIdx.x; j < w; j += blockDim.x) {
            const double g = (double)ld(gamma, j) * ld(dy, row + j);
            s1 += g;
            s2 += g * xhat[row + j];
        }
        const double m1 = block_sum(s1) / (double)w, m2 = block_sum(s2) / (double)w;
        const double rs = rstd[r];
        for (long long j = threadIdx.x; j < w; j += blockDim.x) {
            const double g = (double)ld(gamma, j) * ld(dy, row + j);
            st(dx, row + j, (float)(rs * (g - m1 - xhat[row + j] * m2)));
        }
    }
}
#define LAYER_NORM_BACKWARD(NAME, T)                                                                                \
    extern "C" __global__ void NAME(int rows, int width, const T* dy, const T* __restrict__ gamma,                  \
                                    const float* __restrict__ xhat, const float* __restrict__ rstd, T* dx) {        \
        layer_norm_backward_body<T>(rows, width, dy, gamma, xhat, rstd, dx);                                        \
    }
RNNK_INSTANTIATE(LAYER_NORM_BACKWARD, layer_norm_backward)

// dγ[j] += Σ_r dy[r, j]·x̂[r, j] and dβ[j] += Σ_r dy[r, j] (when dβ is given): the rows summed in
// order in f64, added to the f32 accumulators with one rounding. One thread per column.
template <typename T>
__device__ __forceinline__ void layer_norm_param_grads_body(
    int rows, int width,
    const T* __restrict__ dy,         // [rows, w]
    const float* __restrict__ xhat,   // [rows, w]
    float* __restrict__ dgamma,       // [w] in/out
    float* __restrict__ dbeta) {      // [w] in/out, or null
    const long long w = width;
    FOR_EACH_ELEMENT(j, w) {
        double sg = 0.0, sb = 0.0;
        for (long long r = 0; r < rows; ++r) {
            const double d = ld(dy, r * w + j);
            sg += d * (double)xhat[r * w + j];
            sb += d;
        }
        dgamma[j] = (float)((double)dgamma[j] + sg);
        if (dbeta) dbeta[j] = (float)((double)dbeta[j] + sb);
    }
}
#define LAYER_NORM_PARAM_GRADS(NAME, T)                                                                              \
    extern "C" __global__ void NAME(int rows, int width, const T* __restrict__ dy, const float* __restrict__ xhat,   \
                                    float* __restrict__ dgamma, float* __restrict__ dbeta) {                         \
        layer_norm_param_grads_body<T>(rows, width, dy, xhat, dgamma, dbeta);                                        \
    }
RNNK_INSTANTIATE(LAYER_NORM_PARAM_GRADS, layer_norm_param_grads)

// The layer-normalised LSTM's output after a step kernel (lstm_forward_step or _opt, which left
// the activated gates and the raw c_t): every row's c_t is normalised (ĉ, rstd saved when
// given; inactive rows too, their values are finite and backward ignores them), and on active
// rows m = o⊙tanh(γ_c⊙ĉ + β_c) replaces the step kernel's m (and y's row when y is given).
// Inactive rows keep what the step kernel wrote (m = keep or 0, y = 0).
template <typename T>
__device__ __forceinline__ void lstm_ln_cell_forward_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ gates,  // [B, 4H]: the step's activated gates (o read)
    const float* __restrict__ c,      // [B, H]: the step's raw cell state
    const T* __restrict__ gamma,      // [H]: weight_ln_c
    const T* __restrict__ beta,       // [H]: bias_ln_c, or null
    T* __restrict__ m,                // [B, H] in/out
    T* __restrict__ y,                // [B, y_stride] out: columns 0..H of active rows, or null
    int y_stride,
    float* __restrict__ c_hat,        // [B, H] out: ĉ, or null (inference)
    float* __restrict__ rstd) {       // [B] out, or null (inference)
    const long long h = hidden;
    for (long long b = blockIdx.x; b < batch; b += gridDim.x) {
        const RowStats st_ = row_stats(c + b * h, h);
        const bool active = row_active(lengths, (int)b, step);
        for (long long j = threadIdx.x; j < h; j += blockDim.x) {
            const long long e = b * h + j;
            const float ch = (float)((c[e] - st_.mean) * st_.rstd);
            if (c_hat) c_hat[e] = ch;
            if (active) {
                const float mv = gates[b * 4 * h + 3 * h + j] * tanhf(fmaf(ld(gamma, j), ch, opt(beta, j)));
                st(m, e, mv);
                if (y) st(y, b * y_stride + j, mv);
            }
        }
        if (rstd && threadIdx.x == 0) rstd[b] = (float)st_.rstd;
    }
}
#define LSTM_LN_CELL_FORWARD(NAME, T)                                                                                 \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths,                 \
                                    const float* __restrict__ gates, const float* __restrict__ c,                     \
                                    const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ m,       \
                                    T* __restrict__ y, int y_stride, float* __restrict__ c_hat,                       \
                                    float* __restrict__ rstd) {                                                       \
        lstm_ln_cell_forward_body<T>(batch, hidden, step, lengths, gates, c, gamma, beta, m, y, y_stride, c_hat, rstd); \
    }
RNNK_INSTANTIATE(LSTM_LN_CELL_FORWARD, lstm_ln_cell_forward)

// The layer-normalised LSTM's output backward, before the step kernel (lstm_backward_step_ln):
// from dm (dm_in, or carry + dy on active rows, as lstm_backward_step reads it; the carry is not
// changed here) with τ = tanh(γ_c⊙ĉ + β_c): dŝ = dm⊙o⊙(1−τ²) (saved for dγ_c, dβ_c),
// dm_tau = dm⊙τ (the step kernel's o-gate factor, instead of dm⊙tanh(c)), and
// dc += LNback(dŝ; γ_c, ĉ, rstd_c) (instead of dm⊙o⊙(1−tanh²c)). Inactive rows: dŝ = 0,
// dm_tau = 0, dc unchanged.
template <typename T>
__device__ __forceinline__ void lstm_ln_cell_backward_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ gates,  // [B, 4H]: saved activated gates (o read)
    const float* __restrict__ c_hat,  // [B, H]: saved ĉ
    const float* __restrict__ rstd,   // [B]: saved rstd_c
    const T* __restrict__ gamma,      // [H]: weight_ln_c
    const T* __restrict__ beta,       // [H]: bias_ln_c, or null
    const float* __restrict__ dm_in,  // [B, H], or null
    const T* __restrict__ dy,         // [B, dy_stride]: columns 0..H, or null (read when dm_in is null)
    int dy_stride,
    const float* __restrict__ carry,  // [B, H] (read when dm_in is null)
    float* __restrict__ dc,           // [B, H] in/out
    float* __restrict__ ds,           // [B, H] out: dŝ
    float* __restrict__ dm_tau) {     // [B, H] out: dm⊙τ
    const long long h = hidden;
    for (long long b = blockIdx.x; b < batch; b += gridDim.x) {
        if (!row_active(lengths, (int)b, step)) {  // the whole block takes the same branch
            for (long long j = threadIdx.x; j < h; j += blockDim.x) {
                ds[b * h + j] = 0.0f;
                dm_tau[b * h + j] = 0.0f;
            }
            continue;
        }
        double s1 = 0.0, s2 = 0.0;
        for (long long j = threadIdx.x; j < h; j += blockDim.x) {
            const long long e = b * h + j;
            const float dmv = dm_in ? dm_in[e] : carry[e] + (dy ? ld(dy, b * dy_stride + j) : 0.0f);
            const float ch = c_hat[e], gm = ld(gamma, j);
            const float tau = tanhf(fmaf(gm, ch, opt(beta, j)));
            const float o = gates[b * 4 * h + 3 * h + j];
            const float dsv = dmv * o * (1.0f - tau * tau);
            ds[e] = dsv;
            dm_tau[e] = dmv * tau;
            const double g = (double)gm * dsv;
            s1 += g;
            s2 += g * ch;
        }
        const double m1 = block_sum(s1) / (double)h, m2 = block_sum(s2) / (double)h;
        const double rs = rstd[b];
        for (long long j = threadIdx.x; j < h; j += blockDim.x) {
            const long long e = b * h + j;
            const double g = (double)ld(gamma, j) * ds[e];
            dc[e] += (float)(rs * (g - m1 - c_hat[e] * m2));
        }
    }
}
#define LSTM_LN_CELL_BACKWARD(NAME, T)                                                                                \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths,                 \
                                    const float* __restrict__ gates, const float* __restrict__ c_hat,                 \
                                    const float* __restrict__ rstd, const T* __restrict__ gamma,                      \
                                    const T* __restrict__ beta, const float* __restrict__ dm_in,                      \
                                    const T* __restrict__ dy, int dy_stride, const float* __restrict__ carry,         \
                                    float* __restrict__ dc, float* __restrict__ ds, float* __restrict__ dm_tau) {     \
        lstm_ln_cell_backward_body<T>(batch, hidden, step, lengths, gates, c_hat, rstd, gamma, beta, dm_in, dy,       \
                                      dy_stride, carry, dc, ds, dm_tau);                                              \
    }
RNNK_INSTANTIATE(LSTM_LN_CELL_BACKWARD, lstm_ln_cell_backward)
