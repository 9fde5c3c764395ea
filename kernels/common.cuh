// Conventions shared by every kernel of rnn-kernels (the crate docs state them once, too):
//
// - Every tensor is dense and row-major: the rightmost dimension changes fastest.
// - B batch rows, H hidden size, G gates (LSTM 4: i, f, g, o; GRU 3: r, z, n; RNN 1), Hout the
//   hidden output size (H unless an LSTM has a projection).
// - A pointwise step kernel handles one time step of one layer-direction for all B rows: one
//   thread per (row b, hidden unit j), grid-stride, so any launch size is correct.
// - Row b is active at step t iff t < lengths[b]. An inactive row keeps its state and outputs 0.
// - Pointers are never null unless the argument's comment says "or null".
// - Math is f32 with precise expf/tanhf (no fast-math), matching the f64 reference to ~1e-6.
#pragma once

#ifndef __CUDACC__
// Host emulation, for the driver's unit tests on machines without a GPU: build.rs also compiles
// the pointwise kernels (files without a "no host emulation" line) with the host C++ compiler.
// A kernel then runs as one thread of one block, so every grid-stride loop covers all elements
// in order: the same arithmetic, serially.
#include <math.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct rnnk_dim3 {
    unsigned int x, y, z;
};
static const rnnk_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#endif

// One thread per element of a [B, n] matrix, whatever the grid.
#define FOR_EACH_ELEMENT(e, total)                                                      \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < (total); \
         e += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ float sigmoidf_(float x) {
    // For x < 0, expf(-x) may overflow to inf; 1/(1+inf) = 0 is the right limit, but the
    // e^x/(1+e^x) form keeps full relative precision there.
    if (x >= 0.0f) {
        return 1.0f / (1.0f + expf(-x));
    }
    float e = expf(x);
    return e / (1.0f + e);
}

__device__ __forceinline__ bool row_active(const int* __restrict__ lengths, int b, int step) {
    return step < lengths[b];
}

// Optional vector: v[k], or 0 when v is null.
__device__ __forceinline__ float opt(const float* __restrict__ v, long long k) {
    return v ? v[k] : 0.0f;
}

// ---- Persistent kernels: the grid barrier and the warp reduction. ----------------------------
//
// On the host emulation a grid is one block of one thread (see above): the barrier has nothing
// to wait for, a "warp" is that one lane, and memory is coherent.

#ifdef __CUDACC__
// Waits until every block of the grid has arrived. barrier[0] counts arrivals, barrier[1] is
// the generation; both start at 0 (the host zeroes them before each launch). Every thread fences
// its own writes first, so that after the barrier all of them are visible device-wide (readers
// load with load_cg, from L2).
//
// cooperative_groups' grid.sync would need the CCCL headers, which the pinned PyPI nvcc does not
// ship. The kernels using this are launched with cuLaunchCooperativeKernel, which fails instead
// of running if the blocks cannot all be resident at once, so the spin-wait cannot deadlock.
__device__ __forceinline__ void grid_barrier(unsigned int* barrier) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* generation = barrier + 1;
        const unsigned int gen = *generation;
        __threadfence();
        if (atomicAdd(barrier, 1u) == gridDim.x - 1) {
            // Last to arrive: reset the count for the next barrier, then release the others.
            atomicExch(barrier, 0u);
            __threadfence();
            atomicAdd(barrier + 1, 1u);
        } else {
            while (*generation == gen) __nanosleep(64);
        }
        __threadfence();
    }
    __syncthreads();
}

// The sum of v over the 32 lanes of the warp, in every lane (all lanes must call it).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// A load that bypasses L1: for values other blocks wrote during the same launch.
__device__ __forceinline__ float load_cg(const float* p) {
    return __ldcg(p);
}

__device__ __forceinline__ void block_sync() {
    __syncthreads();
}
#else
inline void grid_barrier(unsigned int*) {}
inline float warp_sum(float v) {
    return v;
}
inline float load_cg(const float* p) {
    return *p;
}
inline void block_sync() {}
#endif
