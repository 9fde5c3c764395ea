#!/usr/bin/env bash
# Multi-block, multi-warp check of kernels/persistent_backward.cu without a GPU: every CUDA thread
# of the grid runs as an OS thread (__syncthreads, the grid barrier and the warp shuffles become
# std::barrier), and the result is compared with the one-thread host emulation (which the driver's
# emulation tests check bit for bit against the per-step backward). Catches what the one-thread
# emulation cannot: the split of units over blocks and warps, the lane-strided sums, a missing
# barrier (NaN-filled shared memory and outputs make an early read show). `--tsan` also runs it
# under ThreadSanitizer (about 2 minutes), which reports any shared-memory race.
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
python3 - "$work/k/common.cuh" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
start = s.index('#ifndef __CUDACC__\n// Host emulation')
end = s.index('#endif\n', start) + len('#endif\n')
s = s[:start] + '''#include <math.h>
#include <barrier>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct rnnk_dim3 { unsigned int x, y, z; };
extern thread_local rnnk_dim3 blockIdx, threadIdx;
extern rnnk_dim3 blockDim, gridDim;
struct SimWarp { float v[32]; std::barrier<>* bar; };
struct SimCtx { std::barrier<>* grid; std::barrier<>* block; SimWarp* warp; };
extern thread_local SimCtx sim;
''' + s[end:]
tail = s.index('#else\ninline void grid_barrier')
s = s[:tail] + '''#else
inline void grid_barrier(unsigned int*) { sim.grid->arrive_and_wait(); }
inline float warp_sum(float v) {
    const int lanes = blockDim.x < 32 ? blockDim.x : 32;
    sim.warp->v[threadIdx.x % lanes] = v;
    sim.warp->bar->arrive_and_wait();
    float s = 0.0f;
    for (int i = 0; i < lanes; ++i) s += sim.warp->v[i];
    sim.warp->bar->arrive_and_wait();
    return s;
}
inline float load_cg(const float* p) { return *p; }
inline void block_sync() { sim.block->arrive_and_wait(); }
#endif
'''
open(p, 'w').write(s)
PY
cxx=${CXX:-c++}
"$cxx" -std=c++20 -O2 -pthread -ffp-contract=off -I "$work/k" -I "$work" "$here/sim.cpp" -o "$work/sim"
"$work/sim" big
if [[ "${1:-}" == "--tsan" ]]; then
    "$cxx" -std=c++20 -O1 -g -fsanitize=thread -pthread -ffp-contract=off -I "$work/k" -I "$work" "$here/sim.cpp" -o "$work/sim-tsan"
    "$work/sim-tsan"
fi
