#!/usr/bin/env bash
# Builds, HERE (x86-64, with cargo), everything `.ci/gpu.sh` runs on a GPU machine, into one
# folder that can travel to a machine without a Rust toolchain (the project's GPU machines have
# nvcc, PyTorch and compute-sanitizer, but no cargo):
#
#   bash .ci/gpu-pack.sh [DIR]          # default DIR: gpu-pack (git-ignored through .git/info/exclude)
#   ... on the GPU machine, in the repository root:
#   GPU_PREBUILT=DIR bash .ci/gpu.sh
#
# DIR/bin holds the test binaries (tests/cuda.rs, the library's unit tests, capi/tests/device.rs
# and capi/tests/steps_attention.rs) and the examples verify, bench, gemm_bench, handoff and
# attention_bench, built with --features cuda and the pinned nvcc (the PTX is inside them), with
# debug info stripped; DIR/lib holds librnn_kernels.so
# (the C ABI with cuda); DIR/wheel the Python package built with --features cuda (maturin, in a
# venv of its own) and the pure-Python wheels pytest needs, for python/tests/test_cuda.py there.
# Prints the total size.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu-pack}
TARGET=${CARGO_TARGET_DIR:-target}

if [ -z "${NVCC:-}" ]; then
    VENV=${RNN_KERNELS_CUDA_VENV:-$TARGET/venv-cuda}
    PINS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    export NVCC="$SITE/nvidia/cu13/bin/nvcc"
fi
export RNN_KERNELS_REQUIRE_NVCC=1 RNN_KERNELS_REQUIRE_HOST_EMULATION=1

echo "== gpu-pack: building with --features cuda (NVCC=$NVCC)"
cargo build --release --features cuda --example bench --example verify --example gemm_bench --example handoff --example attention_bench
cargo build --release -p rnn-kernels-capi --features cuda --lib

# The test executables, as cargo names them (the last "executable" of each build).
exe() { # exe CARGO_TEST_ARGS...: prints the path of the test binary cargo builds
    cargo test --release --no-run --message-format=json "$@" 2>/dev/null |
        python3 -c 'import json, sys
paths = [m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable")]
print(paths[-1])'
}
CUDA_TEST=$(exe -p rnn-kernels --features cuda --test cuda)
LIB_TEST=$(exe -p rnn-kernels --features cuda --lib)
CAPI_TEST=$(exe -p rnn-kernels-capi --features cuda --test device)
CAPI_ATTN_TEST=$(exe -p rnn-kernels-capi --features cuda --test steps_attention)

PYV=$TARGET/venv-gpu-pack
[ -x "$PYV/bin/python" ] || python3 -m venv "$PYV"
"$PYV/bin/python" -m pip install --quiet --disable-pip-version-check maturin==1.16.0
rm -rf "$TARGET/wheels-cuda"
"$PYV/bin/maturin" build --release -m python/Cargo.toml --interpreter "$PYV/bin/python" --features cuda --strip -o "$TARGET/wheels-cuda"

rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/wheel"
cp "$CUDA_TEST" "$DIR/bin/test-cuda"
cp "$LIB_TEST" "$DIR/bin/test-lib"
cp "$CAPI_TEST" "$DIR/bin/test-capi-device"
cp "$CAPI_ATTN_TEST" "$DIR/bin/test-capi-attention"
for e in bench verify gemm_bench handoff attention_bench; do
    cp "$TARGET/release/examples/$e" "$DIR/bin/$e"
done
cp "$TARGET/release/librnn_kernels.so" "$DIR/lib/"
strip --strip-debug "$DIR"/bin/* "$DIR"/lib/*
cp "$TARGET"/wheels-cuda/rnn_kernels-*.whl "$DIR/wheel/"
# pytest and its dependencies (pure Python, any CPython 3); numpy is the GPU machine's own.
"$PYV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps -d "$DIR/wheel" \
    pytest==9.2.0 pluggy iniconfig packaging pygments
# and the two it needs before Python 3.11, as pure-Python wheels (any GPU machine's CPython).
"$PYV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps -d "$DIR/wheel" \
    --platform any --implementation py --python-version 3.10 exceptiongroup tomli
git rev-parse HEAD >"$DIR/COMMIT"
grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
du -sh "$DIR"
ls -la "$DIR/bin" "$DIR/lib"
echo "copy \"$DIR\" into the repository on the GPU machine and run there: GPU_PREBUILT=$DIR bash .ci/gpu.sh"
