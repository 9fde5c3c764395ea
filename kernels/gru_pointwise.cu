// GRU pointwise step kernels (PyTorch/cuDNN variant: the reset gate applies after the recurrent
// matmul), gates r, z, n. The maths of src/backend/reference/gru.rs:
//
// - forward, ah = hg + b_hh: r = σ(xg_r + b_ih_r + ah_r), z = σ(xg_z + b_ih_z + ah_z),
//   n = tanh(xg_n + b_ih_n + r·ah_n), h = (1 - z)·n + z·h_prev; ah_n is saved (extra);
// - backward from dh: dn = dh(1 - z), dz = dh(h_prev - n), da_n = dn(1 - n²),
//   da_r = da_n·ah_n·r(1-r), da_z = dz·z(1-z); dgi = [da_r, da_z, da_n],
//   dgh = [da_r, da_z, da_n·r], and z·dh passes to h_prev directly.
//
// Storage: float entries (NAME) and 16-bit ones (NAME_f16, NAME_bf16; "Storage types" in
// common.cuh); the arguments typed T are the storage ones (biases, h_prev, h, y, dy, dgi, dgh).
//
// Memory per row and step, in floats: forward reads xg, hg (3H each), h_prev (H) and the
// biases (6H, cached), writes gates (3H) and extra (H) when training, and h (H). Backward reads
// gates (3H), extra, h_prev, dh (H each), writes dgi, dgh (3H each) and the carry (H).
//
// The gate clip (the cell option gate_clip) has its own entries, NAME_clip (and _f16, _bf16):
// the same template with CLIP = true and one more argument, so that the plain entries compile to
// the code they had before. Forward clips the three pre-activations to [-clip, clip] before
// their activations (onnxruntime's order: n's is gx_n + r·gh_n, whole); backward passes each
// gate's gradient only where it was not clipped (ClipRange in common.cuh).
#include "cells.cuh"

// One forward step. Inactive rows: gates = 0, extra = 0, h = h_prev, y row = 0.
template <typename T, bool CLIP>
__device__ __forceinline__ void gru_forward_step_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ xg,     // [B, 3H]: W_ih x
    const float* __restrict__ hg,     // [B, 3H]: W_hh h_prev
    const T* __restrict__ b_ih,       // [3H], or null
    const T* __restrict__ b_hh,       // [3H], or null
    const T* __restrict__ h_prev,     // [B, H]
    float* __restrict__ gates,        // [B, 3H] out, or null (inference)
    float* __restrict__ extra,        // [B, H] out: W_hn h_prev + b_hn, or null (inference)
    T* __restrict__ h,                // [B, H] out
    T* __restrict__ y,                // [B, y_stride] out: columns 0..H
    int y_stride,
    float clip) {                     // CLIP: the gate clip (> 0)
    const long long hh = hidden, gh = 3LL * hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const long long row = b * gh;
        if (!row_active(lengths, (int)b, step)) {
            if (gates) {
                gates[row + j] = 0.0f;
                gates[row + hh + j] = 0.0f;
                gates[row + 2 * hh + j] = 0.0f;
            }
            if (extra) extra[e] = 0.0f;
            h[e] = h_prev[e];
            st(y, b * y_stride + j, 0.0f);
            continue;
        }
        const float gx_r = xg[row + j] + opt(b_ih, j), gx_z = xg[row + hh + j] + opt(b_ih, hh + j);
        const float gx_n = xg[row + 2 * hh + j] + opt(b_ih, 2 * hh + j);
        const float gh_r = hg[row + j] + opt(b_hh, j), gh_z = hg[row + hh + j] + opt(b_hh, hh + j);
        const float gh_n = hg[row + 2 * hh + j] + opt(b_hh, 2 * hh + j);
        const GruUnit o = CLIP ? gru_cell_clipped(gx_r, gx_z, gx_n, gh_r, gh_z, gh_n, ld(h_prev, e), clip)
                               : gru_cell(gx_r, gx_z, gx_n, gh_r, gh_z, gh_n, ld(h_prev, e));
        if (gates) {
            gates[row + j] = o.r;
            gates[row + hh + j] = o.z;
            gates[row + 2 * hh + j] = o.n;
        }
        if (extra) extra[e] = o.ahn;
        st(h, e, o.h);
        st(y, b * y_stride + j, o.h);
    }
}
#define GRU_FORWARD_STEP(NAME, T)                                                                                    \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ xg,            \
                                    const float* __restrict__ hg, const T* __restrict__ b_ih, const T* __restrict__ b_hh, const T* __restrict__ h_prev, float* __restrict__ gates,   \
                                    float* __restrict__ extra, T* __restrict__ h, T* __restrict__ y, int y_stride) {                                        \
        gru_forward_step_body<T, false>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, extra, h, y, y_stride, 0.0f); \
    }
RNNK_INSTANTIATE(GRU_FORWARD_STEP, gru_forward_step)

// The forward step with the gate clip (clip > 0).
#define GRU_FORWARD_STEP_CLIP(NAME, T)                                                                               \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ xg,            \
                                    const float* __restrict__ hg, const T* __restrict__ b_ih, const T* __restrict__ b_hh, const T* __restrict__ h_prev, float* __restrict__ gates,   \
                                    float* __restrict__ extra, T* __restrict__ h, T* __restrict__ y, int y_stride, float clip) {                            \
        gru_forward_step_body<T, true>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, extra, h, y, y_stride, clip); \
    }
RNNK_INSTANTIATE(GRU_FORWARD_STEP_CLIP, gru_forward_step_clip)

// One backward step: dh = carry + dy (dy on active rows); carry becomes z·dh on active rows
// (the part of dh_prev that bypasses W_hh; the dgh·W_hh GEMM adds the rest) and dh on inactive
// rows. Inactive rows: dgi = dgh = 0.
template <typename T, bool CLIP>
__device__ __forceinline__ void gru_backward_step_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ gates,  // [B, 3H]: saved r, z, n
    const float* __restrict__ extra,  // [B, H]: saved W_hn h_prev + b_hn
    const T* __restrict__ h_prev,     // [B, H]: hidden state of the previous step (h0 at the first)
    const T* __restrict__ dy,         // [B, dy_stride]: columns 0..H, or null
    int dy_stride,
    float* __restrict__ carry,        // [B, H] in/out
    T* __restrict__ dgi,              // [B, 3H] out
    T* __restrict__ dgh,              // [B, 3H] out
    float clip) {                     // CLIP: the forward's gate clip (> 0)
    const long long hh = hidden, gh = 3LL * hidden;
    const ClipRange sig = {CLIP, CLIP ? sigmoidf_(-clip) : 0.0f, CLIP ? sigmoidf_(clip) : 0.0f};
    const ClipRange th = {CLIP, CLIP ? tanhf(-clip) : 0.0f, CLIP ? tanhf(clip) : 0.0f};
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const long long row = b * gh;
        const bool active = row_active(lengths, (int)b, step);
        const float dh = carry[e] + ((active && dy) ? ld(dy, b * dy_stride + j) : 0.0f);
        if (!active) {
            carry[e] = dh;
            for (int k = 0; k < 3; ++k) {
                st(dgi, row + k * hh + j, 0.0f);
                st(dgh, row + k * hh + j, 0.0f);
            }
            continue;
        }
        const float r = gates[row + j], z = gates[row + hh + j], n = gates[row + 2 * hh + j];
        const float dn = dh * (1.0f - z);
        const float dz = dh * (ld(h_prev, e) - n);
        float dan = dn * (1.0f - n * n);
        float dar, daz;
        if (!CLIP) {
            dar = dan * extra[e] * r * (1.0f - r);
            daz = dz * z * (1.0f - z);
        } else {
            dan *= th.pass(n);
            dar = dan * extra[e] * r * (1.0f - r) * sig.pass(r);
            daz = dz * z * (1.0f - z) * sig.pass(z);
        }
        st(dgi, row + j, dar);
        st(dgi, row + hh + j, daz);
        st(dgi, row + 2 * hh + j, dan);
        st(dgh, row + j, dar);
        st(dgh, row + hh + j, daz);
        st(dgh, row + 2 * hh + j, dan * r);
        carry[e] = dh * z;
    }
}
#define GRU_BACKWARD_STEP(NAME, T)                                                                                  \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,        \
                                    const float* __restrict__ extra, const T* __restrict__ h_prev, const T* __restrict__ dy, int dy_stride, float* __restrict__ carry,  \
                                    T* __restrict__ dgi, T* __restrict__ dgh) {                                                               \
        gru_backward_step_body<T, false>(batch, hidden, step, lengths, gates, extra, h_prev, dy, dy_stride, carry, dgi, dgh, 0.0f); \
    }
RNNK_INSTANTIATE(GRU_BACKWARD_STEP, gru_backward_step)

// The backward step with the forward's gate clip (clip > 0).
#define GRU_BACKWARD_STEP_CLIP(NAME, T)                                                                             \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,        \
                                    const float* __restrict__ extra, const T* __restrict__ h_prev, const T* __restrict__ dy, int dy_stride, float* __restrict__ carry,  \
                                    T* __restrict__ dgi, T* __restrict__ dgh, float clip) {                                                   \
        gru_backward_step_body<T, true>(batch, hidden, step, lengths, gates, extra, h_prev, dy, dy_stride, carry, dgi, dgh, clip); \
    }
RNNK_INSTANTIATE(GRU_BACKWARD_STEP_CLIP, gru_backward_step_clip)
