// Dropout between layers (src/masks.rs has the layout, src/backend/host/dropout.rs the host's
// version of the same pass): data [steps, batch, width], the rows of steps first_step ..
// first_step + steps of a layer's output (or of the gradient handed down to it), multiplied in
// place by their factors, 0 where the unit is dropped and `scale` (1/(1-p), rounded to f32 on
// the host) where it is kept. The layer wavefront drops a chunk of steps at a time, the other
// paths all T steps at once.
// Unit u of row b at step t is dropped when word u % 4 of Philox 4x32-10 of the counter
// [u / 4, b, t, tag] under the call's key (key0, key1) is below `bound` (round(p·2³²)), t being
// the absolute step (first_step + the row's step in `data`), so a unit's factor does not depend
// on the range it is dropped with. The same pass serves forward (a layer's output) and backward
// (the gradient handed down to it).
// One thread per group of 4 units of a row, so each Philox call is made once.
// With supplied masks (`hits` not null; masks.cuh has the layout) the hits are read from the
// caller's bits, `hits_step0` the first step they hold, and nothing is drawn.
#include "common.cuh"
#include "masks.cuh"
#include "philox.cuh"

#define DROPOUT(NAME, T)                                                                                                           \
    extern "C" __global__ void NAME(int first_step, int steps, int batch, int width, int key0, int key1, int tag, long long bound, \
                                    float scale, T* __restrict__ data /* [steps, batch, width] */,                                 \
                                    const unsigned int* __restrict__ hits /* [.., batch, hits_words] or null */, int hits_step0,   \
                                    int hits_words) {                                                                              \
        const long long groups = (width + 3) / 4;                                                                                  \
        FOR_EACH_ELEMENT(e, (long long)steps * batch * groups) {                                                                   \
            const long long g = e % groups, r = e / groups, b = r % batch, t = first_step + r / batch;                             \
            unsigned int w[4] = {(unsigned int)g, (unsigned int)b, (unsigned int)t, (unsigned int)tag};                            \
            if (!hits) rnnk_philox4x32_10(w, (unsigned int)key0, (unsigned int)key1);                                              \
            for (int j = 0; j < 4; ++j) {                                                                                          \
                const long long u = 4 * g + j;                                                                                     \
                if (u < width) {                                                                                                   \
                    const long long k = r * width + u;                                                                             \
                    const bool hit = hits ? rnnk_supplied_hit(hits, (t - hits_step0) * batch + b, hits_words, u)                  \
                                          : (long long)w[j] < bound;                                                               \
                    const float f = hit ? 0.0f : scale;                                                                            \
                    st(data, k, ld(data, k) * f);                                                                                  \
                }                                                                                                                  \
            }                                                                                                                      \
        }                                                                                                                          \
    }
DROPOUT(dropout_f32, float)
DROPOUT(dropout_f16, rnnk_f16)
DROPOUT(dropout_bf16, rnnk_bf16)

// Variational dropout, one mask per sequence (src/backend/host/variational_dropout.rs has the
// host's version): out[r, u] = in[r, u] · f(r mod batch, u), or out[r, u] += it with
// `accumulate`, for the rows r of [rows, width] (steps of `batch` rows each). The factor of unit
// u of sequence b is 0 when word u % 4 of Philox 4x32-10 of the counter [u / 4, b, 0, tag] is
// below `bound`, `scale` otherwise: the same at every step. Recurrent dropout reads it on the
// state entering the recurrent product (tag of kind RecurrentH), input dropout on a layer's
// input (kind LayerInput); backward applies the same factors to the products' gradients and
// rebuilds the dropped operands of the weight gradients. `in` and `out` may be the same buffer.
// With supplied masks (`hits` not null) sequence b's hits are row b of the caller's bits.
#define VARIATIONAL_DROPOUT(NAME, T)                                                                                               \
    extern "C" __global__ void NAME(int rows, int batch, int width, int key0, int key1, int tag, long long bound, float scale,    \
                                    int accumulate, const T* in /* [rows, width] */, T* out /* [rows, width] */,                   \
                                    const unsigned int* __restrict__ hits /* [batch, hits_words] or null */, int hits_words) {     \
        const long long groups = (width + 3) / 4;                                                                                  \
        FOR_EACH_ELEMENT(e, (long long)rows * groups) {                                                                            \
            const long long g = e % groups, r = e / groups, b = r % batch;                                                         \
            unsigned int w[4] = {(unsigned int)g, (unsigned int)b, 0u, (unsigned int)tag};                                        \
            if (!hits) rnnk_philox4x32_10(w, (unsigned int)key0, (unsigned int)key1);                                              \
            for (int j = 0; j < 4; ++j) {                                                                                          \
                const long long u = 4 * g + j;                                                                                     \
                if (u < width) {                                                                                                   \
                    const long long k = r * width + u;                                                                             \
                    const bool hit = hits ? rnnk_supplied_hit(hits, b, hits_words, u) : (long long)w[j] < bound;                   \
                    const float f = hit ? 0.0f : scale;                                                                            \
                    const float v = ld(in, k) * f;                                                                                 \
                    st(out, k, accumulate ? ld(out, k) + v : v);                                                                   \
                }                                                                                                                  \
            }                                                                                                                      \
        }                                                                                                                          \
    }
VARIATIONAL_DROPOUT(variational_dropout_f32, float)
VARIATIONAL_DROPOUT(variational_dropout_f16, rnnk_f16)
VARIATIONAL_DROPOUT(variational_dropout_bf16, rnnk_bf16)
