// Multi-block, multi-warp simulation of the persistent forward kernels on the CPU:
// persistent_lstm_forward (kernels/persistent_lstm.cu) and persistent_gru_forward,
// persistent_rnn_tanh_forward, persistent_rnn_relu_forward (kernels/persistent_cell.cu), called
// with the driver's arguments. Run it with .ci/persistent_sim/run.sh, which supplies the
// simulator's common.cuh (every CUDA thread an OS thread; __syncthreads, the grid barrier and the
// warp shuffles thread barriers) and gives the kernels the simulated block's shared memory.
//
// Each case runs the kernel with many blocks and warps (the launch shape of exec.rs: ceil(H/U)
// blocks, here of 32 to 256 threads; the driver launches 256) and compares every output with
//   - a straightforward f64 LSTM / GRU / RNN step loop (reference() below), for every kernel;
//   - the one-thread host emulation (one block of one thread owning all H units, as the driver's
//     emulation tests run it), for the GRU and RNN kernels (the LSTM kernel has none).
// Tolerance: |got - want| / (1 + |want|) <= 1e-5. The weights are scaled by 1/sqrt(H), so every
// pre-activation is O(1) and the f32 rounding of a dot product of H terms (summed in another order
// than the reference) is about sqrt(H)·2^-24, under 1e-6 at H = 130; the cells and the steps do not
// amplify it (every case's largest error is printed: at most 3e-7). An indexing, masking or
// synchronisation error gives O(0.1) errors or a NaN.
//
// Shared memory and every output buffer start as NaN, with 16 NaN floats past each buffer (and
// past each input) and y rows wider than H (y_stride = 2H + 3, the kernel's columns start at
// H + 1): a value read before it is written, or read past the end, shows as NaN, and a value the
// kernel must not write (a guard, another direction's columns, an unused inference slot) must
// still be NaN.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>
#include "persistent_cell.cu"
#include "persistent_lstm.cu"

thread_local rnnk_dim3 blockIdx, threadIdx;
rnnk_dim3 blockDim, gridDim;
thread_local SimCtx sim;
#include "grid.h"

enum Kind { LSTM, GRU, TANH, RELU };
static const char* const kNames[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};
static int gates_of(Kind k) { return k == LSTM ? 4 : k == GRU ? 3 : 1; }

// B ≤ 8 rows, H units, T steps, U units per block, `threads` per block; reverse, training (save
// gates, c, extra; h_states [T, B, H] instead of [2, B, H]), biases given, h0/c0 random (else
// zeros), hn/cn given (else null); `spare` blocks past H (the host never launches them; they
// must only take part in the grid barriers).
struct Case {
    Kind kind;
    int B, H, T, U, threads, reverse, training, bias, h0, hn, spare = 0;
};

struct Inputs {
    std::vector<int> lens;
    std::vector<float> xg, w, bih, bhh, h0, c0;
};

// Every output buffer, with its guard; empty when the kernel gets null.
template <class F>
struct Outs {
    std::vector<F> h_states, c_save, gates, extra, y, hn, cn;
    bool smem_guard_ok = true;  // nothing written past the end of shared memory
};

static int ystride(const Case& c) { return 2 * c.H + 3; }
static int yoff(const Case& c) { return c.H + 1; }

template <class F>
static Outs<F> alloc_outs(const Case& c) {
    const size_t B = c.B, H = c.H, T = c.T, G = gates_of(c.kind), bh = B * H;
    Outs<F> o;
    auto buf = [](size_t n) { return std::vector<F>(n + GUARD, (F)NAN); };
    o.h_states = buf(c.training ? T * bh : 2 * bh);
    if (c.training) {
        o.gates = buf(T * B * G * H);
        if (c.kind == LSTM) o.c_save = buf(T * bh);
        if (c.kind == GRU) o.extra = buf(T * bh);
    }
    o.y = buf(T * B * ystride(c));
    if (c.hn) {
        o.hn = buf(bh);
        if (c.kind == LSTM) o.cn = buf(bh);
    }
    return o;
}

static Inputs make_inputs(const Case& c, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> um1(-1.0f, 1.0f);
    auto vec = [&](size_t n, float scale) {  // n values and GUARD NaNs: a read past the end shows
        std::vector<float> v(n + GUARD, NAN);
        for (size_t i = 0; i < n; ++i) v[i] = scale * um1(rng);
        return v;
    };
    const size_t B = c.B, H = c.H, T = c.T, G = gates_of(c.kind);
    Inputs in;
    for (int b = 0; b < c.B; ++b) in.lens.push_back(c.T - (b * 3) % c.T);  // 1..T, several rows shorter
    in.xg = vec(T * B * G * H, 1.0f);
    in.w = vec(G * H * H, 1.0f / sqrtf((float)H));
    in.bih = vec(G * H, 0.5f);
    in.bhh = vec(G * H, 0.5f);
    in.h0 = vec(B * H, c.h0 ? 1.0f : 0.0f);
    in.c0 = vec(B * H, c.h0 ? 1.0f : 0.0f);
    return in;
}

template <class F>
static F* ptr(std::vector<F>& v) { return v.empty() ? nullptr : v.data(); }

// The kernel of c.kind with `units` per block and `nthreads` per block.
static Outs<float> run(const Case& c, Inputs& in, int units, int nthreads) {
    Outs<float> o = alloc_outs<float>(c);
    const int blocks = (c.H + units - 1) / units + (nthreads > 1 ? c.spare : 0), G = gates_of(c.kind);
    const float* bih = c.bias ? in.bih.data() : nullptr;
    const float* bhh = c.bias ? in.bhh.data() : nullptr;
    float* y = o.y.data() + yoff(c);
    unsigned int barrier[2] = {0, 0};  // the simulated grid_barrier does not use it
    if (c.kind == LSTM) {
        const long long smem = 4LL * units * c.H + (long long)c.B * c.H + 5LL * c.B * units;  // persistent_smem
        o.smem_guard_ok = launch(blocks, nthreads, smem, [&] {
            persistent_lstm_forward(c.B, c.H, c.T, c.reverse, units, in.lens.data(), in.xg.data(), in.w.data(), bih, bhh,
                                    in.h0.data(), in.c0.data(), o.h_states.data(), c.training, ptr(o.c_save),
                                    ptr(o.gates), y, ystride(c), ptr(o.hn), ptr(o.cn), barrier);
        });
        return o;
    }
    auto* entry = c.kind == GRU ? persistent_gru_forward : c.kind == TANH ? persistent_rnn_tanh_forward : persistent_rnn_relu_forward;
    o.smem_guard_ok = launch(blocks, nthreads, persistent_cell_smem_floats(G, c.B, c.H, units), [&] {
        entry(c.B, c.H, c.T, c.reverse, units, in.lens.data(), in.xg.data(), in.w.data(), bih, bhh, in.h0.data(),
              o.h_states.data(), c.training, ptr(o.gates), ptr(o.extra), y, ystride(c), ptr(o.hn), barrier);
    });
    return o;
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

// The f64 step loop: what the kernel must write, NaN where it must write nothing.
static Outs<double> reference(const Case& c, const Inputs& in) {
    Outs<double> o = alloc_outs<double>(c);
    const int B = c.B, H = c.H, T = c.T, G = gates_of(c.kind);
    const long long bh = (long long)B * H, gh = (long long)G * H;
    std::vector<double> h(in.h0.begin(), in.h0.begin() + bh), cs(in.c0.begin(), in.c0.begin() + bh);
    for (int s = 0; s < T; ++s) {
        const int t = c.reverse ? T - 1 - s : s;
        std::vector<double> hnew = h, cnew = cs;
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < H; ++j) {
                const long long hb = (long long)b * H + j, grow = ((long long)t * B + b) * gh;
                double& yv = o.y[((long long)t * B + b) * ystride(c) + yoff(c) + j];
                double gates[4] = {0, 0, 0, 0}, extra = 0;
                if (t < in.lens[b]) {
                    double gx[4], ghv[4];
                    for (int g = 0; g < G; ++g) {
                        double acc = 0;
                        for (int k = 0; k < H; ++k) acc += (double)in.w[((long long)g * H + j) * H + k] * h[(long long)b * H + k];
                        ghv[g] = acc + (c.bias ? in.bhh[g * H + j] : 0.0);
                        gx[g] = in.xg[grow + g * H + j] + (c.bias ? in.bih[g * H + j] : 0.0);
                    }
                    if (c.kind == LSTM) {
                        const double i = sigm(gx[0] + ghv[0]), f = sigm(gx[1] + ghv[1]), g = tanh(gx[2] + ghv[2]),
                                     oo = sigm(gx[3] + ghv[3]);
                        cnew[hb] = f * cs[hb] + i * g;
                        hnew[hb] = oo * tanh(cnew[hb]);
                        gates[0] = i, gates[1] = f, gates[2] = g, gates[3] = oo;
                    } else if (c.kind == GRU) {
                        const double r = sigm(gx[0] + ghv[0]), z = sigm(gx[1] + ghv[1]), n = tanh(gx[2] + r * ghv[2]);
                        hnew[hb] = (1 - z) * n + z * h[hb];
                        gates[0] = r, gates[1] = z, gates[2] = n, extra = ghv[2];
                    } else {
                        const double a = gx[0] + ghv[0];
                        hnew[hb] = c.kind == TANH ? tanh(a) : (a < 0 ? 0.0 : a);
                        gates[0] = hnew[hb];
                    }
                    yv = hnew[hb];
                } else {
                    yv = 0;  // the row keeps h (and c); the saves are zeros
                }
                if (c.training) {
                    for (int g = 0; g < G; ++g) o.gates[grow + (long long)g * H + j] = gates[g];
                    if (c.kind == LSTM) o.c_save[(long long)t * bh + hb] = cnew[hb];
                    if (c.kind == GRU) o.extra[(long long)t * bh + hb] = extra;
                }
                o.h_states[(c.training ? (long long)t : (long long)(s & 1)) * bh + hb] = hnew[hb];
                if (s == T - 1 && c.hn) {
                    o.hn[hb] = hnew[hb];
                    if (c.kind == LSTM) o.cn[hb] = cnew[hb];
                }
            }
        h = hnew;
        cs = cnew;
    }
    return o;
}

// The largest |got - want| / (1 + |want|); infinity when one of them is NaN and the other not.
template <class F>
static double maxdiff(const std::vector<float>& got, const std::vector<F>& want) {
    if (got.size() != want.size()) return INFINITY;
    double m = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(got[i]) || std::isnan((double)want[i])) {
            if (std::isnan(got[i]) != std::isnan((double)want[i])) return INFINITY;
            continue;
        }
        const double d = fabs((double)got[i] - (double)want[i]) / (1.0 + fabs((double)want[i]));
        if (d > m) m = d;
    }
    return m;
}

template <class F>
static double compare(Outs<float>& got, Outs<F>& want) {
    double e = got.smem_guard_ok ? 0 : INFINITY;
    for (double d : {maxdiff(got.h_states, want.h_states), maxdiff(got.c_save, want.c_save), maxdiff(got.gates, want.gates),
                     maxdiff(got.extra, want.extra), maxdiff(got.y, want.y), maxdiff(got.hn, want.hn), maxdiff(got.cn, want.cn)})
        e = d > e ? d : e;
    return e;
}

static int check(const Case& c, unsigned seed) {
    Inputs in = make_inputs(c, seed);
    Outs<float> many = run(c, in, c.U, c.threads);
    Outs<double> want = reference(c, in);
    const double e_ref = compare(many, want);
    double e_emu = 0;
    if (c.kind != LSTM) {
        Outs<float> one = run(c, in, c.H, 1);  // the host emulation's launch: one block of one thread
        e_emu = compare(many, one);
    }
    const bool ok = e_ref <= 1e-5 && e_emu <= 1e-5;  // false for infinity
    char emu[16] = "(none)";
    if (c.kind != LSTM) snprintf(emu, sizeof emu, "%.2e", e_emu);
    printf("%-8s B=%d H=%-3d T=%d U=%-2d threads=%-3d blocks=%d+%d reverse=%d training=%d bias=%d h0=%d hn=%d: "
           "vs f64 %.2e, vs emulation %-8s %s\n",
           kNames[c.kind], c.B, c.H, c.T, c.U, c.threads, (c.H + c.U - 1) / c.U, c.spare, c.reverse, c.training, c.bias, c.h0, c.hn,
           e_ref, emu, ok ? "ok" : "FAIL");
    return !ok;
}

// `forward [NAME]`: only the cases of kernel NAME (lstm, gru, rnn_tanh, rnn_relu).
int main(int argc, char** argv) {
    // Every kernel with B = 1, 3 and 8; H not a multiple of U (a partial last block) nor of 32;
    // U above the warp count (several gate rows / units per warp); both directions; rows of
    // several lengths (1..T); training and inference; with and without biases, h0/c0 and hn/cn;
    // T = 1; a spare block past H.
    const Case cases[] = {
        {LSTM, 3, 37, 4, 5, 64, 0, 1, 1, 1, 1},
        {LSTM, 3, 21, 4, 5, 64, 1, 0, 0, 0, 1},
        {LSTM, 8, 37, 4, 10, 256, 1, 1, 1, 1, 0},
        {LSTM, 1, 19, 5, 7, 32, 0, 0, 1, 1, 1},
        {LSTM, 2, 19, 1, 6, 64, 1, 0, 1, 1, 1, 1},  // T = 1: inference slot 1 stays unwritten
        {GRU, 8, 37, 5, 12, 256, 0, 1, 1, 1, 1},
        {GRU, 1, 45, 6, 16, 64, 1, 0, 0, 0, 1},
        {GRU, 3, 130, 4, 9, 256, 1, 1, 1, 1, 0},
        {TANH, 3, 45, 7, 16, 64, 0, 1, 1, 1, 1},
        {TANH, 8, 33, 5, 5, 128, 1, 0, 1, 0, 1},
        {RELU, 8, 33, 6, 3, 128, 1, 1, 1, 1, 1},
        {RELU, 1, 40, 5, 7, 32, 0, 0, 0, 1, 0},
        {TANH, 3, 20, 1, 6, 64, 0, 0, 1, 1, 1},
        {GRU, 2, 20, 3, 6, 64, 0, 1, 1, 1, 1, 1},
    };
    int fails = 0;
    unsigned seed = 11;
    for (const Case& c : cases) {
        if (argc < 2 || std::string(argv[1]) == kNames[c.kind]) fails += check(c, seed);
        ++seed;
    }
    printf("%s\n", fails ? "FAILED" : "all ok");
    return fails != 0;
}
