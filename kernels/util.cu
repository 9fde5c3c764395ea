// Small helpers of the CUDA driver that have no cuBLAS or driver-API equivalent for f32.
#include "common.cuh"

// p[0..n) = value (e.g. the ones vector whose GEMM with dG gives the bias gradients).
extern "C" __global__ void fill_f32(long long n, float value, float* __restrict__ p /* [n] */) {
    FOR_EACH_ELEMENT(e, n) { p[e] = value; }
}
