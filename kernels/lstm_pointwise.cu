// LSTM pointwise step kernels, forward and backward, gates i, f, g, o (PyTorch order). The maths
// of src/backend/reference/lstm.rs:
//
// - forward, a = xg + b_ih + hg + b_hh: i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o),
//   c = f·c_prev + i·g, m = o·tanh(c);
// - backward from dm and dc': tc = tanh(c), dc' += dm·o·(1 - tc²),
//   dG = [dc'·g·i(1-i), dc'·c_prev·f(1-f), dc'·i·(1-g²), dm·tc·o(1-o)], dc = dc'·f.
//
// Storage: every kernel has a float entry (NAME) and 16-bit ones (NAME_f16, NAME_bf16; see
// "Storage types" in common.cuh); the arguments typed T below are the storage ones (the biases,
// keep, m, y, h, dy and the dG GEMM operand), the float ones (xg, hg, gates, c, the carries)
// are f32 in every entry.
//
// Memory per row and step, in floats: forward reads xg, hg (4H each), c_prev (H) and the biases
// (8H, cached across rows), writes gates (4H, training only), c and m (H each): 15H. Backward
// reads gates (4H), c, c_prev, dm or dy, dc (H each), writes dG (4H) and dc (H). Each thread
// owns unit j of row b across all four gates, so every read and write is coalesced along j.
#include "common.cuh"

// One forward step. The input-side bias b_ih is added here rather than into xg, so the input
// projection is a plain GEMM.
//
// Inactive rows: gates = 0, c = c_prev, m = keep (or 0 when keep is null), y row = 0.
template <typename T>
__device__ __forceinline__ void lstm_forward_step_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths,  // [B]
    const float* __restrict__ xg,     // [B, 4H]: W_ih x
    const float* __restrict__ hg,     // [B, 4H]: W_hh h_prev
    const T* __restrict__ b_ih,       // [4H], or null
    const T* __restrict__ b_hh,       // [4H], or null
    const float* __restrict__ c_prev, // [B, H]
    const T* __restrict__ keep,       // [B, H]: m of inactive rows (h_prev without projection), or null for 0
    float* __restrict__ gates,        // [B, 4H] out: activated gates, or null (inference)
    float* __restrict__ c,            // [B, H] out
    T* __restrict__ m,                // [B, H] out: o·tanh(c)
    T* __restrict__ y,                // [B, y_stride] out: columns 0..H of each row get m (0 if inactive), or null
    int y_stride) {
    const long long h = hidden, gh = 4LL * hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * h) {
        const long long b = e / h, j = e % h;
        const long long row = b * gh;
        if (!row_active(lengths, (int)b, step)) {
            if (gates) {
                gates[row + j] = 0.0f;
                gates[row + h + j] = 0.0f;
                gates[row + 2 * h + j] = 0.0f;
                gates[row + 3 * h + j] = 0.0f;
            }
            c[e] = c_prev[e];
            st(m, e, keep ? ld(keep, e) : 0.0f);
            if (y) st(y, b * y_stride + j, 0.0f);
            continue;
        }
        const float ai = xg[row + j] + opt(b_ih, j) + hg[row + j] + opt(b_hh, j);
        const float af = xg[row + h + j] + opt(b_ih, h + j) + hg[row + h + j] + opt(b_hh, h + j);
        const float ag = xg[row + 2 * h + j] + opt(b_ih, 2 * h + j) + hg[row + 2 * h + j] + opt(b_hh, 2 * h + j);
        const float ao = xg[row + 3 * h + j] + opt(b_ih, 3 * h + j) + hg[row + 3 * h + j] + opt(b_hh, 3 * h + j);
        const float i = sigmoidf_(ai), f = sigmoidf_(af), g = tanhf(ag), o = sigmoidf_(ao);
        const float cv = fmaf(f, c_prev[e], i * g);
        const float mv = o * tanhf(cv);
        if (gates) {
            gates[row + j] = i;
            gates[row + h + j] = f;
            gates[row + 2 * h + j] = g;
            gates[row + 3 * h + j] = o;
        }
        c[e] = cv;
        st(m, e, mv);
        if (y) st(y, b * y_stride + j, mv);
    }
}
#define LSTM_FORWARD_STEP(NAME, T)                                                                                  \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ xg,           \
                                    const float* __restrict__ hg, const T* __restrict__ b_ih, const T* __restrict__ b_hh, const float* __restrict__ c_prev, const T* __restrict__ keep, \
                                    float* __restrict__ gates, float* __restrict__ c, T* __restrict__ m, T* __restrict__ y, int y_stride) {                             \
        lstm_forward_step_body<T>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, c_prev, keep, gates, c, m, y,  \
                                  y_stride);                                                                       \
    }
RNNK_INSTANTIATE(LSTM_FORWARD_STEP, lstm_forward_step)

// After the projection GEMM h = m·W_hr^T: inactive rows keep h_prev and output 0; active rows
// output h.
template <typename T>
__device__ __forceinline__ void lstm_projection_finish_body(
    int batch, int hout, int step,
    const int* __restrict__ lengths,  // [B]
    const T* __restrict__ h_prev,     // [B, Hout]
    T* __restrict__ h,                // [B, Hout] in/out
    T* __restrict__ y,                // [B, y_stride] out: columns 0..Hout
    int y_stride) {
    const long long n = hout;
    FOR_EACH_ELEMENT(e, (long long)batch * n) {
        const long long b = e / n, j = e % n;
        if (row_active(lengths, (int)b, step)) {
            y[b * y_stride + j] = h[e];
        } else {
            h[e] = h_prev[e];
            st(y, b * y_stride + j, 0.0f);
        }
    }
}
#define LSTM_PROJECTION_FINISH(NAME, T)                                                                       \
    extern "C" __global__ void NAME(int batch, int hout, int step, const int* __restrict__ lengths, const T* __restrict__ h_prev, T* __restrict__ h, \
                                    T* __restrict__ y, int y_stride) {                                                    \
        lstm_projection_finish_body<T>(batch, hout, step, lengths, h_prev, h, y, y_stride);                  \
    }
RNNK_INSTANTIATE(LSTM_PROJECTION_FINISH, lstm_projection_finish)

// Before a backward step with projection: dh = carry + dy (dy on active rows only), saved in
// dh (for dm = dh·W_hr) and in dh_save (0 on inactive rows: the left factor of dW_hr); carry
// becomes what passes to the previous step outside W_hh: dh on inactive rows, 0 on active ones
// (the dG·W_hh GEMM then adds into it).
template <typename T>
__device__ __forceinline__ void lstm_projection_backward_prepare_body(
    int batch, int hout, int step,
    const int* __restrict__ lengths,  // [B]
    const T* __restrict__ dy,         // [B, dy_stride]: columns 0..Hout, or null
    int dy_stride,
    float* __restrict__ carry,        // [B, Hout] in/out
    T* __restrict__ dh,               // [B, Hout] out
    T* __restrict__ dh_save) {        // [B, Hout] out
    const long long n = hout;
    FOR_EACH_ELEMENT(e, (long long)batch * n) {
        const long long b = e / n, j = e % n;
        const bool active = row_active(lengths, (int)b, step);
        const float d = carry[e] + ((active && dy) ? ld(dy, b * dy_stride + j) : 0.0f);
        st(dh, e, d);
        st(dh_save, e, active ? d : 0.0f);
        carry[e] = active ? 0.0f : d;
    }
}
#define LSTM_PROJECTION_BACKWARD_PREPARE(NAME, T)                                                                \
    extern "C" __global__ void NAME(int batch, int hout, int step, const int* __restrict__ lengths, const T* __restrict__ dy, int dy_stride, \
                                    float* __restrict__ carry, T* __restrict__ dh, T* __restrict__ dh_save) {                                           \
        lstm_projection_backward_prepare_body<T>(batch, hout, step, lengths, dy, dy_stride, carry, dh, dh_save);  \
    }
RNNK_INSTANTIATE(LSTM_PROJECTION_BACKWARD_PREPARE, lstm_projection_backward_prepare)

// One backward step. The gradient w.r.t. m is dm_in when given (projection); otherwise
// dm = carry + dy (dy on active rows), and carry becomes dm on inactive rows, 0 on active rows,
// for the dG·W_hh GEMM to add into. dG is the gradient of both pre-activations (input- and
// hidden-side are equal for an LSTM).
//
// Inactive rows: dG = 0, dc unchanged.
template <typename T>
__device__ __forceinline__ void lstm_backward_step_body(
    int batch, int hidden, int step,
    const int* __restrict__ lengths, // [B]
    const float* __restrict__ gates, // [B, 4H]: saved activated gates
    const float* __restrict__ c,     // [B, H]: saved cell state of this step
    const float* __restrict__ c_prev,// [B, H]: cell state of the previous step (c0 at the first)
    const float* __restrict__ dm_in, // [B, H], or null
    const T* __restrict__ dy,        // [B, dy_stride]: columns 0..H, or null (only read when dm_in is null)
    int dy_stride,
    float* __restrict__ carry,       // [B, H] in/out, or null (only used when dm_in is null)
    float* __restrict__ dc,          // [B, H] in/out
    T* __restrict__ dg) {            // [B, 4H] out
    const long long h = hidden, gh = 4LL * hidden;
    FOR_EACH_ELEMENT(e, (long long)batch * h) {
        const long long b = e / h, j = e % h;
        const long long row = b * gh;
        const bool active = row_active(lengths, (int)b, step);
        float dmv;
        if (dm_in) {
            dmv = dm_in[e];
        } else {
            dmv = carry[e] + ((active && dy) ? ld(dy, b * dy_stride + j) : 0.0f);
            carry[e] = active ? 0.0f : dmv;
        }
        if (!active) {
            st(dg, row + j, 0.0f);
            st(dg, row + h + j, 0.0f);
            st(dg, row + 2 * h + j, 0.0f);
            st(dg, row + 3 * h + j, 0.0f);
            continue;
        }
        const float i = gates[row + j], f = gates[row + h + j], g = gates[row + 2 * h + j], o = gates[row + 3 * h + j];
        const float tc = tanhf(c[e]);
        const float dcv = fmaf(dmv * o, 1.0f - tc * tc, dc[e]);
        dc[e] = dcv * f;
        st(dg, row + j, dcv * g * i * (1.0f - i));
        st(dg, row + h + j, dcv * c_prev[e] * f * (1.0f - f));
        st(dg, row + 2 * h + j, dcv * i * (1.0f - g * g));
        st(dg, row + 3 * h + j, dmv * tc * o * (1.0f - o));
    }
}
#define LSTM_BACKWARD_STEP(NAME, T)                                                                               \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,       \
                                    const float* __restrict__ c, const float* __restrict__ c_prev, const float* __restrict__ dm_in, const T* __restrict__ dy,         \
                                    int dy_stride, float* __restrict__ carry, float* __restrict__ dc, T* __restrict__ dg) {                              \
        lstm_backward_step_body<T>(batch, hidden, step, lengths, gates, c, c_prev, dm_in, dy, dy_stride, carry, dc, \
                                   dg);                                                                          \
    }
RNNK_INSTANTIATE(LSTM_BACKWARD_STEP, lstm_backward_step)
