#!/usr/bin/env bash
# Multi-block, multi-warp check of the persistent kernels without a GPU: every CUDA thread of the
# grid runs as an OS thread (__syncthreads, the grid barrier and the warp shuffles become
# thread barriers). Catches what the driver's one-thread emulation cannot: the split of units over
# blocks and warps, the lane-strided sums and shuffles, a missing barrier (NaN-filled shared memory
# and outputs make an early read show).
# - backward.cpp: kernels/persistent_backward.cu (every cell) against the one-thread emulation
#   (which the driver's emulation tests check bit for bit against the per-step backward);
# - forward.cpp: kernels/persistent_lstm.cu and kernels/persistent_cell.cu (GRU, RNN tanh/relu)
#   against an f64 step loop and, for GRU and RNN, the one-thread emulation.
# `--tsan` also runs both under ThreadSanitizer, which reports any shared-memory race.
#
#   bash .ci/persistent_sim/run.sh [--tsan]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/k"
cp "$root"/kernels/*.cu "$root"/kernels/*.cuh "$work/k/"
# Replace common.cuh's two host-emulation sections (one block of one thread) with the simulator's.
python3 - "$work/k/common.cuh" "$work/k/persistent_lstm.cu" "$work/k/persistent_cell.cu" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
start = s.index('#ifndef __CUDACC__\n// Host emulation')
end = s.index('#endif\n', start) + len('#endif\n')
s = s[:start] + '''#include <math.h>
#include <condition_variable>
#include <mutex>
// A barrier of n threads. Not std::barrier: libstdc++'s waits on a small shared table of futexes,
// so with thousands of threads every release wakes the waiters of unrelated barriers too.
struct SimBarrier {
    explicit SimBarrier(int n) : n(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m);
        const unsigned long g = gen;
        if (++count == n) {
            count = 0;
            ++gen;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return gen != g; });
        }
    }
    std::mutex m;
    std::condition_variable cv;
    const int n;
    int count = 0;
    unsigned long gen = 0;
};
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct rnnk_dim3 { unsigned int x, y, z; };
extern thread_local rnnk_dim3 blockIdx, threadIdx;
extern rnnk_dim3 blockDim, gridDim;
// A warp exchanges values through v, double-buffered: a lane writes v[phase] and, after the one
// barrier, reads it; it can only write v[phase] again two barriers later, when every lane of the
// warp has read it.
struct SimWarp { float v[2][32]; SimBarrier* bar; };
struct SimCtx { SimBarrier* grid; SimBarrier* block; SimWarp* warp; float* smem; int phase; };
extern thread_local SimCtx sim;
// The CUDA built-ins persistent_lstm.cu uses directly (it has no one-thread emulation).
#define __shared__
inline void __syncthreads() { sim.block->arrive_and_wait(); }
inline float __ldcg(const float* p) { return *p; }
inline float __shfl_xor_sync(unsigned int, float v, int off) {  // a warp of 32 lanes
    const int lane = threadIdx.x % 32;
    float* x = sim.warp->v[sim.phase ^= 1];
    x[lane] = v;
    sim.warp->bar->arrive_and_wait();
    return x[lane ^ off];
}
''' + s[end:]
tail = s.index('#else\ninline void grid_barrier')
s = s[:tail] + '''#else
inline void grid_barrier(unsigned int*) { sim.grid->arrive_and_wait(); }
inline float warp_sum(float v) {
    const int lanes = blockDim.x < 32 ? blockDim.x : 32;
    float* x = sim.warp->v[sim.phase ^= 1];
    x[threadIdx.x % lanes] = v;
    sim.warp->bar->arrive_and_wait();
    float s = 0.0f;
    for (int i = 0; i < lanes; ++i) s += x[i];
    return s;
}
inline float load_cg(const float* p) { return *p; }
inline void block_sync() { sim.block->arrive_and_wait(); }
#endif
'''
open(p, 'w').write(s)
# The dynamic shared memory of persistent_lstm_forward and of persistent_cell.cu's entries (the
# host emulation's malloc): the simulated block's.
p = sys.argv[2]
s = open(p).read()
assert s.count('extern __shared__ float smem[];') == 1
open(p, 'w').write(s.replace('extern __shared__ float smem[];', 'float* smem = sim.smem;'))
p = sys.argv[3]
s = open(p).read()
for old, new in [('#ifdef __CUDACC__\n    extern __shared__ float smem[];\n#else\n', '#if 1\n    float* smem = sim.smem;\n#else\n'),
                 ('#ifndef __CUDACC__\n    free(smem);\n', '#if 0\n    free(smem);\n')]:
    assert s.count(old) == 1, old
    s = s.replace(old, new)
open(p, 'w').write(s)
PY
cxx=${CXX:-c++}
build() {  # build NAME [FLAGS...]
    local name=$1
    shift
    "$cxx" -std=c++20 -pthread -ffp-contract=off -I "$work/k" -I "$here" "$@" "$here/${name%-tsan}.cpp" -o "$work/$name"
}
build backward -O2
build forward -O2
"$work/backward" big  # with its larger cases
"$work/forward"
if [[ "${1:-}" == "--tsan" ]]; then
    build backward-tsan -O1 -g -fsanitize=thread
    build forward-tsan -O1 -g -fsanitize=thread
    "$work/backward-tsan"
    "$work/forward-tsan"
fi
