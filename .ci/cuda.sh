#!/usr/bin/env bash
# CI for the CUDA backend on a machine without a GPU (and, unchanged, on one with a GPU):
#
# 1. install the pinned CUDA 13.0 compiler from PyPI into a venv (DEVELOPERS.md, "CUDA toolchain
#    without a GPU"); the GPU machines' driver is CUDA 13.0 and rejects newer PTX ISA versions;
# 2. build everything with --features cuda, warnings as errors, nvcc required (build.rs compiles
#    kernels/*.cu to PTX);
# 3. check every PTX file with ptxas for sm_80 and sm_90, failing on any error, and print each
#    kernel's registers, spills and stack;
# 4. simulate the persistent kernels (persistent_lstm.cu, persistent_cell.cu,
#    persistent_backward.cu) with many blocks and warps on the CPU (.ci/persistent_sim/run.sh);
# 5. run the CUDA tests (the crate's, and the C ABI's with --features cuda): they print "skipped"
#    without a GPU; with one (nvidia-smi works) the GPU is required and `verify --backend cuda`
#    runs on every fixture (f32, f16 and bf16 storage).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
VENV=${RNN_KERNELS_CUDA_VENV:-$TARGET/venv-cuda}
PINS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96"

echo "== cuda: the pinned nvcc from PyPI ($PINS) in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA_BIN="$SITE/nvidia/cu13/bin"
export NVCC="$CUDA_BIN/nvcc"
PTXAS="$CUDA_BIN/ptxas"
"$NVCC" --version | tail -2

echo "== cuda: build with --features cuda (warnings are errors, nvcc required)"
# Exported, so every cargo command below has the same flags and environment as this build and
# reuses it (a change in either rebuilds the crate: build.rs reruns when RNN_KERNELS_REQUIRE_NVCC changes).
export RUSTFLAGS="-D warnings" RNN_KERNELS_REQUIRE_NVCC=1 RNN_KERNELS_REQUIRE_HOST_EMULATION=1
cargo build --release --features cuda --all-targets

# The PTX of the build just made: the build-script output folder written last.
OUT=$(dirname "$(ls -t "$TARGET"/release/build/rnn-kernels-*/out/ptx.rs | head -1)")
echo "== cuda: ptxas on $OUT/*.ptx"
fail=0
report=$(mktemp)
for arch in sm_80 sm_90; do
    for ptx in "$OUT"/*.ptx; do
        if ! "$PTXAS" -arch="$arch" -v "$ptx" -o /dev/null >"$report.log" 2>&1; then
            echo "ptxas -arch=$arch failed on $ptx:"
            cat "$report.log"
            fail=1
            continue
        fi
        # ptxas -v prints, per entry: "Compiling entry function 'NAME' for 'sm_XX'", then
        # "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers".
        awk -v arch="$arch" -v file="$(basename "$ptx")" '
            /Compiling entry function/ { match($0, /\047[^\047]+\047/); name = substr($0, RSTART + 1, RLENGTH - 2) }
            /bytes stack frame/ { stack = $1; stores = $5; loads = $9 }
            /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
                                      printf "%-6s %-20s %-36s %4s %6s %6s %6s\n", arch, file, name, regs, stores, loads, stack }
        ' "$report.log" >>"$report"
    done
done
printf "%-6s %-20s %-36s %4s %6s %6s %6s\n" arch file kernel regs spillS spillL stack
sort "$report"
if awk '$5 != 0 || $6 != 0 { bad = 1 } END { exit !bad }' "$report"; then
    echo "note: some kernels spill (see above)"
fi
rm -f "$report" "$report.log"
if [ "$fail" != 0 ]; then
    echo "ptxas reported errors"
    exit 1
fi

echo "== cuda: the persistent kernels (forward and backward) with many blocks and warps, simulated on the CPU"
bash .ci/persistent_sim/run.sh

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "== cuda: a GPU is present: the CUDA tests with the GPU required, and verify --backend cuda"
    nvidia-smi -L
    cargo test --release --features cuda --lib backend::cuda
    RNN_KERNELS_REQUIRE_CUDA=1 cargo test --release --features cuda --test cuda -- --nocapture
    echo "== cuda: the C ABI with --features cuda (the C program; the device-pointer entry points on the GPU)"
    RNN_KERNELS_REQUIRE_CUDA=1 cargo test --release -p rnn-kernels-capi --features cuda -- --nocapture
    cargo run --release --features cuda --example verify -- --backend cuda tests/fixtures/*.safetensors
    for dtype in f16 bf16; do
        cargo run --release --features cuda --example verify -- --backend cuda --dtype "$dtype" tests/fixtures/*.safetensors
    done
else
    echo "== cuda: no GPU: the driver on the host emulation (pointwise kernels as C++) against the reference, GEMM mapping, view bounds"
    cargo test --release --features cuda --lib backend::cuda
    echo "== cuda: no GPU: the CUDA tests (they must print that they were skipped)"
    cargo test --release --features cuda --test cuda -- --nocapture 2>&1 | tee "$TARGET/cuda-tests.log"
    grep -q "skipped" "$TARGET/cuda-tests.log"
    echo "== cuda: RNN_KERNELS_REQUIRE_CUDA=1 without a GPU must fail"
    if RNN_KERNELS_REQUIRE_CUDA=1 cargo test --release --features cuda --test cuda >/dev/null 2>&1; then
        echo "the CUDA tests passed with RNN_KERNELS_REQUIRE_CUDA=1 on a machine without a GPU"
        exit 1
    fi
    echo "ok: they fail"
    echo "== cuda: no GPU: the C ABI with --features cuda (the C program checks the device functions' arguments; the GPU test must say skipped)"
    cargo test --release -p rnn-kernels-capi --features cuda -- --nocapture 2>&1 | tee "$TARGET/capi-cuda-tests.log"
    grep -q "skipped: no CUDA device" "$TARGET/capi-cuda-tests.log"
    if RNN_KERNELS_REQUIRE_CUDA=1 cargo test --release -p rnn-kernels-capi --features cuda --test device >/dev/null 2>&1; then
        echo "the C ABI's GPU test passed with RNN_KERNELS_REQUIRE_CUDA=1 on a machine without a GPU"
        exit 1
    fi
    echo "ok: it fails"
fi
