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
// - Storage may be 16-bit (see "Storage types" below); the maths stays f32.
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
// CUDA's rounding intrinsics: one IEEE operation each, never fused (build.rs compiles the
// emulation with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
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

// ---- Storage types. -----------------------------------------------------------------------
//
// Storage (weights, x, y, the hidden states h, the GEMM operands) is float, rnnk_f16 (IEEE
// binary16) or rnnk_bf16 (bfloat16); the maths is f32 in every case. A kernel reads storage with
// ld(p, k) (exact conversion to f32) and writes it with st(p, k, v) (one rounding, to nearest,
// ties to even); for float both are plain accesses, so the f32 entries compute exactly what they
// did before the 16-bit ones existed. The 16-bit entries of a kernel NAME are NAME_f16 and
// NAME_bf16 (RNNK_INSTANTIATE below).
//
// The types are 16 bits in a struct on both sides: cuda_fp16.h/cuda_bf16.h need the CCCL headers
// (<nv/target>), which the pinned PyPI nvcc does not ship. On the device, f16 converts with the
// hardware cvt instructions (round to nearest even); bf16 and the host emulation use the
// integer code below, which is the Rust `half` crate's portable code (round to nearest even;
// NaN stays NaN with its quiet bit set; overflow gives ±inf, underflow subnormals or ±0), so the
// emulation rounds exactly as the device and the crate do.
struct rnnk_f16 {
    unsigned short bits;
};
struct rnnk_bf16 {
    unsigned short bits;
};
#ifdef __CUDACC__
__device__ __forceinline__ unsigned int rnnk_f32_bits(float f) {
    return __float_as_uint(f);
}
__device__ __forceinline__ float rnnk_bits_f32(unsigned int x) {
    return __uint_as_float(x);
}
__device__ __forceinline__ float to_f32(rnnk_f16 v) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(v.bits));
    return r;
}
__device__ __forceinline__ void round_to(rnnk_f16* p, float f) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    p->bits = r;
}
#else
#include <string.h>
inline unsigned int rnnk_f32_bits(float f) {
    unsigned int x;
    memcpy(&x, &f, 4);
    return x;
}
inline float rnnk_bits_f32(unsigned int x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
inline float to_f32(rnnk_f16 v) {
    const unsigned int sign = (unsigned int)(v.bits & 0x8000u) << 16, exp = (v.bits >> 10) & 0x1fu, man = v.bits & 0x3ffu;
    if (exp == 0x1f) return rnnk_bits_f32(sign | (man ? 0x7fc00000u : 0x7f800000u) | (man << 13));  // NaN quieted
    if (exp == 0) {
        const float m = (float)man * 5.9604644775390625e-8f;  // man · 2^-24, exact
        return sign ? -m : m;
    }
    return rnnk_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
inline void round_to(rnnk_f16* p, float f) {
    const unsigned int x = rnnk_f32_bits(f);
    const unsigned int sign = (x & 0x80000000u) >> 16, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        p->bits = (unsigned short)(sign | 0x7c00u | (man ? 0x0200u | (man >> 13) : 0u));
        return;
    }
    const int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) {
        p->bits = (unsigned short)(sign | 0x7c00u);
        return;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            p->bits = (unsigned short)sign;
            return;
        }
        const unsigned int m = man | 0x00800000u;
        const int shift = 14 - half_exp;
        unsigned int half_man = m >> shift;
        const unsigned int round_bit = 1u << (shift - 1);
        if ((m & round_bit) != 0 && (m & (3 * round_bit - 1)) != 0) half_man++;
        p->bits = (unsigned short)(sign | half_man);
        return;
    }
    const unsigned int out = sign | ((unsigned int)half_exp << 10) | (man >> 13);
    const unsigned int round_bit = 0x00001000u;
    p->bits = (unsigned short)(((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) ? out + 1 : out);
}
#endif
__device__ __forceinline__ float to_f32(rnnk_bf16 v) {
    const unsigned int b = ((v.bits & 0x7fffu) > 0x7f80u) ? (v.bits | 0x0040u) : v.bits;  // NaN quieted
    return rnnk_bits_f32(b << 16);
}
__device__ __forceinline__ void round_to(rnnk_bf16* p, float f) {
    const unsigned int x = rnnk_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        p->bits = (unsigned short)((x >> 16) | 0x0040u);
        return;
    }
    const unsigned int round_bit = 0x00008000u;
    p->bits = (unsigned short)(((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) ? (x >> 16) + 1 : (x >> 16));
}

// p[k] as f32 (exact).
__device__ __forceinline__ float ld(const float* __restrict__ p, long long k) {
    return p[k];
}
template <typename T>
__device__ __forceinline__ float ld(const T* __restrict__ p, long long k) {
    return to_f32(p[k]);
}
// p[k] = v, rounded once to the storage type.
__device__ __forceinline__ void st(float* __restrict__ p, long long k, float v) {
    p[k] = v;
}
template <typename T>
__device__ __forceinline__ void st(T* __restrict__ p, long long k, float v) {
    round_to(p + k, v);
}

// The three entries of a kernel: ENTRY(NAME, float), ENTRY(NAME_f16, rnnk_f16),
// ENTRY(NAME_bf16, rnnk_bf16), where ENTRY(name, T) defines `extern "C" __global__ void name`
// with its storage arguments of type T.
#define RNNK_INSTANTIATE(ENTRY, NAME) ENTRY(NAME, float) ENTRY(NAME##_f16, rnnk_f16) ENTRY(NAME##_bf16, rnnk_bf16)

// Optional vector: v[k] as f32, or 0 when v is null.
template <typename T>
__device__ __forceinline__ float opt(const T* __restrict__ v, long long k) {
    return v ? ld(v, k) : 0.0f;
}

// ---- Gate clipping (the cell option gate_clip; onnxruntime's clip). --------------------------
//
// A gate pre-activation a becomes min(max(a, -clip), clip) before its activation, as
// onnxruntime's std::min(std::max(a, -clip), clip): a NaN stays NaN. clip = 0 means none.
__device__ __forceinline__ float clip_to(float a, float clip) {
    if (clip <= 0.0f) return a;
    return a < -clip ? -clip : (a > clip ? clip : a);
}

// The clip's derivative for backward, from the saved activated value s = act(clip_to(a)): 1
// where a was strictly inside (-clip, clip), 0 where it was clipped. A clipped gate saved
// exactly act(±clip) (the same f32 expression), so s is compared with lo = act(-clip) and
// hi = act(clip), computed by the same function; on = false (no clipping) passes everything.
struct ClipRange {
    bool on;
    float lo, hi;
    __device__ __forceinline__ float pass(float s) const {
        return (!on || (s > lo && s < hi)) ? 1.0f : 0.0f;
    }
};

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
