// Vanilla RNN pointwise step kernels, h = act(xg + b_ih + hg + b_hh) with act = tanh or relu.
// The maths of src/backend/reference/rnn.rs; backward takes the derivative from the saved
// output: tanh' = 1 - h², relu' = [h > 0].
//
// Storage: float entries (NAME) and 16-bit ones (NAME_f16, NAME_bf16; "Storage types" in
// common.cuh); the arguments typed T are the storage ones (biases, h_prev, h, y, dy, dg).
//
// Memory per row and step, in floats: forward reads xg, hg (H each), writes h, y (and the gates,
// which equal h, when training); backward reads the gates, dy and the carry, writes dG and the
// carry: all streaming, coalesced along j.
//
// The gate clip (the cell option gate_clip) has its own entries, NAME_clip (and _f16, _bf16):
// the same templates with CLIP = true and one more argument, so that the plain entries compile
// to the code they had before. Forward clips the pre-activation to [-clip, clip] before the
// activation (onnxruntime's order); backward passes the gradient only where it was not clipped
// (ClipRange in common.cuh: for relu, 0 < h < clip; for tanh, tanh(-clip) < h < tanh(clip)).
#include "cells.cuh"

template <bool RELU, bool CLIP, typename T>
__device__ __forceinline__ void forward_step(int batch, int hidden, int step, const int* __restrict__ lengths,
                                             const float* __restrict__ xg, const float* __restrict__ hg,
                                             const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                             const T* __restrict__ h_prev, float* __restrict__ gates,
                                             T* __restrict__ h, T* __restrict__ y, int y_stride, float clip) {
    const long long hh = hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        if (!row_active(lengths, (int)b, step)) {
            if (gates) gates[e] = 0.0f;
            h[e] = h_prev[e];
            st(y, b * y_stride + j, 0.0f);
            continue;
        }
        const float v = CLIP ? rnn_cell<RELU>(clip_to(xg[e] + opt(b_ih, j) + (hg[e] + opt(b_hh, j)), clip), 0.0f)
                             : rnn_cell<RELU>(xg[e] + opt(b_ih, j), hg[e] + opt(b_hh, j));
        if (gates) gates[e] = v;
        st(h, e, v);
        st(y, b * y_stride + j, v);
    }
}

template <bool RELU, bool CLIP, typename T>
__device__ __forceinline__ void backward_step(int batch, int hidden, int step, const int* __restrict__ lengths,
                                              const float* __restrict__ gates, const T* __restrict__ dy,
                                              int dy_stride, float* __restrict__ carry, T* __restrict__ dg, float clip) {
    const long long hh = hidden;
    const ClipRange act = {CLIP, CLIP ? (RELU ? 0.0f : tanhf(-clip)) : 0.0f, CLIP ? (RELU ? clip : tanhf(clip)) : 0.0f};
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const bool active = row_active(lengths, (int)b, step);
        const float dh = carry[e] + ((active && dy) ? ld(dy, b * dy_stride + j) : 0.0f);
        if (!active) {
            carry[e] = dh;
            st(dg, e, 0.0f);
            continue;
        }
        const float v = gates[e];
        if (CLIP) {
            // relu: the clip's pass (0 < v < clip) is also relu's derivative.
            st(dg, e, dh * (RELU ? act.pass(v) : (1.0f - v * v) * act.pass(v)));
        } else {
            st(dg, e, dh * (RELU ? (v > 0.0f ? 1.0f : 0.0f) : (1.0f - v * v)));
        }
        carry[e] = 0.0f;
    }
}

// One forward step of a tanh RNN. Arguments (shapes with G = 1):
// lengths [B]; xg, hg [B, H]; b_ih, b_hh [H] or null; h_prev [B, H]; gates [B, H] out or null
// (inference); h [B, H] out; y [B, y_stride] out (columns 0..H). Inactive rows: gates = 0,
// h = h_prev, y = 0. rnn_relu_forward_step: the same with relu.
#define RNN_FORWARD_STEP(NAME, T, RELU)                                                                           \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* lengths, const float* xg,         \
                                    const float* hg, const T* b_ih, const T* b_hh, const T* h_prev, float* gates, \
                                    T* h, T* y, int y_stride) {                                                   \
        forward_step<RELU, false, T>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, y_stride, 0.0f); \
    }
#define RNN_TANH_FORWARD_STEP(NAME, T) RNN_FORWARD_STEP(NAME, T, false)
#define RNN_RELU_FORWARD_STEP(NAME, T) RNN_FORWARD_STEP(NAME, T, true)
RNNK_INSTANTIATE(RNN_TANH_FORWARD_STEP, rnn_tanh_forward_step)
RNNK_INSTANTIATE(RNN_RELU_FORWARD_STEP, rnn_relu_forward_step)

// The forward steps with the gate clip (one more argument, clip > 0).
#define RNN_FORWARD_STEP_CLIP(NAME, T, RELU)                                                                      \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* lengths, const float* xg,         \
                                    const float* hg, const T* b_ih, const T* b_hh, const T* h_prev, float* gates, \
                                    T* h, T* y, int y_stride, float clip) {                                       \
        forward_step<RELU, true, T>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, y_stride, clip); \
    }
#define RNN_TANH_FORWARD_STEP_CLIP(NAME, T) RNN_FORWARD_STEP_CLIP(NAME, T, false)
#define RNN_RELU_FORWARD_STEP_CLIP(NAME, T) RNN_FORWARD_STEP_CLIP(NAME, T, true)
RNNK_INSTANTIATE(RNN_TANH_FORWARD_STEP_CLIP, rnn_tanh_forward_step_clip)
RNNK_INSTANTIATE(RNN_RELU_FORWARD_STEP_CLIP, rnn_relu_forward_step_clip)

// One backward step of a tanh RNN: dh = carry + dy (dy on active rows, dy [B, dy_stride] or
// null); dG [B, H] = dh·tanh'(saved gates [B, H]); carry [B, H] becomes 0 on active rows (the
// dG·W_hh GEMM adds into it) and dh on inactive ones, whose dG is 0. rnn_relu_backward_step:
// the same with relu.
#define RNN_BACKWARD_STEP(NAME, T, RELU)                                                                     \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* lengths, const float* gates,  \
                                    const T* dy, int dy_stride, float* carry, T* dg) {                       \
        backward_step<RELU, false, T>(batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg, 0.0f); \
    }
#define RNN_TANH_BACKWARD_STEP(NAME, T) RNN_BACKWARD_STEP(NAME, T, false)
#define RNN_RELU_BACKWARD_STEP(NAME, T) RNN_BACKWARD_STEP(NAME, T, true)
RNNK_INSTANTIATE(RNN_TANH_BACKWARD_STEP, rnn_tanh_backward_step)
RNNK_INSTANTIATE(RNN_RELU_BACKWARD_STEP, rnn_relu_backward_step)

// The backward steps with the forward's gate clip (clip > 0).
#define RNN_BACKWARD_STEP_CLIP(NAME, T, RELU)                                                                \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* lengths, const float* gates,  \
                                    const T* dy, int dy_stride, float* carry, T* dg, float clip) {           \
        backward_step<RELU, true, T>(batch, hidden, step, lengths, gates, dy, dy_stride, carry, dg, clip);   \
    }
#define RNN_TANH_BACKWARD_STEP_CLIP(NAME, T) RNN_BACKWARD_STEP_CLIP(NAME, T, false)
#define RNN_RELU_BACKWARD_STEP_CLIP(NAME, T) RNN_BACKWARD_STEP_CLIP(NAME, T, true)
RNNK_INSTANTIATE(RNN_TANH_BACKWARD_STEP_CLIP, rnn_tanh_backward_step_clip)
RNNK_INSTANTIATE(RNN_RELU_BACKWARD_STEP_CLIP, rnn_relu_backward_step_clip)
