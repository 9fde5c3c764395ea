// Persistent backward (BPTT through one layer-direction) for small batches: one cooperative launch
// runs every step of the reverse time loop, each block holding its columns of W_hh in shared
// memory for the whole sequence. One template over the cell: LSTM without projection, GRU,
// vanilla RNN (tanh, relu). The cell maths is that of cells.cuh (lstm_cell_backward,
// gru_cell_backward, rnn_cell_backward), the expressions of the per-step kernels
// lstm_backward_step, gru_backward_step and rnn_*_backward_step.
//
// Why: the per-step backward launches a pointwise kernel and a cuBLAS GEMM
// dh_prev += dG_h[B, G·H] · W_hh[G·H, H] per step; at small B each GEMM re-reads all of W_hh
// (4·G·H² bytes) for a few FLOPs per weight. Here W_hh is read from global memory once; per step
// only dG_h (4·B·G·H bytes) moves between blocks, through L2, around one grid-wide barrier.
//
// Work split (the host, Exec::persistent_units, picks U as for the forward kernels):
// - Block k owns hidden units j in [k·U, k·U + U) and the W_hh columns of those units for every
//   gate row r (W_hh[r][j], r in 0..G·H), stored unit-major: w_s[u][r]. The same G·U·H floats
//   as the forward's rows.
// - Dynamic shared memory: 4·(U·G·H + B·H + 3·B·U) bytes: the W_hh columns, one gate's chunk of
//   dG_h [B][H], and per (b, u) the carried dh, the part of dh_prev that bypasses W_hh, and
//   (LSTM) the carried dc. GRU H = 1024, B = 4, U = 8: 112.4 KiB.
// - 256 threads = 8 warps per block.
// Per step t (in the reverse of the forward's order):
//   A. one thread per (b, u): dh = carry + dy[t] (dy on active rows), the cell's backward from
//      the saved activations, dG (and GRU's separate dG_h) written to dgi/dgh [T, B, G·H] (the
//      buffers the driver's weight-gradient GEMMs read afterwards), the direct part of dh_prev
//      kept in shared memory, dc carried in shared memory (LSTM). Rows past their length pass
//      dh (and dc) through untouched, dG = 0, exactly as the per-step kernels;
//   grid_barrier (common.cuh): every block's dG_h of step t is written;
//   B. for each gate g, the block stages dG_h[t][:, g·H .. g·H + H] in shared memory (load_cg:
//      other blocks wrote it), and warp w, for each of its units u, accumulates
//      Σ_k dG_h[b][g·H + k]·W_hh[g·H + k][j] over lanes striding k, B accumulators per lane,
//      reduced with warp_sum; after the last gate, carry[b][u] = direct + the sum.
// One grid barrier per step: phase B of step t reads only this block's shared memory and the
// dG_h of step t (its own slot of dgh, written once), and step t+1's phase A needs only this
// block's carry, so B(t) → A(t+1) needs a block barrier, not a grid one.
//
// The initial carry and dc are read from `carry` and `dc` (dhn, dcn or zeros, set by the host);
// at the end they hold dh0 and dc0.
//
// Summation order: on the host emulation (one lane, one warp) phase B sums r = 0..G·H-1 in order,
// starting from 0 and adding the direct part last, with unfused products: exactly the host
// sgemm's `acc += a·b` then `1·acc + 1·c`, so the emulated persistent backward is bit-identical
// to the emulated per-step one. On the device the sum is lane-strided and shuffle-reduced, so it
// agrees with cuBLAS to f32 rounding.
//
// Requirements (checked by the host before choosing this kernel): cooperative launch, all
// gridDim.x = ceil(H / U) blocks of all directions co-resident, batch <= PERSISTENT_MAX_BATCH,
// blockDim.x a multiple of 32 (on the device), the dynamic shared memory within the device's
// opt-in limit, and no projection for an LSTM. Otherwise the driver uses the per-step path.
//
// Host emulation: with blockDim = gridDim = 1 (common.cuh) a "warp" is one lane, the one block
// owns all units (the host passes U = H), shared memory is malloc'd and the barrier is a no-op.
#include "cells.cuh"
#ifndef __CUDACC__
#include <stdlib.h>
#endif

#define PERSISTENT_MAX_BATCH 8
// Threads per block. The entries declare __launch_bounds__(256, 1): one block per SM is the
// design (U is sized for it), and without the minimum of 1 ptxas caps the RNN entries' registers
// low enough that they spill; with it no entry spills (.ci/cuda.sh prints each entry's
// registers and spills).
#define PERSISTENT_BACKWARD_THREADS 256

// What the forward pass saved, for one layer-direction (each [T, B, *] in time order).
struct BwdSaved {
    const float* gates;  // [T, B, G·H]: activated gates
    const float* extra;  // GRU [T, B, H]: W_hn h_prev + b_hn; else null
    const float* c;      // LSTM [T, B, H]: cell states; else null
    const float* h;      // GRU [T, B, H]: hidden states; else null
    const float* h0;     // GRU [B, H]; else null
    const float* c0;     // LSTM [B, H]; else null
};

// The backward of one active (row b, unit j) at step t. grow: the offset of row (t, b) in
// gates / dgi; e = b·H + j; prev_t: the forward's previous step, or -1 at its first; bh = B·H;
// dh: the gradient of this step's output; dc: the carried dc (LSTM), updated. Writes dgi [G] and
// dgh [G] and returns the part of dh_prev that bypasses W_hh.
struct LstmBwd {
    static constexpr int G = 4;
    static __device__ __forceinline__ float active(const BwdSaved& s, long long grow, int h, long long t, long long e,
                                                   long long prev_t, long long bh, float dh, float* dc, float* dgi,
                                                   float* dgh) {
        const float* gr = s.gates + grow;
        const float c_prev = prev_t < 0 ? s.c0[e] : s.c[prev_t * bh + e];
        const long long j = e % h;
        *dc = lstm_cell_backward(gr[j], gr[h + j], gr[2 * h + j], gr[3 * h + j], s.c[t * bh + e], c_prev, dh, *dc, dgi);
#pragma unroll
        for (int g = 0; g < G; ++g) dgh[g] = dgi[g];
        return 0.0f;
    }
};

struct GruBwd {
    static constexpr int G = 3;
    static __device__ __forceinline__ float active(const BwdSaved& s, long long grow, int h, long long t, long long e,
                                                   long long prev_t, long long bh, float dh, float*, float* dgi,
                                                   float* dgh) {
        const float* gr = s.gates + grow;
        const float h_prev = prev_t < 0 ? s.h0[e] : s.h[prev_t * bh + e];
        const long long j = e % h;
        return gru_cell_backward(gr[j], gr[h + j], gr[2 * h + j], s.extra[t * bh + e], h_prev, dh, dgi, dgh);
    }
};

template <bool RELU>
struct RnnBwd {
    static constexpr int G = 1;
    static __device__ __forceinline__ float active(const BwdSaved& s, long long grow, int h, long long, long long e,
                                                   long long, long long, float dh, float*, float* dgi, float* dgh) {
        dgi[0] = dgh[0] = rnn_cell_backward<RELU>(s.gates[grow + e % h], dh);
        return 0.0f;
    }
};

// Dynamic shared memory of a block, in floats: W_hh columns [U][G·H], a dG_h chunk [B][H], and
// carry, direct, dc [B][U] each.
__device__ __forceinline__ long long persistent_backward_smem_floats(int g, int batch, int hidden, int units) {
    return (long long)units * g * hidden + (long long)batch * hidden + 3LL * batch * units;
}

template <class Cell>
__device__ __forceinline__ void persistent_backward(float* smem, int batch, int hidden, int steps, int reverse,
                                                    int units, const int* __restrict__ lengths,
                                                    const float* __restrict__ w_hh, const BwdSaved s,
                                                    const float* __restrict__ dy, int dy_stride, float* carry,
                                                    float* dc, float* dgi, float* dgh, unsigned int* barrier) {
    constexpr int G = Cell::G;
    const int h = hidden;
    const long long gh = (long long)G * h, bh = (long long)batch * h;
    const int bu = batch * units;
    float* w_s = smem;                           // [U][G·H]: w_s[u][r] = W_hh[r][j0 + u]
    float* d_s = w_s + (long long)units * gh;    // [B][H]: dG_h[t][b][g·H + k] of gate g
    float* carry_s = d_s + bh;                   // [B][U]: dh carried into the step; in phase B the partial sums
    float* direct_s = carry_s + bu;              // [B][U]: the part of dh_prev that bypasses W_hh
    float* dc_s = direct_s + bu;                 // [B][U]: LSTM's carried dc
    const int j0 = blockIdx.x * units;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int lanes = nthreads < 32 ? nthreads : 32;  // 32 on the device, 1 on the host
    const int lane = tid % lanes, warp = tid / lanes, nwarps = nthreads / lanes;
    if (batch > PERSISTENT_MAX_BATCH || j0 >= h) {
        // The host never launches this; a block past H has no units but must still take part
        // in every barrier.
        for (int k = 0; k < steps; ++k) grid_barrier(barrier);
        return;
    }

    // This block's W_hh columns, once (columns of units past H are zero), and the carries.
    for (long long e = tid; e < units * gh; e += nthreads) {
        const int u = (int)(e / gh);
        const long long r = e % gh;
        const int j = j0 + u;
        w_s[e] = j < h ? w_hh[r * h + j] : 0.0f;
    }
    for (int e = tid; e < bu; e += nthreads) {
        const int b = e / units, j = j0 + e % units;
        const long long hb = (long long)b * h + j;
        carry_s[e] = j < h ? carry[hb] : 0.0f;
        dc_s[e] = (j < h && G == 4) ? dc[hb] : 0.0f;
    }
    block_sync();

    for (int k = 0; k < steps; ++k) {
        // Backward processes the steps in the reverse of the forward's order.
        const long long t = reverse ? k : steps - 1 - k;
        const long long prev_t = reverse ? (t + 1 < steps ? t + 1 : -1) : t - 1;

        // A. The cell's backward, one thread per (b, u).
        for (int e = tid; e < bu; e += nthreads) {
            const int b = e / units, u = e % units, j = j0 + u;
            if (j >= h) continue;
            const long long hb = (long long)b * h + j;
            const long long grow = (t * batch + b) * gh;
            const bool active = row_active(lengths, b, (int)t);
            const float dh = carry_s[e] + ((active && dy) ? dy[(t * batch + b) * dy_stride + j] : 0.0f);
            float gi[G], gg[G];
            if (active) {
                direct_s[e] = Cell::active(s, grow, h, t, hb, prev_t, bh, dh, &dc_s[e], gi, gg);
            } else {
                // Past the row's length: dh (and dc) pass through, dG = 0.
                direct_s[e] = dh;
#pragma unroll
                for (int g = 0; g < G; ++g) gi[g] = gg[g] = 0.0f;
            }
#pragma unroll
            for (int g = 0; g < G; ++g) {
                dgi[grow + (long long)g * h + j] = gi[g];
                if (dgh != dgi) dgh[grow + (long long)g * h + j] = gg[g];
            }
            carry_s[e] = 0.0f;  // phase B's running sum starts at 0, as the GEMM's
        }
        // Every block's dG_h of step t is written before any block reads it.
        grid_barrier(barrier);

        // B. carry[b][u] = direct[b][u] + Σ_r dG_h[t][b][r]·W_hh[r][j0 + u], one gate chunk at a time.
        const float* dg_t = dgh + t * batch * gh;
        for (int g = 0; g < G; ++g) {
            for (long long e = tid; e < bh; e += nthreads) {
                const long long b = e / h, kk = e % h;
                d_s[e] = load_cg(dg_t + b * gh + (long long)g * h + kk);
            }
            block_sync();
            for (int u = warp; u < units; u += nwarps) {
                if (j0 + u >= h) break;  // units only grow along the loop; uniform across the warp
                float acc[PERSISTENT_MAX_BATCH];
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) acc[b] = (lane == 0 && b < batch) ? carry_s[b * units + u] : 0.0f;
                const float* wu = w_s + (long long)u * gh + (long long)g * h;
#pragma unroll 4
                for (int kk = lane; kk < h; kk += lanes) {
                    const float wv = wu[kk];
#pragma unroll
                    for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) {
                        // Not fmaf: the host emulation then sums exactly as the host sgemm.
                        if (b < batch) acc[b] = acc[b] + wv * d_s[(long long)b * h + kk];
                    }
                }
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) {
                    if (b < batch) {
                        const float v = warp_sum(acc[b]);  // batch is uniform
                        if (lane == 0) carry_s[b * units + u] = g == G - 1 ? v + direct_s[b * units + u] : v;
                    }
                }
            }
            // d_s is not overwritten while another warp still reads it; carry_s is complete
            // before the next step's phase A.
            block_sync();
        }
    }

    // dh0 and (LSTM) dc0 of this block's units.
    for (int e = tid; e < bu; e += nthreads) {
        const int b = e / units, j = j0 + e % units;
        if (j >= h) continue;
        const long long hb = (long long)b * h + j;
        carry[hb] = carry_s[e];
        if (G == 4) dc[hb] = dc_s[e];
    }
}

// Gets the dynamic shared memory (malloc'd on the host emulation) and runs the kernel.
template <class Cell>
__device__ __forceinline__ void persistent_backward_entry(int batch, int hidden, int steps, int reverse, int units,
                                                          const int* lengths, const float* w_hh, const float* gates,
                                                          const float* extra, const float* c_all, const float* h_all,
                                                          const float* h0, const float* c0, const float* dy,
                                                          int dy_stride, float* carry, float* dc, float* dgi,
                                                          float* dgh, unsigned int* barrier) {
#ifdef __CUDACC__
    extern __shared__ float smem[];
#else
    float* smem =
        (float*)malloc(sizeof(float) * (size_t)persistent_backward_smem_floats(Cell::G, batch, hidden, units));
    if (!smem) abort();
#endif
    const BwdSaved s = {gates, extra, c_all, h_all, h0, c0};
    persistent_backward<Cell>(smem, batch, hidden, steps, reverse, units, lengths, w_hh, s, dy, dy_stride, carry, dc,
                              dgi, dgh, barrier);
#ifndef __CUDACC__
    free(smem);
#endif
}

// One entry per cell, each the same signature: persistent_backward_entry<CELL> under the entry's name.
#define PERSISTENT_BACKWARD_ENTRY(NAME, CELL)                                                                          \
    extern "C" __global__ void __launch_bounds__(PERSISTENT_BACKWARD_THREADS, 1) NAME(                                \
        int batch, int hidden, int steps, int reverse, int units, const int* lengths, const float* w_hh,               \
        const float* gates, const float* extra, const float* c_all, const float* h_all, const float* h0, const float* c0, \
        const float* dy, int dy_stride, float* carry, float* dc, float* dgi, float* dgh, unsigned int* barrier) {      \
        persistent_backward_entry<CELL>(batch, hidden, steps, reverse, units, lengths, w_hh, gates, extra, c_all, h_all, \
                                        h0, c0, dy, dy_stride, carry, dc, dgi, dgh, barrier);                          \
    }

// A whole LSTM (no projection) layer-direction backward. Arguments (G = 4):
//   batch B <= 8, hidden H, steps T, reverse (0: the forward ran t = 0..T-1, so backward runs
//   t = T-1..0; 1: the other way), units U per block; lengths [B]; w_hh [4H, H];
//   gates [T, B, 4H] (i, f, g, o), c_all [T, B, H], c0 [B, H]: saved by the forward;
//   extra, h_all, h0: unused, pass null;
//   dy: row (t, b) at dy + (t·B + b)·dy_stride, columns 0..H, or null (zeros);
//   carry [B, H]: dhn (or zeros) in, dh0 out; dc [B, H]: dcn (or zeros) in, dc0 out;
//   dgi [T, B, 4H] out: dG; dgh: pass dgi; barrier [2], zeros.
// Grid: ceil(H / U) blocks of PERSISTENT_BACKWARD_THREADS, all co-resident (cooperative launch),
// dynamic shared memory 4·(4·U·H + B·H + 3·B·U) bytes.
PERSISTENT_BACKWARD_ENTRY(persistent_lstm_backward, LstmBwd)

// As persistent_lstm_backward for a GRU (G = 3): gates [T, B, 3H] (r, z, n), extra [T, B, H]
// (W_hn h_prev + b_hn), h_all [T, B, H] (the states after each step), h0 [B, H]; c_all, c0, dc
// unused (null); dgi [T, B, 3H] out: input-side dG; dgh [T, B, 3H] out: hidden-side dG (da_n·r
// in the n gate). Shared memory 4·(3·U·H + B·H + 3·B·U) bytes.
PERSISTENT_BACKWARD_ENTRY(persistent_gru_backward, GruBwd)

// As persistent_lstm_backward for a tanh RNN (G = 1): gates [T, B, H] (= h); extra, c_all,
// h_all, h0, c0, dc unused (null); dgi [T, B, H] out; dgh: pass dgi. Shared memory
// 4·(U·H + B·H + 3·B·U) bytes.
PERSISTENT_BACKWARD_ENTRY(persistent_rnn_tanh_backward, RnnBwd<false>)

// As persistent_rnn_tanh_backward, with relu.
PERSISTENT_BACKWARD_ENTRY(persistent_rnn_relu_backward, RnnBwd<true>)
