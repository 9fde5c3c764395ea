// Persistent GRU and vanilla RNN (tanh, relu) forward for small batches: one cooperative launch
// runs every step of one layer-direction, each block holding its slice of W_hh in shared memory
// for the whole sequence. One template over the cell (Gru, Rnn<RELU>); the cell maths is that of
// cells.cuh, shared with gru_pointwise.cu and rnn_pointwise.cu.
//
// Why: at small B the per-step path is latency-bound. Each step's recurrent GEMM [B, H]·[H, G·H]
// re-reads all of W_hh (4·G·H² bytes: 12 MiB for a GRU at H = 1024) from L2 for a few FLOPs per
// weight, and a GEMM plus a pointwise launch per step cost more than the work. Here W_hh is read
// from global memory once; per step only h_prev (4·B·H bytes) moves between blocks, through L2,
// followed by one grid-wide barrier.
//
// Work split (the design numbers; the host, Exec::persistent_units, picks U):
// - Block k owns hidden units j in [k·U, k·U + U) and the G gate rows of W_hh that produce them
//   (rows g·H + j), stored unit-major: w_s[u][g][0..H]. So the cell update of a unit needs no
//   other block's data. U = ceil(H / (SMs / D)) for D directions: one block per SM (GRU,
//   H = 1024 on 132 SMs: U = 8, 128 blocks; bidirectional U = 16).
// - Dynamic shared memory: 4·(U·G·H + B·H) bytes (W slice + h_prev); GRU H = 1024, B = 4:
//   112 KiB at U = 8, 208 KiB at U = 16.
// - 256 threads = 8 warps per block. Warp w owns units w, w + 8, ...; for its unit it computes
//   the G·B dot products W_hh[g·H + j]·h_prev[b] at once (lanes stride k, so each weight and each
//   h value is read once from shared memory per unit, conflict-free; G·B accumulators per lane),
//   reduces them with xor warp shuffles (warp_sum), and lane b applies the cell to row b. No
//   shared-memory round trip and no block barrier between the matvec and the cell. The xg values
//   of lane b are loaded before the dot products so their latency hides behind them.
// Per step:
//   1. copy h_prev [B, H] to shared memory (8 loads in flight per thread; load_cg bypasses L1:
//      other blocks wrote it);
//   2. per unit: dot products, warp reduction, cell (adds xg, b_ih, b_hh), writes h_t, y and,
//      when training, the saved gates (and GRU's extra), masking rows past their length exactly
//      like the pointwise kernels (inactive rows keep h, output 0, save zeros);
//   3. grid_barrier (common.cuh), so that step t+1 reads all of h_t.
// The saved gates and extra have the layout of gru_forward_step / rnn_*_forward_step, so backward
// (the per-step path) is unchanged.
//
// Requirements (checked by the host before choosing this kernel): cooperative launch, all
// gridDim.x = ceil(H / U) blocks of all directions co-resident, batch <= PERSISTENT_MAX_BATCH,
// blockDim.x a multiple of 32 (on the device), and the dynamic shared memory within the device's
// opt-in limit. Otherwise the driver uses the per-step path.
//
// Host emulation: with blockDim = gridDim = 1 (common.cuh) a "warp" is one lane, the one block
// owns all units (the host passes U = H), shared memory is malloc'd and the barrier is a no-op:
// the same indexing, masking and cell maths, run serially in the driver's emulation tests.
#include "cells.cuh"
#ifndef __CUDACC__
#include <stdlib.h>
#endif

#define PERSISTENT_MAX_BATCH 8
#define PERSISTENT_CELL_THREADS 256

struct Gru {
    static constexpr int G = 3;
    // gx, gh: [G] pre-activations with biases; writes the saved gates [G] and extra; returns h.
    static __device__ __forceinline__ float apply(const float* gx, const float* gh, float h_prev, float* gates,
                                                  float* extra) {
        const GruUnit o = gru_cell(gx[0], gx[1], gx[2], gh[0], gh[1], gh[2], h_prev);
        gates[0] = o.r;
        gates[1] = o.z;
        gates[2] = o.n;
        *extra = o.ahn;
        return o.h;
    }
};

template <bool RELU>
struct Rnn {
    static constexpr int G = 1;
    static __device__ __forceinline__ float apply(const float* gx, const float* gh, float, float* gates, float* extra) {
        const float v = rnn_cell<RELU>(gx[0], gh[0]);
        gates[0] = v;
        *extra = 0.0f;
        return v;
    }
};

// Dynamic shared memory of a block, in floats: the W_hh slice [U][G][H] and h_prev [B][H].
__device__ __forceinline__ long long persistent_cell_smem_floats(int g, int batch, int hidden, int units) {
    return (long long)units * g * hidden + (long long)batch * hidden;
}

template <class Cell>
__device__ __forceinline__ void persistent_forward(
    float* smem, int batch, int hidden, int steps, int reverse, int units, const int* __restrict__ lengths,
    const float* __restrict__ xg, const float* __restrict__ w_hh, const float* __restrict__ b_ih,
    const float* __restrict__ b_hh, const float* __restrict__ h0, float* h_states, int training,
    float* __restrict__ gates_save, float* __restrict__ extra_save, float* __restrict__ y, int y_stride,
    float* __restrict__ hn, unsigned int* barrier) {
    constexpr int G = Cell::G;
    const int h = hidden;
    const long long gh = (long long)G * h, bh = (long long)batch * h;
    float* w_s = smem;                              // [U][G][H]: w_s[u][g] is W_hh row g·H + j0 + u
    float* h_s = w_s + (long long)units * gh;       // [B][H]
    const int j0 = blockIdx.x * units;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int lanes = nthreads < 32 ? nthreads : 32;  // 32 on the device, 1 on the host
    const int lane = tid % lanes, warp = tid / lanes, nwarps = nthreads / lanes;
    if (batch > PERSISTENT_MAX_BATCH || j0 >= h) {
        // The host never launches this; a block past H has no units but must still take part
        // in every barrier.
        for (int s = 0; s < steps; ++s) grid_barrier(barrier);
        return;
    }

    // This block's gate rows of W_hh, once; rows of units past H are zero.
    for (long long e = tid; e < units * gh; e += nthreads) {
        const int u = (int)(e / gh);
        const long long rem = e % gh;
        const int g = (int)(rem / h), k = (int)(rem % h), j = j0 + u;
        w_s[e] = j < h ? w_hh[((long long)g * h + j) * h + k] : 0.0f;
    }

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        const int prev_t = reverse ? t + 1 : t - 1;
        const float* h_prev = s == 0 ? h0 : h_states + (training ? (long long)prev_t : (long long)((s - 1) & 1)) * bh;
        float* h_t = h_states + (training ? (long long)t : (long long)(s & 1)) * bh;

        // 1. h_prev -> shared memory, 8 independent loads per thread in flight.
        for (long long base = tid; base < bh; base += 8LL * nthreads) {
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const long long e = base + (long long)i * nthreads;
                v[i] = e < bh ? load_cg(h_prev + e) : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const long long e = base + (long long)i * nthreads;
                if (e < bh) h_s[e] = v[i];
            }
        }
        block_sync();

        // 2. Per unit of this warp: the G·B dot products, reduced, then the cell on lane b.
        for (int u = warp; u < units; u += nwarps) {
            const int j = j0 + u;
            if (j >= h) break;  // units only grow along the loop; uniform across the warp
            // xg of row b = lane, early: independent of the dot products.
            float xv[G];
            const long long xrow = ((long long)t * batch + lane) * gh;
#pragma unroll
            for (int g = 0; g < G; ++g) xv[g] = lane < batch ? xg[xrow + (long long)g * h + j] : 0.0f;

            float acc[G][PERSISTENT_MAX_BATCH];
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) acc[g][b] = 0.0f;
            const float* wu = w_s + (long long)u * gh;
#pragma unroll 4
            for (int k = lane; k < h; k += lanes) {
                float wv[G];
#pragma unroll
                for (int g = 0; g < G; ++g) wv[g] = wu[(long long)g * h + k];
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) {
                    if (b < batch) {
                        const float hv = h_s[(long long)b * h + k];
#pragma unroll
                        for (int g = 0; g < G; ++g) acc[g][b] = fmaf(wv[g], hv, acc[g][b]);
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < G; ++g)
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b)
                    if (b < batch) acc[g][b] = warp_sum(acc[g][b]);  // batch is uniform

            // 3. The cell for (b, j): one iteration per lane b < B on the device.
            for (int b = lane; b < batch; b += lanes) {
                const long long hb = (long long)b * h + j;
                const long long grow = ((long long)t * batch + b) * gh;
                float* yr = y + ((long long)t * batch + b) * y_stride;
                float hv;
                if (!row_active(lengths, b, t)) {
                    if (gates_save) {
#pragma unroll
                        for (int g = 0; g < G; ++g) gates_save[grow + (long long)g * h + j] = 0.0f;
                    }
                    if (extra_save) extra_save[(long long)t * bh + hb] = 0.0f;
                    hv = h_s[hb];
                    yr[j] = 0.0f;
                } else {
                    float gx[G], ghv[G], gates[G], extra;
#pragma unroll
                    for (int g = 0; g < G; ++g) {
                        float a = 0.0f;  // acc[g][b] without a dynamically indexed (local-memory) array
#pragma unroll
                        for (int bb = 0; bb < PERSISTENT_MAX_BATCH; ++bb)
                            if (bb == b) a = acc[g][bb];
                        const long long gj = (long long)g * h + j;
                        ghv[g] = a + opt(b_hh, gj);
                        gx[g] = (b == lane ? xv[g] : xg[grow + gj]) + opt(b_ih, gj);
                    }
                    hv = Cell::apply(gx, ghv, h_s[hb], gates, &extra);
                    if (gates_save) {
#pragma unroll
                        for (int g = 0; g < G; ++g) gates_save[grow + (long long)g * h + j] = gates[g];
                    }
                    if (extra_save) extra_save[(long long)t * bh + hb] = extra;
                    yr[j] = hv;
                }
                h_t[hb] = hv;
                if (hn && s == steps - 1) hn[hb] = hv;
            }
        }
        // Every block's h_t is written before any block reads it as h_prev; h_s is not
        // overwritten while another warp of this block still reads it.
        grid_barrier(barrier);
    }
}

// Gets the dynamic shared memory (malloc'd on the host emulation) and runs the kernel.
template <class Cell>
__device__ __forceinline__ void persistent_entry(int batch, int hidden, int steps, int reverse, int units,
                                                 const int* lengths, const float* xg, const float* w_hh,
                                                 const float* b_ih, const float* b_hh, const float* h0,
                                                 float* h_states, int training, float* gates_save, float* extra_save,
                                                 float* y, int y_stride, float* hn, unsigned int* barrier) {
#ifdef __CUDACC__
    extern __shared__ float smem[];
#else
    float* smem = (float*)malloc(sizeof(float) * (size_t)persistent_cell_smem_floats(Cell::G, batch, hidden, units));
    if (!smem) abort();
#endif
    persistent_forward<Cell>(smem, batch, hidden, steps, reverse, units, lengths, xg, w_hh, b_ih, b_hh, h0, h_states,
                             training, gates_save, extra_save, y, y_stride, hn, barrier);
#ifndef __CUDACC__
    free(smem);
#endif
}

// One entry per cell, each the same signature: persistent_entry<CELL> under the entry's name.
#define PERSISTENT_CELL_ENTRY(NAME, CELL)                                                                              \
    extern "C" __global__ void __launch_bounds__(PERSISTENT_CELL_THREADS) NAME(                                       \
        int batch, int hidden, int steps, int reverse, int units, const int* lengths, const float* xg, const float* w_hh, \
        const float* b_ih, const float* b_hh, const float* h0, float* h_states, int training, float* gates_save,       \
        float* extra_save, float* y, int y_stride, float* hn, unsigned int* barrier) {                                 \
        persistent_entry<CELL>(batch, hidden, steps, reverse, units, lengths, xg, w_hh, b_ih, b_hh, h0, h_states,       \
                               training, gates_save, extra_save, y, y_stride, hn, barrier);                            \
    }

// A whole GRU layer-direction forward. Arguments (G = 3):
//   batch B <= 8, hidden H, steps T, reverse (0: t = 0..T-1, 1: t = T-1..0), units U per block;
//   lengths [B]; xg [T, B, 3H]: x·W_ih^T for every step (no bias); w_hh [3H, H];
//   b_ih, b_hh [3H], or null; h0 [B, H];
//   h_states: training [T, B, H] (the state after step t in slot t), inference [2, B, H] (slot
//     s % 2 for the s-th processed step); training: 0 or 1;
//   gates_save [T, B, 3H] (r, z, n), or null; extra_save [T, B, H] (W_hn h_prev + b_hn), or null;
//   y: row (t, b) at y + (t·B + b)·y_stride, columns 0..H; hn [B, H], or null;
//   barrier [2], zeros.
// Grid: ceil(H / U) blocks of PERSISTENT_CELL_THREADS, all co-resident (cooperative launch),
// dynamic shared memory 4·(3·U·H + B·H) bytes.
PERSISTENT_CELL_ENTRY(persistent_gru_forward, Gru)

// As persistent_gru_forward for a tanh RNN (G = 1: xg [T, B, H], w_hh [H, H], biases [H],
// gates_save [T, B, H] = h; extra_save unused, pass null); shared memory 4·(U·H + B·H) bytes.
PERSISTENT_CELL_ENTRY(persistent_rnn_tanh_forward, Rnn<false>)

// As persistent_rnn_tanh_forward, with relu.
PERSISTENT_CELL_ENTRY(persistent_rnn_relu_forward, Rnn<true>)
