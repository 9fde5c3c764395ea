// no host emulation (it needs many threads, shared memory and a grid barrier).
// Checked with many blocks and warps on the CPU by .ci/persistent_sim/forward.cpp.
//
// Persistent LSTM forward for small batches: one cooperative launch runs every step of one
// layer-direction, with each block's slice of W_hh held in shared memory for the whole sequence.
//
// Why: at small B the per-step path is latency-bound. Each step's recurrent GEMM [B, H]·[H, 4H]
// re-reads all of W_hh (16·H² bytes: 4 MB at H = 512) from L2/HBM for a few FLOPs per weight,
// and two launches per step cost more than the work. Here W_hh is read from global memory once;
// per step only h_prev (4·B·H bytes) moves between blocks, through L2, followed by one grid-wide
// barrier.
//
// Work split: block k owns hidden units j in [k·U, k·U + U) and the 4 gate rows of W_hh that
// produce them (rows g·H + j, g = i, f, g, o): 16·U·H bytes of shared memory. Per step:
//   1. copy h_prev [B, H] to shared memory (loads that bypass L1: other blocks wrote it);
//   2. each warp takes gate rows r and computes pre[b][r] = W_hh[r]·h_prev[b] for all b at once
//      (the weight is read once from shared memory per step, B accumulators per lane), reduced
//      with warp shuffles;
//   3. one thread per (b, u) adds xg (precomputed by one big GEMM), b_ih and b_hh, applies the
//      cell with c[b][u] kept in shared memory across steps, writes h_t, y and (training) the
//      saved gates and c, masking rows past their length exactly like lstm_forward_step;
//   4. grid-wide barrier, so that step t+1 reads all of h_t.
// The maths and the reserve layout are those of lstm_forward_step, so backward is unchanged.
//
// The barrier is grid_barrier of common.cuh (a counter and a generation number in global
// memory); the kernel is launched with cuLaunchCooperativeKernel, which fails instead of running
// if the blocks cannot all be resident at once, so the spin-wait cannot deadlock.
//
// Requirements (checked by the host before choosing this kernel): cooperative launch, all
// gridDim.x = ceil(H / U) blocks co-resident, batch <= PERSISTENT_MAX_BATCH, no projection, and
// the dynamic shared memory (4·(4·U·H + B·H + 4·B·U + B·U) bytes) within the device's limit.
#include "common.cuh"

#define PERSISTENT_MAX_BATCH 8

extern "C" __global__ void __launch_bounds__(256) persistent_lstm_forward(
    int batch, int hidden, int steps, int reverse, int units,  // units = U per block
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ xg,     // [T, B, 4H]: W_ih x for every step
    const float* __restrict__ w_hh,   // [4H, H]
    const float* __restrict__ b_ih,   // [4H], or null
    const float* __restrict__ b_hh,   // [4H], or null
    const float* __restrict__ h0,     // [B, H]
    const float* __restrict__ c0,     // [B, H]
    float* h_states,                  // training: [T, B, H] (slot t); inference: [2, B, H] (slot k % 2)
    int training,
    float* __restrict__ c_save,       // [T, B, H], or null (inference)
    float* __restrict__ gates_save,   // [T, B, 4H], or null (inference)
    float* __restrict__ y,            // row (t, b) at y + (t·B + b)·y_stride, columns 0..H
    int y_stride,
    float* __restrict__ hn,           // [B, H], or null
    float* __restrict__ cn,           // [B, H], or null
    unsigned int* barrier) {          // [2], zeros
    extern __shared__ float smem[];
    const int h = hidden, rows = 4 * units;
    float* w_s = smem;                              // [4U][H]: row g·U + u is W_hh row g·H + j0 + u
    float* h_s = w_s + (long long)rows * h;         // [B][H]
    float* pre_s = h_s + (long long)batch * h;      // [B][4U]
    float* c_s = pre_s + batch * rows;              // [B][U]
    const int j0 = blockIdx.x * units;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int lane = tid & 31, warp = tid >> 5, nwarps = nthreads >> 5;
    if (batch > PERSISTENT_MAX_BATCH || j0 >= h) {
        // The host never launches this; a block past H has no units but must still take part
        // in every barrier.
        for (int k = 0; k < steps; ++k) grid_barrier(barrier);
        return;
    }

    // This block's gate rows of W_hh, once; rows of units past H are zero.
    for (long long e = tid; e < (long long)rows * h; e += nthreads) {
        const int r = (int)(e / h), k = (int)(e % h);
        const int g = r / units, u = r % units, j = j0 + u;
        w_s[e] = j < h ? w_hh[((long long)g * h + j) * h + k] : 0.0f;
    }
    for (int e = tid; e < batch * units; e += nthreads) {
        const int b = e / units, j = j0 + e % units;
        c_s[e] = j < h ? c0[(long long)b * h + j] : 0.0f;
    }

    const long long bh = (long long)batch * h, gh = 4LL * h;
    for (int k = 0; k < steps; ++k) {
        const int t = reverse ? steps - 1 - k : k;
        const int prev_t = reverse ? t + 1 : t - 1;
        const float* h_prev = k == 0 ? h0 : h_states + (training ? (long long)prev_t : (long long)((k - 1) & 1)) * bh;
        float* h_t = h_states + (training ? (long long)t : (long long)(k & 1)) * bh;

        // 1. h_prev -> shared memory. __ldcg: the values were written by other blocks during
        //    this launch, so they must not come from a stale L1 line.
        for (long long e = tid; e < bh; e += nthreads) h_s[e] = __ldcg(h_prev + e);
        __syncthreads();

        // 2. pre[b][r] = W_hh[r] · h_prev[b].
        for (int r = warp; r < rows; r += nwarps) {
            float acc[PERSISTENT_MAX_BATCH];
#pragma unroll
            for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) acc[b] = 0.0f;
            const float* wr = w_s + (long long)r * h;
            for (int kk = lane; kk < h; kk += 32) {
                const float wv = wr[kk];
#pragma unroll
                for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b)
                    if (b < batch) acc[b] = fmaf(wv, h_s[(long long)b * h + kk], acc[b]);
            }
#pragma unroll
            for (int b = 0; b < PERSISTENT_MAX_BATCH; ++b) {
                float v = acc[b];
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
                if (lane == 0 && b < batch) pre_s[b * rows + r] = v;
            }
        }
        __syncthreads();

        // 3. The cell, one thread per (b, u).
        for (int e = tid; e < batch * units; e += nthreads) {
            const int b = e / units, u = e % units, j = j0 + u;
            if (j >= h) continue;
            const long long hb = (long long)b * h + j;
            float* yr = y + ((long long)t * batch + b) * y_stride;
            const long long grow = ((long long)t * batch + b) * gh;
            if (!row_active(lengths, b, t)) {
                if (gates_save) {
                    for (int g = 0; g < 4; ++g) gates_save[grow + g * h + j] = 0.0f;
                }
                const float keep = h_s[hb];
                h_t[hb] = keep;
                if (c_save) c_save[(long long)t * bh + hb] = c_s[e];
                yr[j] = 0.0f;
                if (k == steps - 1) {
                    if (hn) hn[hb] = keep;
                    if (cn) cn[hb] = c_s[e];
                }
                continue;
            }
            const float* xr = xg + grow;
            const float* pr = pre_s + b * rows;
            const float ai = xr[j] + opt(b_ih, j) + pr[u] + opt(b_hh, j);
            const float af = xr[h + j] + opt(b_ih, h + j) + pr[units + u] + opt(b_hh, h + j);
            const float ag = xr[2 * h + j] + opt(b_ih, 2 * h + j) + pr[2 * units + u] + opt(b_hh, 2 * h + j);
            const float ao = xr[3 * h + j] + opt(b_ih, 3 * h + j) + pr[3 * units + u] + opt(b_hh, 3 * h + j);
            const float i = sigmoidf_(ai), f = sigmoidf_(af), g = tanhf(ag), o = sigmoidf_(ao);
            const float cv = fmaf(f, c_s[e], i * g);
            const float mv = o * tanhf(cv);
            c_s[e] = cv;
            h_t[hb] = mv;
            yr[j] = mv;
            if (gates_save) {
                gates_save[grow + j] = i;
                gates_save[grow + h + j] = f;
                gates_save[grow + 2 * h + j] = g;
                gates_save[grow + 3 * h + j] = o;
            }
            if (c_save) c_save[(long long)t * bh + hb] = cv;
            if (k == steps - 1) {
                if (hn) hn[hb] = mv;
                if (cn) cn[hb] = cv;
            }
        }
        // 4. Every block's h_t is written before any block reads it as h_prev. The barrier also
        //    keeps h_s and pre_s from being overwritten while still in use.
        grid_barrier(barrier);
    }
}
