// Zoneout (Krueger et al. 2017; the options `zoneout` for h and `zoneout_cell` for the LSTM's c;
// src/backend/host/zoneout.rs has the host's version of the same passes, src/masks.rs the
// layout of the masks): after a step's cell, each unit of an active row keeps its previous value
// where its mask hits (a training pass) or becomes the expectation z·prev + (1-z)·new
// (inference). Unit u of row b at step t is hit when word u % 4 of Philox 4x32-10 of the counter
// [u / 4, b, t, tag] under the call's key (key0, key1) is below `bound` (round(z·2³²)), t the
// sequence's step (`mask_step`: the call's time index `step` plus the first step of a stream
// that continues a sequence, MaskStream::from_step), tag the site's (layer, direction, kind
// ZoneoutH or ZoneoutC).
//
// - zoneout_forward_*: state [B, W] holds the cell's new state on entry and the zoned one on
//   exit; prev [B, W] is the state before the step. Also writes the zoned h into the layer
//   output y (a row's W columns at b·y_stride, or null), and, before zoning, the cell's own new
//   state into save_new (the LSTM's c_new, which backward's tanh reads; or null). Inactive rows
//   are not touched (the step kernel kept their state and zeroed their output).
// - zoneout_split_*: backward of a training pass, before the step's cell backward. grad [B, W]
//   (f32) holds the gradient carried to the zoned state (dh or dc); the layer output's gradient
//   dy (storage type, a row's W columns at b·dy_stride, or null) is added to it first (the step
//   kernel is then given no dy). For each active row the hit units' gradient moves to kept [B, W]
//   (f32: it goes straight to the previous step's state, added after the step's products) and the
//   others' stays in grad (it goes through the cell); kept is 0 elsewhere, inactive rows included,
//   so it adds onto the carried gradient as a whole buffer (util.cu's add_f32).
//
// One thread per group of 4 units of a row, so each Philox call is made once. The selection is
// exact: a training pass's zoned values are bit for bit the host's. The state is of the storage
// type T for h, float for c (the f32 entries).
//
// With supplied masks (`hits` not null; masks.cuh has the layout) a training pass reads the
// hits of row b at the sequence's step `mask_step` from the caller's bits (`hits_step0` the
// first step they hold) and draws nothing.
#include "common.cuh"
#include "masks.cuh"
#include "philox.cuh"

#define ZONEOUT_FORWARD(NAME, T)                                                                                                   \
    extern "C" __global__ void NAME(int batch, int width, int step, int mask_step, const int* __restrict__ lengths, int key0,      \
                                    int key1, int tag, long long bound, int training, float z, float keep,                         \
                                    const T* __restrict__ prev /* [B, W] */, T* __restrict__ state /* [B, W] */,                   \
                                    T* __restrict__ y /* [B, y_stride] or null */,                                                 \
                                    int y_stride, T* __restrict__ save_new /* [B, W] or null */,                                   \
                                    const unsigned int* __restrict__ hits /* [.., B, hits_words] or null */, int hits_step0,       \
                                    int hits_words) {                                                                              \
        const long long groups = (width + 3) / 4;                                                                                  \
        FOR_EACH_ELEMENT(e, (long long)batch * groups) {                                                                           \
            const long long g = e % groups, b = e / groups;                                                                        \
            if (!row_active(lengths, (int)b, step)) continue;                                                                      \
            unsigned int w[4] = {(unsigned int)g, (unsigned int)b, (unsigned int)mask_step, (unsigned int)tag};                    \
            if (training && !hits) rnnk_philox4x32_10(w, (unsigned int)key0, (unsigned int)key1);                                  \
            const long long hrow = ((long long)mask_step - hits_step0) * batch + b;                                                \
            for (int j = 0; j < 4; ++j) {                                                                                          \
                const long long u = 4 * g + j;                                                                                     \
                if (u < width) {                                                                                                   \
                    const long long k = b * width + u;                                                                             \
                    const float nv = ld(state, k), pv = ld(prev, k);                                                               \
                    if (save_new) st(save_new, k, nv);                                                                             \
                    const bool hit = hits ? rnnk_supplied_hit(hits, hrow, hits_words, u) : (long long)w[j] < bound;               \
                    /* Inference: two products and a sum, as the host computes them (no FMA). */                                   \
                    const float v = training ? (hit ? pv : nv) : __fadd_rn(__fmul_rn(z, pv), __fmul_rn(keep, nv));                 \
                    st(state, k, v);                                                                                               \
                    if (y) st(y, b * y_stride + u, v);                                                                             \
                }                                                                                                                  \
            }                                                                                                                      \
        }                                                                                                                          \
    }
ZONEOUT_FORWARD(zoneout_forward_f32, float)
ZONEOUT_FORWARD(zoneout_forward_f16, rnnk_f16)
ZONEOUT_FORWARD(zoneout_forward_bf16, rnnk_bf16)

#define ZONEOUT_SPLIT(NAME, T)                                                                                                     \
    extern "C" __global__ void NAME(int batch, int width, int step, int mask_step, const int* __restrict__ lengths, int key0,      \
                                    int key1, int tag, long long bound, const T* __restrict__ dy /* [B, dy_stride] or null */,     \
                                    int dy_stride, float* __restrict__ grad /* [B, W] */, float* __restrict__ kept /* [B, W] */,   \
                                    const unsigned int* __restrict__ hits /* [.., B, hits_words] or null */, int hits_step0,       \
                                    int hits_words) {                                                                              \
        const long long groups = (width + 3) / 4;                                                                                  \
        FOR_EACH_ELEMENT(e, (long long)batch * groups) {                                                                           \
            const long long g = e % groups, b = e / groups;                                                                        \
            const bool active = row_active(lengths, (int)b, step);                                                                 \
            unsigned int w[4] = {(unsigned int)g, (unsigned int)b, (unsigned int)mask_step, (unsigned int)tag};                    \
            if (active && !hits) rnnk_philox4x32_10(w, (unsigned int)key0, (unsigned int)key1);                                    \
            const long long hrow = ((long long)mask_step - hits_step0) * batch + b;                                                \
            for (int j = 0; j < 4; ++j) {                                                                                          \
                const long long u = 4 * g + j;                                                                                     \
                if (u < width) {                                                                                                   \
                    const long long k = b * width + u;                                                                             \
                    if (!active) {                                                                                                 \
                        kept[k] = 0.0f;                                                                                            \
                        continue;                                                                                                  \
                    }                                                                                                              \
                    const float total = grad[k] + (dy ? ld(dy, b * dy_stride + u) : 0.0f);                                         \
                    const bool hit = hits ? rnnk_supplied_hit(hits, hrow, hits_words, u) : (long long)w[j] < bound;               \
                    kept[k] = hit ? total : 0.0f;                                                                                  \
                    grad[k] = hit ? 0.0f : total;                                                                                  \
                }                                                                                                                  \
            }                                                                                                                      \
        }                                                                                                                          \
    }
ZONEOUT_SPLIT(zoneout_split_f32, float)
ZONEOUT_SPLIT(zoneout_split_f16, rnnk_f16)
ZONEOUT_SPLIT(zoneout_split_bf16, rnnk_bf16)
