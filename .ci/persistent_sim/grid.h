// The simulated launch shared by forward.cpp and backward.cpp: every CUDA thread of a grid an
// OS thread, with the simulator's barriers (common.cuh as run.sh rewrites it). Include it after
// the definitions of blockIdx, threadIdx, blockDim, gridDim and sim.
#pragma once
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

// NaN floats past each buffer (and each block's shared memory), which must stay NaN.
constexpr int GUARD = 16;

// Runs `body` as every thread of a grid of `blocks` × `nthreads`, each block with `smem_floats`
// NaN-filled floats of shared memory (and GUARD more, which must stay NaN: false otherwise).
template <class Body>
static bool launch(int blocks, int nthreads, long long smem_floats, Body body) {
    blockDim = {(unsigned)nthreads, 1, 1};
    gridDim = {(unsigned)blocks, 1, 1};
    const int lanes = nthreads < 32 ? nthreads : 32, nwarps = nthreads / lanes;
    SimBarrier grid(blocks * nthreads);
    std::vector<std::unique_ptr<SimBarrier>> block_bars, warp_bars;
    std::vector<std::vector<float>> smem(blocks, std::vector<float>((size_t)smem_floats + GUARD, NAN));
    std::vector<SimWarp> warps(blocks * nwarps);
    for (int k = 0; k < blocks; ++k) block_bars.emplace_back(new SimBarrier(nthreads));
    for (auto& wp : warps) {
        warp_bars.emplace_back(new SimBarrier(lanes));
        wp.bar = warp_bars.back().get();
    }
    std::vector<std::thread> ths;
    for (int k = 0; k < blocks; ++k)
        for (int t = 0; t < nthreads; ++t)
            ths.emplace_back([&, k, t] {
                blockIdx = {(unsigned)k, 0, 0};
                threadIdx = {(unsigned)t, 0, 0};
                sim = {&grid, block_bars[k].get(), &warps[k * nwarps + t / lanes], smem[k].data(), 0};
                body();
            });
    for (auto& th : ths) th.join();
    for (auto& sm : smem)
        for (int i = 0; i < GUARD; ++i)
            if (!std::isnan(sm[smem_floats + i])) return false;
    return true;
}

