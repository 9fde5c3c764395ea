// Attention of a decoder over an encoder's outputs (src/attention: the maths and the shapes;
// src/attention/reference.rs is the specification). The driver (src/backend/cuda/driver/
// attention.rs) runs every product as a cuBLAS GEMM over strided per-sequence views, as the host's
// src/backend/host/attention.rs, and these kernels do the rest:
//
// - attention_softmax_f32: the masked softmax of each row of the scores E [Tq·B, S] over its
//   sequence's own keys s < lengths[r mod B] (in place, max-subtracted); the padding columns are
//   written 0 and never read (the score GEMMs leave them unwritten).
// - attention_softmax_backward_f32: dE = α ⊙ (dα − Σ_s α dα) over the same columns (in place on
//   dα), 0 at the padding.
// - attention_tanh_score_f32: the concat and additive scores e[t, b, s] = Σ_a v_a tanh(P_q[t, b, a]
//   + P_k[s, b, a]) for s < lengths[b] (P_q = Q W_qᵀ and P_k = K W_kᵀ are GEMMs); the padding is
//   not written.
// - attention_tanh_score_backward_{query,key}_f32: its backward from dE, with dP = dE·v ⊙ (1 − u²),
//   u = tanh(P_q + P_k) recomputed: _query writes dP_q[t, b, a] = Σ_s dP and the per-row parts of
//   dv, dv_rows[t, b, a] = Σ_s dE·u (summed over the rows in order by util.cu's
//   add_column_sums_f32); _key adds dP_k[s, b, a] += Σ_t dP for s < lengths[b]. Each output element
//   is one thread's sum in a fixed order: no atomics, the same bits on every run and grid.
// - attention_tanh_f32 (y = tanh(x)) and attention_tanh_backward_f32 (dx = dy ⊙ (1 − y²)): the
//   attentional hidden state h̃ = tanh(W_c [c; q]) and its backward.
// - attention_gather_rows_f32: dst[s, r, :] = src[s, index[r], :] (a beam search's memory of its
//   hypotheses' sequences, from the memory of the batch's).
// - attention_mask_rows_f32: dst[s, b, :] = src[s, b, :] for s < lengths[b], 0 past it (the
//   memory's keys with their padding zeroed, so that no GEMM over all keys reads a padding value;
//   the keys' gradient zeroed at the padding, in place). The padding rows of src are not read.
//
// Row kernels (the two softmaxes): a block per row, grid-stride over the rows; the block's threads
// stride over the row and reduce with warp shuffles and one shared-memory pass over the warps, in a
// fixed order, so a result depends on the block size (the driver's 256 threads, a multiple of 32)
// but not on the grid. The others are grid-stride, one thread per output element. f32 storage and
// maths with precise expf/tanhf; the lengths are in 1..=S (checked by AttentionShape).
#include "common.cuh"

// The maximum (max = true) or the sum of v over the threads of a block, in every thread; every
// thread of the block must call it. On the host emulation a block is one thread: v itself.
__device__ __forceinline__ float attention_block_reduce(float v, bool max) {
#ifdef __CUDACC__
    __shared__ float part[32];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v, off);
        v = max ? fmaxf(v, o) : v + o;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // the previous call's readers are done with part
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float s = part[0];
    for (int k = 1; k < warps; ++k) s = max ? fmaxf(s, part[k]) : s + part[k];
    return s;
#else
    (void)max;
    return v;
#endif
}

// e = softmax(e) over each row's own columns s < lengths[r mod batch], 0 past them. alpha is not
// read (the forward's entry shares the backward's argument list).
extern "C" __global__ void attention_softmax_f32(int rows, int batch, int steps, const int* __restrict__ lengths,
                                                 const float* __restrict__ alpha /* unused: null */,
                                                 float* __restrict__ e /* [rows, S] in: scores, out: weights */) {
    (void)alpha;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* __restrict__ row = e + r * steps;
        const int len = lengths[r % batch];
        float m = -INFINITY;
        for (int j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, row[j]);
        m = attention_block_reduce(m, true);
        float s = 0.0f;
        for (int j = threadIdx.x; j < len; j += blockDim.x) {
            const float x = expf(row[j] - m);
            row[j] = x;
            s += x;
        }
        s = attention_block_reduce(s, false);
        for (int j = threadIdx.x; j < len; j += blockDim.x) row[j] = row[j] / s;
        for (int j = len + threadIdx.x; j < steps; j += blockDim.x) row[j] = 0.0f;
    }
}

// de = α ⊙ (de − Σ_s α de) over each row's own columns, 0 past them: the softmax's backward, in
// place on the weights' gradient dα.
extern "C" __global__ void attention_softmax_backward_f32(int rows, int batch, int steps, const int* __restrict__ lengths,
                                                          const float* __restrict__ alpha /* [rows, S]: the weights */,
                                                          float* __restrict__ e /* [rows, S] in: dα, out: dE */) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* __restrict__ row = e + r * steps;
        const float* __restrict__ a = alpha + r * steps;
        const int len = lengths[r % batch];
        float d = 0.0f;
        for (int j = threadIdx.x; j < len; j += blockDim.x) d += a[j] * row[j];
        d = attention_block_reduce(d, false);
        for (int j = threadIdx.x; j < len; j += blockDim.x) row[j] = a[j] * (row[j] - d);
        for (int j = len + threadIdx.x; j < steps; j += blockDim.x) row[j] = 0.0f;
    }
}

// e[t, b, s] = Σ_a v[a] · tanh(qp[t, b, a] + kp[s, b, a]) for s < lengths[b]; one thread per
// (row, key), the sum over a in order. Reads a row of qp and one of kp (A each, coalesced across
// the threads of neighbouring keys only through L1/L2; A is small: the attention size).
extern "C" __global__ void attention_tanh_score_f32(int queries, int batch, int steps, int attn, const int* __restrict__ lengths,
                                                    const float* __restrict__ qp /* [Tq, B, A] */,
                                                    const float* __restrict__ kp /* [S, B, A] */,
                                                    const float* __restrict__ v /* [A] */,
                                                    float* __restrict__ e /* [Tq, B, S] out, s < length */) {
    FOR_EACH_ELEMENT(i, (long long)queries * batch * steps) {
        const long long s = i % steps, r = i / steps, b = r % batch;
        if (s >= lengths[b]) continue;
        const float* __restrict__ q = qp + r * attn;
        const float* __restrict__ k = kp + (s * batch + b) * attn;
        float acc = 0.0f;
        for (int a = 0; a < attn; ++a) acc += v[a] * tanhf(q[a] + k[a]);
        e[i] = acc;
    }
}

// The query side of the tanh score's backward: for each (t, b, a), over the keys s < lengths[b]
// in order, dqp = Σ_s dE·v_a·(1 − u²) and dv_rows = Σ_s dE·u, u = tanh(qp + kp). dkp is not
// touched (the key side's entry shares the argument list). One thread per (row, a): neighbouring
// threads read neighbouring a (coalesced).
extern "C" __global__ void attention_tanh_score_backward_query_f32(
    int queries, int batch, int steps, int attn, const int* __restrict__ lengths, const float* __restrict__ qp /* [Tq, B, A] */,
    const float* __restrict__ kp /* [S, B, A] */, const float* __restrict__ v /* [A] */, const float* __restrict__ de /* [Tq, B, S] */,
    float* __restrict__ dqp /* [Tq, B, A] out */, float* __restrict__ dv_rows /* [Tq, B, A] out */,
    float* __restrict__ dkp /* unused */) {
    (void)dkp;
    FOR_EACH_ELEMENT(i, (long long)queries * batch * attn) {
        const long long a = i % attn, r = i / attn, b = r % batch;
        const int len = lengths[b];
        const float q = qp[i], va = v[a];
        float dq = 0.0f, dv = 0.0f;
        for (long long s = 0; s < len; ++s) {
            const float u = tanhf(q + kp[(s * batch + b) * attn + a]);
            const float d = de[r * steps + s];
            dv += d * u;
            dq += d * va * (1.0f - u * u);
        }
        dqp[i] = dq;
        dv_rows[i] = dv;
    }
}

// The key side: dkp[s, b, a] += Σ_t dE[t, b, s]·v_a·(1 − u²) for s < lengths[b] (the queries in
// order); the padding rows are not touched. dqp and dv_rows are not touched.
extern "C" __global__ void attention_tanh_score_backward_key_f32(
    int queries, int batch, int steps, int attn, const int* __restrict__ lengths, const float* __restrict__ qp /* [Tq, B, A] */,
    const float* __restrict__ kp /* [S, B, A] */, const float* __restrict__ v /* [A] */, const float* __restrict__ de /* [Tq, B, S] */,
    float* __restrict__ dqp /* unused */, float* __restrict__ dv_rows /* unused */, float* __restrict__ dkp /* [S, B, A] in/out */) {
    (void)dqp;
    (void)dv_rows;
    FOR_EACH_ELEMENT(i, (long long)steps * batch * attn) {
        const long long a = i % attn, sb = i / attn, b = sb % batch, s = sb / batch;
        if (s >= lengths[b]) continue;
        const float k = kp[i], va = v[a];
        float acc = 0.0f;
        for (long long t = 0; t < queries; ++t) {
            const long long r = t * batch + b;
            const float u = tanhf(qp[r * attn + a] + k);
            acc += de[r * steps + s] * va * (1.0f - u * u);
        }
        dkp[i] += acc;
    }
}

// y[0..n) = tanh(x[0..n)) (y may be x).
extern "C" __global__ void attention_tanh_f32(long long n, const float* x /* [n] */, float* y /* [n] out */) {
    FOR_EACH_ELEMENT(i, n) { y[i] = tanhf(x[i]); }
}

// dx[0..n) = dy ⊙ (1 − y²), y = tanh(z) saved by the forward (dx may be dy).
extern "C" __global__ void attention_tanh_backward_f32(long long n, const float* dy /* [n] */, const float* __restrict__ y /* [n] */,
                                                       float* dx /* [n] out */) {
    FOR_EACH_ELEMENT(i, n) {
        const float h = y[i];
        dx[i] = dy[i] * (1.0f - h * h);
    }
}

// dst[s, b, :] = src[s, b, :] where s < lengths[b], 0 elsewhere (dst may be src). The padding rows
// of src are not read.
extern "C" __global__ void attention_gather_rows_f32(int steps, int rows, int batch, int width, const int* __restrict__ index,
                                                    const float* __restrict__ src /* [S, B, W] */,
                                                    float* __restrict__ dst /* [S, R, W] out */) {
    FOR_EACH_ELEMENT(i, (long long)steps * rows * width) {
        const long long sr = i / width, w = i % width, r = sr % rows, s = sr / rows;
        dst[i] = src[(s * batch + index[r]) * width + w];
    }
}

extern "C" __global__ void attention_mask_rows_f32(int steps, int batch, int width, const int* __restrict__ lengths,
                                                   const float* src /* [S, B, W] */, float* dst /* [S, B, W] out */) {
    FOR_EACH_ELEMENT(i, (long long)steps * batch * width) {
        const long long sb = i / width, b = sb % batch, s = sb / batch;
        dst[i] = s < lengths[b] ? src[i] : 0.0f;
    }
}
