// GRU pointwise step kernels with the reset gate applied before the recurrent matmul
// (linear_before_reset = false: Cho et al. 2014, ONNX linear_before_reset = 0, Keras
// reset_after = False), gates r, z, n. The maths of src/backend/reference/gru_reset_before.rs:
//
//   r = σ(ax_r + ah_r), z = σ(ax_z + ah_z), n = tanh(ax_n + W_hn (r ⊙ h_prev) + b_hn),
//   h = (1 - z)·n + z·h_prev,
//
// with ax = xg + b_ih and ah = hg + b_hh. The new gate's recurrent product needs r, so a step is
// two kernels around two GEMMs (the driver's src/backend/cuda/driver/gru_reset_before.rs; the
// CPU's ChoPart::{BeforeProduct, AfterProduct}):
//
// - forward: HG[:, r z] = h_prev · W_h{r,z}^T (cuBLAS); gru_reset_before_forward_gates: r and
//   u = r ⊙ h_prev (the operand of the next GEMM, saved for W_hn's gradient);
//   HG[:, n] = u · W_hn^T (cuBLAS); gru_reset_before_forward_output: z, n, h, y;
// - backward from dh: gru_reset_before_backward_output: dn = dh(1 - z), dz = dh(h_prev - n),
//   da_n = dn(1 - n²), da_z = dz·z(1 - z) into dgi's z and n columns, carry = z·dh;
//   du = dgi[:, n] · W_hn (cuBLAS, the gradient of u); gru_reset_before_backward_reset:
//   da_r = du·h_prev·r(1 - r) into dgi's r columns, carry += du·r; then the driver adds
//   dgi[:, r z] · W_h{r,z} into the carry (cuBLAS).
//
// The hidden-side pre-activation gradients are the input-side ones (dgi): the driver computes
// W_hh's gradient from dgi (its r, z rows against h_prev, its n rows against the saved u).
//
// Gate clip (clip > 0; 0: none), as onnxruntime's deep_cpu_gru.cc: each gate's whole
// pre-activation clamped to [-clip, clip] before its activation; backward passes each gate's
// gradient only where it was not clipped (ClipRange in common.cuh). These entries serve only the
// Cho form, so the clip is an argument, not a separate entry.
//
// Storage: float entries (NAME) and 16-bit ones (NAME_f16, NAME_bf16; "Storage types" in
// common.cuh); the arguments typed T are the storage ones (biases, h_prev, u, h, y, dy, dgi).
// u is of the storage type because it is a GEMM operand (as h_prev is); the maths is f32.
//
// Inactive rows (t ≥ lengths[b]): forward, gates = 0, u = 0 (so that the GEMMs and W_hn's
// gradient read zeros), h = h_prev, y row = 0; backward, dgi = 0 and the carry passes dh on.
//
// Memory per row and step, in floats: forward reads xg (3H), hg (3H), h_prev (H in each part)
// and the biases (cached), writes the gates (3H, training), u (H) and h, y (H each). Backward
// reads the gates (3H), h_prev (H in each part), dy (H), du (H), reads and writes the carry (H,
// in each part) and writes dgi (3H). Beside the PyTorch form's kernel: forward reads h_prev
// again (H; and writes u in inference too); backward reads h_prev, the carry and du (3H) and
// writes the carry (H) once more but no dgh (3H less): small against a row's 3·H·H
// multiply-adds in the GEMMs.
#include "common.cuh"

// Forward, first part (before the product W_hn u): r and u = r ⊙ h_prev.
template <typename T>
__device__ __forceinline__ void gru_reset_before_forward_gates_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ xg,     // [B, 3H]: W_ih x
    const float* __restrict__ hg,     // [B, 3H]: columns r, z: W_h{r,z} h_prev (n: not read)
    const T* __restrict__ b_ih,       // [3H], or null
    const T* __restrict__ b_hh,       // [3H], or null
    const T* __restrict__ h_prev,     // [B, H]
    float* __restrict__ gates,        // [B, 3H] out: r (inactive rows: r, z, n = 0), or null (inference)
    T* __restrict__ u,                // [B, H] out: r ⊙ h_prev
    float clip) {                     // the gate clip, 0 for none
    const long long hh = hidden, gh = 3LL * hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const long long row = b * gh;
        if (!row_active(lengths, (int)b, step)) {
            if (gates) {
                gates[row + j] = 0.0f;
                gates[row + hh + j] = 0.0f;
                gates[row + 2 * hh + j] = 0.0f;
            }
            st(u, e, 0.0f);
            continue;
        }
        const float gx_r = xg[row + j] + opt(b_ih, j), gh_r = hg[row + j] + opt(b_hh, j);
        const float r = sigmoidf_(clip_to(gx_r + gh_r, clip));
        if (gates) gates[row + j] = r;
        st(u, e, r * ld(h_prev, e));
    }
}
// The two forward entries share one signature (gru_reset_before_forward_*): each ignores the
// other's outputs.
#define GRU_RESET_BEFORE_FORWARD_SIGNATURE(NAME, T)                                                                     \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths,                    \
                                    const float* __restrict__ xg, const float* __restrict__ hg, const T* __restrict__ b_ih, \
                                    const T* __restrict__ b_hh, const T* __restrict__ h_prev, float* __restrict__ gates,   \
                                    T* __restrict__ u, T* __restrict__ h, T* __restrict__ y, int y_stride, float clip)
#define GRU_RESET_BEFORE_FORWARD_GATES(NAME, T)                                                                         \
    GRU_RESET_BEFORE_FORWARD_SIGNATURE(NAME, T) {                                                                      \
        (void)h;                                                                                                        \
        (void)y;                                                                                                        \
        (void)y_stride;                                                                                                 \
        gru_reset_before_forward_gates_body<T>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, u, clip); \
    }
RNNK_INSTANTIATE(GRU_RESET_BEFORE_FORWARD_GATES, gru_reset_before_forward_gates)

// Forward, second part (after the product): z, n and the new state.
template <typename T>
__device__ __forceinline__ void gru_reset_before_forward_output_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ xg,     // [B, 3H]: W_ih x
    const float* __restrict__ hg,     // [B, 3H]: columns r, z: W_h{r,z} h_prev; n: W_hn (r ⊙ h_prev)
    const T* __restrict__ b_ih,       // [3H], or null
    const T* __restrict__ b_hh,       // [3H], or null
    const T* __restrict__ h_prev,     // [B, H]
    float* __restrict__ gates,        // [B, 3H] out: z, n (active rows), or null (inference)
    T* __restrict__ h,                // [B, H] out
    T* __restrict__ y,                // [B, y_stride] out: columns 0..H
    int y_stride,
    float clip) {                     // the gate clip, 0 for none
    const long long hh = hidden, gh = 3LL * hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const long long row = b * gh;
        if (!row_active(lengths, (int)b, step)) {
            h[e] = h_prev[e];
            st(y, b * y_stride + j, 0.0f);
            continue;
        }
        const float gx_z = xg[row + hh + j] + opt(b_ih, hh + j), gh_z = hg[row + hh + j] + opt(b_hh, hh + j);
        const float gx_n = xg[row + 2 * hh + j] + opt(b_ih, 2 * hh + j);
        const float gh_n = hg[row + 2 * hh + j] + opt(b_hh, 2 * hh + j);
        const float z = sigmoidf_(clip_to(gx_z + gh_z, clip));
        const float n = tanhf(clip_to(gx_n + gh_n, clip));
        const float hv = fmaf(z, ld(h_prev, e), (1.0f - z) * n);
        if (gates) {
            gates[row + hh + j] = z;
            gates[row + 2 * hh + j] = n;
        }
        st(h, e, hv);
        st(y, b * y_stride + j, hv);
    }
}
#define GRU_RESET_BEFORE_FORWARD_OUTPUT(NAME, T)                                                                   \
    GRU_RESET_BEFORE_FORWARD_SIGNATURE(NAME, T) {                                                                  \
        (void)u;                                                                                                    \
        gru_reset_before_forward_output_body<T>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, h_prev, gates, h, y, \
                                                y_stride, clip);                                                    \
    }
RNNK_INSTANTIATE(GRU_RESET_BEFORE_FORWARD_OUTPUT, gru_reset_before_forward_output)

// Backward, first part (before the product du = da_n · W_hn): dh = carry + dy (dy on active
// rows); the z and n pre-activation gradients; carry becomes z·dh (active rows) or dh
// (inactive rows, whose dgi is 0).
template <typename T>
__device__ __forceinline__ void gru_reset_before_backward_output_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ gates,  // [B, 3H]: saved r, z, n
    const T* __restrict__ h_prev,     // [B, H]: hidden state of the previous step (h0 at the first)
    const T* __restrict__ dy,         // [B, dy_stride]: columns 0..H, or null
    int dy_stride,
    float* __restrict__ carry,        // [B, H] in/out
    T* __restrict__ dgi,              // [B, 3H] out: z, n (inactive rows: r, z, n = 0)
    float clip) {                     // the forward's gate clip, 0 for none
    const long long hh = hidden, gh = 3LL * hidden;
    const bool on = clip > 0.0f;
    const ClipRange sig = {on, on ? sigmoidf_(-clip) : 0.0f, on ? sigmoidf_(clip) : 0.0f};
    const ClipRange th = {on, on ? tanhf(-clip) : 0.0f, on ? tanhf(clip) : 0.0f};
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        const long long row = b * gh;
        const bool active = row_active(lengths, (int)b, step);
        const float dh = carry[e] + ((active && dy) ? ld(dy, b * dy_stride + j) : 0.0f);
        if (!active) {
            carry[e] = dh;
            for (int k = 0; k < 3; ++k) st(dgi, row + k * hh + j, 0.0f);
            continue;
        }
        const float z = gates[row + hh + j], n = gates[row + 2 * hh + j];
        const float dn = dh * (1.0f - z);
        const float dz = dh * (ld(h_prev, e) - n);
        st(dgi, row + hh + j, dz * z * (1.0f - z) * sig.pass(z));
        st(dgi, row + 2 * hh + j, dn * (1.0f - n * n) * th.pass(n));
        carry[e] = dh * z;
    }
}
#define GRU_RESET_BEFORE_BACKWARD_OUTPUT(NAME, T)                                                                             \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths,                          \
                                    const float* __restrict__ gates, const T* __restrict__ h_prev, const T* __restrict__ dy,  \
                                    int dy_stride, float* __restrict__ carry, const float* __restrict__ du,                    \
                                    T* __restrict__ dgi, float clip) {                                                         \
        (void)du;                                                                                                              \
        gru_reset_before_backward_output_body<T>(batch, hidden, step, lengths, gates, h_prev, dy, dy_stride, carry, dgi, clip); \
    }
RNNK_INSTANTIATE(GRU_RESET_BEFORE_BACKWARD_OUTPUT, gru_reset_before_backward_output)

// Backward, second part (after the product): from du (the gradient of u = r ⊙ h_prev), the r
// pre-activation gradient and carry += du·r, on active rows (inactive rows: nothing).
template <typename T>
__device__ __forceinline__ void gru_reset_before_backward_reset_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ gates,  // [B, 3H]: saved r, z, n
    const T* __restrict__ h_prev,     // [B, H]
    float* __restrict__ carry,        // [B, H] in/out
    const float* __restrict__ du,     // [B, H]: da_n · W_hn
    T* __restrict__ dgi,              // [B, 3H] out: r
    float clip) {                     // the forward's gate clip, 0 for none
    const long long hh = hidden, gh = 3LL * hidden;
    const bool on = clip > 0.0f;
    const ClipRange sig = {on, on ? sigmoidf_(-clip) : 0.0f, on ? sigmoidf_(clip) : 0.0f};
    FOR_EACH_ELEMENT(e, (long long)batch * hh) {
        const long long b = e / hh, j = e % hh;
        if (!row_active(lengths, (int)b, step)) continue;
        const float r = gates[b * gh + j], d = du[e];
        st(dgi, b * gh + j, d * ld(h_prev, e) * r * (1.0f - r) * sig.pass(r));
        carry[e] = fmaf(d, r, carry[e]);
    }
}
#define GRU_RESET_BEFORE_BACKWARD_RESET(NAME, T)                                                                              \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths,                          \
                                    const float* __restrict__ gates, const T* __restrict__ h_prev, const T* __restrict__ dy,  \
                                    int dy_stride, float* __restrict__ carry, const float* __restrict__ du,                    \
                                    T* __restrict__ dgi, float clip) {                                                         \
        (void)dy;                                                                                                              \
        (void)dy_stride;                                                                                                       \
        gru_reset_before_backward_reset_body<T>(batch, hidden, step, lengths, gates, h_prev, carry, du, dgi, clip);            \
    }
RNNK_INSTANTIATE(GRU_RESET_BEFORE_BACKWARD_RESET, gru_reset_before_backward_reset)
