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

// The same with the gate clip (the cell option gate_clip): each pre-activation, n's whole
// gx_n + r·gh_n, clipped to [-clip, clip] before its activation (clip_to in common.cuh).
__device__ __forceinline__ GruUnit gru_cell_clipped(float gx_r, float gx_z, float gx_n, float gh_r, float gh_z,
                                                    float gh_n, float h_prev, float clip) {
    GruUnit o;
    o.r = sigmoidf_(clip_to(gx_r + gh_r, clip));
    o.z = sigmoidf_(clip_to(gx_z + gh_z, clip));
    o.ahn = gh_n;
    o.n = tanhf(clip_to(fmaf(o.r, gh_n, gx_n), clip));
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

// ---- Backward of one (row, unit), for the persistent backward (persistent_backward.cu). ----
// The same f32 expressions as lstm_backward_step, gru_backward_step and rnn_*_backward_step, so
// the persistent path's dG is the per-step path's, bit for bit on the host emulation.

// LSTM from dm (the gradient of m = o·tanh(c)) and dc (the carried one): writes dg [4] (i, f, g,
// o) and returns the dc passed to the previous step. i, f, g, o, c: saved; c_prev: the previous
// step's cell state.
__device__ __forceinline__ float lstm_cell_backward(float i, float f, float g, float o, float c, float c_prev, float dm,
                                                    float dc, float* dg) {
    const float tc = tanhf(c);
    const float dcv = fmaf(dm * o, 1.0f - tc * tc, dc);
    dg[0] = dcv * g * i * (1.0f - i);
    dg[1] = dcv * c_prev * f * (1.0f - f);
    dg[2] = dcv * i * (1.0f - g * g);
    dg[3] = dm * tc * o * (1.0f - o);
    return dcv * f;
}

// GRU from dh: writes dgi [3] and dgh [3] (r, z, n; they differ in n: dgh_n = da_n·r) and returns
// z·dh, the part of dh_prev that bypasses W_hh. r, z, n, ahn (W_hn h_prev + b_hn): saved.
__device__ __forceinline__ float gru_cell_backward(float r, float z, float n, float ahn, float h_prev, float dh,
                                                   float* dgi, float* dgh) {
    const float dn = dh * (1.0f - z);
    const float dz = dh * (h_prev - n);
    const float dan = dn * (1.0f - n * n);
    const float dar = dan * ahn * r * (1.0f - r);
    const float daz = dz * z * (1.0f - z);
    dgi[0] = dar;
    dgi[1] = daz;
    dgi[2] = dan;
    dgh[0] = dar;
    dgh[1] = daz;
    dgh[2] = dan * r;
    return dh * z;
}

// Vanilla RNN: dG from dh and the saved output v (tanh' = 1 - v², relu' = [v > 0]).
template <bool RELU>
__device__ __forceinline__ float rnn_cell_backward(float v, float dh) {
    return dh * (RELU ? (v > 0.0f ? 1.0f : 0.0f) : (1.0f - v * v));
}
