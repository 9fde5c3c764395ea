// Small helpers of the CUDA driver that have no cuBLAS or driver-API equivalent.
#include "common.cuh"

// p[0..n) = value (e.g. the ones vector whose GEMM with dG gives the bias gradients).
extern "C" __global__ void fill_f32(long long n, float value, float* __restrict__ p /* [n] */) {
    FOR_EACH_ELEMENT(e, n) { p[e] = value; }
}

// The same for 16-bit storage: p[0..n) = value rounded once (fill_f16, fill_bf16).
#define FILL16(NAME, T)                                                                  \
    extern "C" __global__ void NAME(long long n, float value, T* __restrict__ p /* [n] */) { \
        FOR_EACH_ELEMENT(e, n) { st(p, e, value); }                                       \
    }
FILL16(fill_f16, rnnk_f16)
FILL16(fill_bf16, rnnk_bf16)

// dst[0..n) += src[0..n) in f32, rounded once to the storage type: a bidirectional layer's
// outputs merged by sum, y = y_fwd + y_rev (add_f32, add_f16, add_bf16).
#define ADD(NAME, T)                                                                                      \
    extern "C" __global__ void NAME(long long n, const T* __restrict__ src /* [n] */, T* __restrict__ dst /* [n] */) { \
        FOR_EACH_ELEMENT(e, n) { st(dst, e, ld(dst, e) + ld(src, e)); }                                    \
    }
ADD(add_f32, float)
ADD(add_f16, rnnk_f16)
ADD(add_bf16, rnnk_bf16)

// dst [b, a, :] = src [a, b, :] for a < na, b < nb, rows of w elements: the first two axes of a
// [na, nb, w] tensor swapped (batch-first x, y, dx, dy to and from the driver's time-major
// layout; swap_axes_f32, swap_axes_f16, swap_axes_bf16). One thread per element, in dst's order.
#define SWAP_AXES(NAME, T)                                                                                 \
    extern "C" __global__ void NAME(int na, int nb, long long w, const T* __restrict__ src /* [na, nb, w] */, \
                                    T* __restrict__ dst /* [nb, na, w] */) {                               \
        FOR_EACH_ELEMENT(e, (long long)na * nb * w) {                                                     \
            const long long k = e % w, r = e / w, a = r % na, b = r / na;                                  \
            dst[e] = src[(a * nb + b) * w + k];                                                            \
        }                                                                                                  \
    }
SWAP_AXES(swap_axes_f32, float)
SWAP_AXES(swap_axes_f16, rnnk_f16)
SWAP_AXES(swap_axes_bf16, rnnk_bf16)

// Conversions between f32 and 16-bit storage, for the buffers the driver keeps in f32 (the
// LSTM cell state, the carried gradients dh and dc, the weight-gradient accumulator) and the
// caller's 16-bit ones (c0, cn, dhn, dcn, dh0, dc0, dparams): dst[0..n) = src converted, exactly
// to f32 (convert_f16_to_f32, convert_bf16_to_f32), rounded once to nearest even from f32
// (convert_f32_to_f16, convert_f32_to_bf16).
#define CONVERT(NAME, S, D)                                                                                  \
    extern "C" __global__ void NAME(long long n, const S* __restrict__ src /* [n] */, D* __restrict__ dst /* [n] */) { \
        FOR_EACH_ELEMENT(e, n) { st(dst, e, ld(src, e)); }                                                    \
    }
CONVERT(convert_f16_to_f32, rnnk_f16, float)
CONVERT(convert_bf16_to_f32, rnnk_bf16, float)
CONVERT(convert_f32_to_f16, float, rnnk_f16)
CONVERT(convert_f32_to_bf16, float, rnnk_bf16)

// dst[j] += Σ_i src[i·cols + j] for every column j < cols, the rows i summed in order: the LSTM
// peephole gradients, accumulated per (row, unit) over the steps by lstm_backward_step_opt, summed
// over the batch into the f32 gradient accumulator. One thread per column, so the result does not
// depend on the grid (no atomics). src [rows, cols], dst [cols], both f32.
extern "C" __global__ void add_column_sums_f32(int rows, int cols, const float* __restrict__ src,
                                               float* __restrict__ dst) {
    FOR_EACH_ELEMENT(j, (long long)cols) {
        float s = dst[j];
        for (long long i = 0; i < rows; ++i) s += src[i * cols + j];
        dst[j] = s;
    }
}
