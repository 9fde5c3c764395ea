// The GRU and vanilla RNN cell maths for one (row, unit), shared by the per-step pointwise
// kernels (gru_pointwise.cu, rnn_pointwise.cu) and the persistent kernels (persistent_cell.cu),
// so that both paths compute exactly the same f32 expressions. The maths of
// src/backend/reference/gru.rs and rnn.rs.
//
// Arguments are pre-activations with their biases: gx = (x·W_ih^T)[g·H + j] + b_ih[g·H + j] and
// gh = (h_prev·W_hh^T)[g·H + j] + b_hh[g·H + j] for gate g of unit j.
#pragma once
#include "common.cuh"

// The activated gates of one GRU unit (PyTorch/cuDNN variant: the reset gate applies after the
// recurrent matmul), and what backward needs besides them.
struct GruUnit {
    float r, z, n;
    float ahn;  // gh_n = W_hn h_prev + b_hn, saved for backward (da_r needs it)
    float h;    // the new hidden state
};

// r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), n = tanh(gx_n + r·gh_n), h = (1 - z)·n + z·h_prev.
__device__ __forceinline__ GruUnit gru_cell(float gx_r, float gx_z, float gx_n, float gh_r, float gh_z, float gh_n,
                                            float h_prev) {
    GruUnit o;
    o.r = sigmoidf_(gx_r + gh_r);
    o.z = sigmoidf_(gx_z + gh_z);
    o.ahn = gh_n;
    o.n = tanhf(fmaf(o.r, gh_n, gx_n));
    o.h = fmaf(o.z, h_prev, (1.0f - o.z) * o.n);
    return o;
}

// h = act(gx + gh), act = tanh or relu.
template <bool RELU>
__device__ __forceinline__ float rnn_cell(float gx, float gh) {
    const float a = gx + gh;
    // fmaxf(NaN, 0) would hide a NaN; the reference's relu keeps it.
    return RELU ? (a < 0.0f ? 0.0f : a) : tanhf(a);
}
