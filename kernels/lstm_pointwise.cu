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
//
// The cell options (src/config.rs) have their own entries, NAME_opt (and NAME_opt_f16,
// NAME_opt_bf16), the same template with OPT = true and three more arguments, so that the plain
// entries compile to exactly the code they had before the options existed:
//
// - peephole p [3, H] (rows i, f, o): a_i += p_i·c_prev, a_f += p_f·c_prev, and after c,
//   a_o += p_o·c; backward dc' += da_o·p_o, dc = dc'·f + da_i·p_i + da_f·p_f, and the weight
//   gradients dp_i += da_i·c_prev, dp_f += da_f·c_prev, dp_o += da_o·c, summed per (row, unit)
//   over the steps into dpeep [B, 3H] (one thread owns each element: no atomics, the order is
//   the step order), then over the rows by add_column_sums (util.cu);
// - clip: every pre-activation (biases and peepholes included) is clipped to [-clip, clip]
//   before its activation (onnxruntime's order); backward passes a gate's gradient only where
//   it was not clipped (ClipRange in common.cuh);
// - input_forget: f = 1 - i (a_f unused): backward da_i = dc'·(g - c_prev)·i(1-i), da_f = 0.
//
// Layer norm (the option layer_norm): the forward steps are the entries above (the driver
// normalises XG and HG around them and computes m in lstm_ln_cell_forward, layer_norm.cu);
// backward is lstm_backward_step_ln, the _opt template with LN = true, whose o-gate factor and
// output-path dc come from lstm_ln_cell_backward.
#include "common.cuh"

// One forward step. The input-side bias b_ih is added here rather than into xg, so the input
// projection is a plain GEMM.
//
// Inactive rows: gates = 0, c = c_prev, m = keep (or 0 when keep is null), y row = 0.
template <typename T, bool OPT>
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
    int y_stride,
    const T* __restrict__ peephole,   // OPT: [3, H] rows i, f, o, or null
    float clip,                       // OPT: the gate clip, 0 for none
    int input_forget) {               // OPT: f = 1 - i
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
        float i, f, g, o, cv;
        if (!OPT) {
            i = sigmoidf_(ai), f = sigmoidf_(af), g = tanhf(ag), o = sigmoidf_(ao);
            cv = fmaf(f, c_prev[e], i * g);
        } else {
            const float cp = c_prev[e];
            const float pi = peephole ? ld(peephole, j) * cp : 0.0f;
            i = sigmoidf_(clip_to(ai + pi, clip));
            if (input_forget) {
                f = 1.0f - i;
            } else {
                const float pf = peephole ? ld(peephole, h + j) * cp : 0.0f;
                f = sigmoidf_(clip_to(af + pf, clip));
            }
            g = tanhf(clip_to(ag, clip));
            cv = fmaf(f, cp, i * g);
            const float po = peephole ? ld(peephole, 2 * h + j) * cv : 0.0f;
            o = sigmoidf_(clip_to(ao + po, clip));
        }
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
        lstm_forward_step_body<T, false>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, c_prev, keep, gates, c, m, y,  \
                                         y_stride, nullptr, 0.0f, 0);                                              \
    }
RNNK_INSTANTIATE(LSTM_FORWARD_STEP, lstm_forward_step)

// The forward step with the cell options (peephole [3, H] or null, clip, input_forget).
#define LSTM_FORWARD_STEP_OPT(NAME, T)                                                                              \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ xg,           \
                                    const float* __restrict__ hg, const T* __restrict__ b_ih, const T* __restrict__ b_hh, const float* __restrict__ c_prev, const T* __restrict__ keep, \
                                    float* __restrict__ gates, float* __restrict__ c, T* __restrict__ m, T* __restrict__ y, int y_stride,                               \
                                    const T* __restrict__ peephole, float clip, int input_forget) {                                                                    \
        lstm_forward_step_body<T, true>(batch, hidden, step, lengths, xg, hg, b_ih, b_hh, c_prev, keep, gates, c, m, y,  \
                                        y_stride, peephole, clip, input_forget);                                  \
    }
RNNK_INSTANTIATE(LSTM_FORWARD_STEP_OPT, lstm_forward_step_opt)

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
template <typename T, bool OPT, bool LN = false>
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
    T* __restrict__ dg,              // [B, 4H] out
    const T* __restrict__ peephole,  // OPT: [3, H] rows i, f, o, or null
    float clip,                      // OPT: the forward's gate clip, 0 for none
    int input_forget,                // OPT: f = 1 - i
    float* __restrict__ dpeep,       // OPT: [B, 3H] in/out: the peephole gradients of each row, or null
    const float* __restrict__ dm_tau = nullptr) {  // LN: [B, H]: dm⊙tanh(LN(c)) (layer_norm.cu)
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
        const float tc = LN ? 0.0f : tanhf(c[e]);
        if (!OPT) {
            const float dcv = fmaf(dmv * o, 1.0f - tc * tc, dc[e]);
            dc[e] = dcv * f;
            st(dg, row + j, dcv * g * i * (1.0f - i));
            st(dg, row + h + j, dcv * c_prev[e] * f * (1.0f - f));
            st(dg, row + 2 * h + j, dcv * i * (1.0f - g * g));
            st(dg, row + 3 * h + j, dmv * tc * o * (1.0f - o));
            continue;
        }
        const bool on = clip > 0.0f;
        const ClipRange sig = {on, on ? sigmoidf_(-clip) : 0.0f, on ? sigmoidf_(clip) : 0.0f};
        const ClipRange th = {on, on ? tanhf(-clip) : 0.0f, on ? tanhf(clip) : 0.0f};
        const float cp = c_prev[e], cv = c[e];
        const float dao = (LN ? dm_tau[e] : dmv * tc) * o * (1.0f - o) * sig.pass(o);
        float dcv = LN ? dc[e] : fmaf(dmv * o, 1.0f - tc * tc, dc[e]);
        if (peephole) dcv = fmaf(dao, ld(peephole, 2 * h + j), dcv);
        float dai, daf;
        if (input_forget) {
            dai = dcv * (g - cp) * i * (1.0f - i) * sig.pass(i);
            daf = 0.0f;
        } else {
            dai = dcv * g * i * (1.0f - i) * sig.pass(i);
            daf = dcv * cp * f * (1.0f - f) * sig.pass(f);
        }
        const float dag = dcv * i * (1.0f - g * g) * th.pass(g);
        float dcp = dcv * f;
        if (peephole) {
            dcp = fmaf(dai, ld(peephole, j), dcp);
            dcp = fmaf(daf, ld(peephole, h + j), dcp);
        }
        if (dpeep) {
            const long long prow = b * 3LL * h;
            dpeep[prow + j] = fmaf(dai, cp, dpeep[prow + j]);
            dpeep[prow + h + j] = fmaf(daf, cp, dpeep[prow + h + j]);
            dpeep[prow + 2 * h + j] = fmaf(dao, cv, dpeep[prow + 2 * h + j]);
        }
        dc[e] = dcp;
        st(dg, row + j, dai);
        st(dg, row + h + j, daf);
        st(dg, row + 2 * h + j, dag);
        st(dg, row + 3 * h + j, dao);
    }
}
#define LSTM_BACKWARD_STEP(NAME, T)                                                                               \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,       \
                                    const float* __restrict__ c, const float* __restrict__ c_prev, const float* __restrict__ dm_in, const T* __restrict__ dy,         \
                                    int dy_stride, float* __restrict__ carry, float* __restrict__ dc, T* __restrict__ dg) {                              \
        lstm_backward_step_body<T, false>(batch, hidden, step, lengths, gates, c, c_prev, dm_in, dy, dy_stride, carry, dc, \
                                          dg, nullptr, 0.0f, 0, nullptr);                                       \
    }
RNNK_INSTANTIATE(LSTM_BACKWARD_STEP, lstm_backward_step)

// The backward step with the cell options (peephole [3, H] or null, clip, input_forget) and the
// peephole gradients' per-row accumulator dpeep [B, 3H] (or null).
#define LSTM_BACKWARD_STEP_OPT(NAME, T)                                                                           \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,       \
                                    const float* __restrict__ c, const float* __restrict__ c_prev, const float* __restrict__ dm_in, const T* __restrict__ dy,         \
                                    int dy_stride, float* __restrict__ carry, float* __restrict__ dc, T* __restrict__ dg,                                \
                                    const T* __restrict__ peephole, float clip, int input_forget, float* __restrict__ dpeep) {                         \
        lstm_backward_step_body<T, true>(batch, hidden, step, lengths, gates, c, c_prev, dm_in, dy, dy_stride, carry, dc, \
                                         dg, peephole, clip, input_forget, dpeep);                              \
    }
RNNK_INSTANTIATE(LSTM_BACKWARD_STEP_OPT, lstm_backward_step_opt)

// The backward step of the layer-normalised LSTM (the cell options as in _opt): after
// lstm_ln_cell_backward (kernels/layer_norm.cu) added the output path's LNback(dŝ) into dc, the
// o gate's gradient is dm_tau·o(1-o) (dm_tau = dm⊙tanh(LN(c)) [B, H]) and dc' = dc (no
// dm⊙o⊙(1−tanh²c) term); the rest, and the carry, as lstm_backward_step_opt.
#define LSTM_BACKWARD_STEP_LN(NAME, T)                                                                            \
    extern "C" __global__ void NAME(int batch, int hidden, int step, const int* __restrict__ lengths, const float* __restrict__ gates,       \
                                    const float* __restrict__ c, const float* __restrict__ c_prev, const float* __restrict__ dm_in, const T* __restrict__ dy,         \
                                    int dy_stride, float* __restrict__ carry, float* __restrict__ dc, T* __restrict__ dg,                                \
                                    const T* __restrict__ peephole, float clip, int input_forget, float* __restrict__ dpeep,                          \
                                    const float* __restrict__ dm_tau) {                                                                                \
        lstm_backward_step_body<T, true, true>(batch, hidden, step, lengths, gates, c, c_prev, dm_in, dy, dy_stride, carry, dc, \
                                               dg, peephole, clip, input_forget, dpeep, dm_tau);                  \
    }
RNNK_INSTANTIATE(LSTM_BACKWARD_STEP_LN, lstm_backward_step_ln)
