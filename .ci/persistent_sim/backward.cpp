// Multi-block, multi-warp simulation of kernels/persistent_backward.cu on the CPU (run it with
// .ci/persistent_sim/run.sh, which supplies the simulator's common.cuh): every CUDA thread is an
// OS thread; __syncthreads, the grid barrier and the warp shuffles are thread barriers. The weights
// are scaled by 1/sqrt(H) so that dh stays O(1) over the steps and the relative tolerance 1e-5
// (f32 sums in another order) means something.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>
#include <cmath>
#include "persistent_backward.cu"

thread_local rnnk_dim3 blockIdx, threadIdx;
rnnk_dim3 blockDim, gridDim;
thread_local SimCtx sim;
#include "grid.h"

struct Out { std::vector<float> carry, dc, dgi, dgh; };

template <class Cell>
Out run(int B, int H, int T, int reverse, const std::vector<int>& lens, int units, int nthreads, unsigned seed, bool same_dg) {
    constexpr int G = Cell::G;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u01(0.02f, 0.98f), um1(-1.0f, 1.0f);
    auto vec = [&](size_t n, bool unit) { std::vector<float> v(n); for (auto& x : v) x = unit ? u01(rng) : um1(rng); return v; };
    auto w = vec((size_t)G * H * H, false);
    for (auto& x : w) x /= sqrtf((float)H);
    auto gates = vec((size_t)T * B * G * H, true);
    auto extra = vec((size_t)T * B * H, false), c = vec((size_t)T * B * H, false), h = vec((size_t)T * B * H, false);
    auto h0 = vec((size_t)B * H, false), c0 = vec((size_t)B * H, false);
    const int dy_stride = 2 * H;
    auto dy = vec((size_t)T * B * dy_stride, false);
    Out o;
    o.carry = vec((size_t)B * H, false);
    o.dc = vec((size_t)B * H, false);
    o.dgi.assign((size_t)T * B * G * H, NAN);
    o.dgh.assign((size_t)T * B * G * H, NAN);
    float* dgh = same_dg ? o.dgi.data() : o.dgh.data();
    const int blocks = (H + units - 1) / units;
    unsigned int barrier[2] = {0, 0};
    const bool guard_ok = launch(blocks, nthreads, persistent_backward_smem_floats(G, B, H, units), [&] {
        const BwdSaved s = {gates.data(), G == 3 ? extra.data() : nullptr, G == 4 ? c.data() : nullptr,
                            G == 3 ? h.data() : nullptr, G == 3 ? h0.data() : nullptr, G == 4 ? c0.data() : nullptr};
        persistent_backward<Cell>(sim.smem, B, H, T, reverse, units, lens.data(), w.data(), s, dy.data() + 3, dy_stride,
                                  o.carry.data(), G == 4 ? o.dc.data() : nullptr, o.dgi.data(), dgh, barrier);
    });
    if (!guard_ok) o.carry.assign(o.carry.size(), NAN);  // a write past the shared memory fails the case
    return o;
}

double maxdiff(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        double d = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
        if (std::isnan(d)) return d;  // a NaN (an unwritten or unsynchronised value) shows
        if (d > m) m = d;
    }
    return m;
}

template <class Cell>
int check(const char* name, int B, int H, int T, int units, int nthreads) {
    int fails = 0;
    std::vector<int> lens(B);
    for (int b = 0; b < B; ++b) lens[b] = T - (b * 3) % T;
    for (int reverse = 0; reverse < 2; ++reverse) {
        const bool same = Cell::G != 3;
        Out one = run<Cell>(B, H, T, reverse, lens, H, 1, 7 + reverse, same);
        Out many = run<Cell>(B, H, T, reverse, lens, units, nthreads, 7 + reverse, same);
        double e[4] = {maxdiff(many.carry, one.carry), Cell::G == 4 ? maxdiff(many.dc, one.dc) : 0.0, maxdiff(many.dgi, one.dgi),
                       same ? 0.0 : maxdiff(many.dgh, one.dgh)};
        bool ok = true;
        for (double x : e) ok = ok && x <= 1e-5;  // false for NaN
        fails += !ok;
        printf("%-9s B=%d H=%-4d T=%-2d U=%-3d threads=%-3d blocks=%-3d reverse=%d: carry %.2e dc %.2e dgi %.2e dgh %.2e %s\n", name, B, H, T,
               units, nthreads, (H + units - 1) / units, reverse, e[0], e[1], e[2], e[3], ok ? "ok" : "FAIL");
    }
    return fails;
}

int main(int argc, char** argv) {
    int big = argc > 1;
    int f = 0;
    // Several units per warp (U > 8 warps), one unit per warp, units past H in the last block,
    // H not a multiple of 32, B = 1 and 8.
    f += check<LstmBwd>("lstm", 3, 37, 6, 5, 256);
    f += check<GruBwd>("gru", 8, 37, 5, 12, 256);
    f += check<RnnBwd<false>>("rnn_tanh", 1, 45, 7, 16, 64);
    f += check<RnnBwd<true>>("rnn_relu", 4, 33, 6, 3, 128);
    if (big) {
        f += check<LstmBwd>("lstm", 8, 300, 5, 20, 256);
        f += check<GruBwd>("gru", 4, 130, 8, 9, 256);
    }
    printf("%s\n", f ? "FAILED" : "all ok");
    return f != 0;
}
