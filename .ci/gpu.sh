#!/usr/bin/env bash
# Everything issue #5 owes on a machine with an NVIDIA GPU, in one run, in the order of value
# (so a run cut short by a time limit still leaves the most important results):
#
# 1. the CUDA tests with the GPU required (RNN_KERNELS_REQUIRE_CUDA=1), the driver's unit tests
#    and the C ABI's tests with --features cuda;
# 2. `verify --backend cuda` on every PyTorch fixture (f32, f16, bf16) and on the cell options'
#    cases (f32); the Python package's `backend="cuda"` (python/tests/test_cuda.py, from the
#    wheel gpu-pack.sh builds);
# 3. the cuDNN table: benches/compare.py --configs cuda --ours cuda --peers pytorch-cuda
#    (needs python3 with torch; GPU_ROUNDS rounds, default 3), and the attention row
#    (benches/attention.py --device cuda);
# 4. compute-sanitizer memcheck on the CUDA test binary and racecheck on its small persistent and
#    layer-norm tests (when compute-sanitizer is on PATH or under CUDA_HOME): the slowest steps,
#    so after the table;
# 5. the cuDNN table with f16 storage;
# 6. dropout between layers against cuDNN's (3-layer LSTM and GRU, train, with and without);
# 7. with GPU_PROFILE=1 and ncu found: each kernel's time (ncu --print-summary per-kernel) in ours
#    and in cuDNN on the f16 and f32 LSTM inference row lstm-1024-1024-64-25.
#
# On a GPU machine without a Rust toolchain: build the programs beforehand where cargo is, with
# `bash .ci/gpu-pack.sh gpu-pack`, copy that folder into the repository on the GPU machine, and
# run `GPU_PREBUILT=gpu-pack bash .ci/gpu.sh` there. Without GPU_PREBUILT it builds with cargo.
#
# Logs go to $GPU_OUT (default target/gpu-run), one file per step, and a summary to
# $GPU_OUT/summary.txt. A step that fails is recorded and the script goes on; the exit status is
# non-zero if any step failed. Needs nvcc (NVCC, CUDA_HOME or PATH) to build the PTX: the build is
# run with RNN_KERNELS_REQUIRE_NVCC=1 so a build without kernels cannot pass unnoticed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${GPU_OUT:-target/gpu-run}
ROUNDS=${GPU_ROUNDS:-3}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
failed=0

# GPU_STEP_TIMEOUT (seconds, default none) bounds each step, GPU_SAN_TIMEOUT each sanitizer step
# (default GPU_STEP_TIMEOUT): a step cut short is recorded as failed with rc=124 and its log so far.
STEP_TIMEOUT=${GPU_STEP_TIMEOUT:-0}
SAN_TIMEOUT=${GPU_SAN_TIMEOUT:-$STEP_TIMEOUT}
step() { # step NAME CMD...: runs CMD, logs to $OUT/NAME.log, records the result
    local name=$1
    shift
    local t0=$SECONDS
    echo "== $name: $*"
    local limit=$STEP_TIMEOUT
    case $name in memcheck | racecheck) limit=$SAN_TIMEOUT ;; esac
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -5 "$OUT/$name.log"
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] || failed=1
}

nvidia-smi -L | tee "$OUT/gpu.txt" || { echo "no GPU: nvidia-smi -L failed"; exit 1; }
export RNN_KERNELS_REQUIRE_CUDA=1
export RNN_KERNELS_REQUIRE_NVCC=1

# cuBLAS: the backend loads libcublas.so(.13) at run time. On the GPU machines it comes with
# PyTorch's pip packages (site-packages/nvidia/...), which are not on the loader's path.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    CUBLAS=$( { python3 -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null; ls -d /usr/local/cuda*/lib64 2>/dev/null; } |
        while read -r d; do find "$d" -name 'libcublas.so*' 2>/dev/null; done | head -1)
    if [ -n "$CUBLAS" ]; then
        export LD_LIBRARY_PATH="$(dirname "$CUBLAS")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS: $CUBLAS" | tee -a "$OUT/summary.txt"
    else
        echo "cuBLAS not found (libcublas.so*): the CUDA backend will not start" | tee -a "$OUT/summary.txt"
    fi
fi

# The programs each step runs: built here with cargo, or taken from GPU_PREBUILT (made by
# .ci/gpu-pack.sh on a machine with cargo: the GPU machines have none).
PRE=${GPU_PREBUILT:-}
if [ -n "$PRE" ]; then
    PRE=$(cd "$PRE" && pwd)
    echo "== prebuilt binaries from $PRE (commit $(cat "$PRE/COMMIT" 2>/dev/null || echo '?'), this tree $(git rev-parse HEAD 2>/dev/null || echo '?'))"
    export RNN_KERNELS_FIXTURES_DIR=$PWD/tests/fixtures RNN_KERNELS_CAPI_LIB_DIR=$PRE/lib
    T_CUDA=("$PRE/bin/test-cuda")
    T_LIB=("$PRE/bin/test-lib")
    T_CAPI=("$PRE/bin/test-capi-device")
    T_CAPI_ATTN=("$PRE/bin/test-capi-attention")
    VERIFY=("$PRE/bin/verify")
    BENCH=(--bin "$PRE/bin/bench")
else
    step build cargo build --release --features cuda --all-targets
    step build-capi cargo build --release -p rnn-kernels-capi --features cuda --all-targets
    T_CUDA=(cargo test --release --features cuda --test cuda --)
    T_LIB=(cargo test --release --features cuda --lib --)
    T_CAPI=(cargo test --release -p rnn-kernels-capi --features cuda --)
    T_CAPI_ATTN=(cargo test --release -p rnn-kernels-capi --features cuda --test steps_attention --)
    VERIFY=(cargo run --release --features cuda --example verify --)
    BENCH=()
fi

step test-cuda "${T_CUDA[@]}" --nocapture
step test-lib "${T_LIB[@]}" backend::cuda
step test-capi "${T_CAPI[@]}" --nocapture
# The C ABI's attention on "cuda" against the Rust API's CudaHost, bit for bit.
step test-capi-attention "${T_CAPI_ATTN[@]}" attention_matches_the_rust_api --nocapture
step verify "${VERIFY[@]}" --backend cuda tests/fixtures/*.safetensors
# The Python package's backend="cuda" (python/tests/test_cuda.py), from the wheel in the pack, in
# a venv that sees this machine's numpy; RNN_KERNELS_REQUIRE_CUDA=1 makes a missing GPU a failure.
if [ -n "$PRE" ] && ls "$PRE"/wheel/rnn_kernels-*.whl >/dev/null 2>&1; then
    PYV=$OUT/venv-python
    step python-venv bash -c "python3 -m venv --system-site-packages '$PYV' && '$PYV/bin/python' -m pip install --quiet --no-index \
        --find-links '$PRE/wheel' rnn_kernels pytest"
    step python-cuda "$PYV/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_cuda.py
else
    echo "no wheel in the pack (GPU_PREBUILT made by .ci/gpu-pack.sh): python/tests/test_cuda.py was not run" | tee -a "$OUT/summary.txt"
fi
# The cell options' cases: PyTorch's Cho GRU, onnxruntime's ONNX options, Haste's layer norm, dropout,
# zoneout, recurrent and input dropout (f32).
step verify-options "${VERIFY[@]}" --backend cuda tests/fixtures/gru_options/*.safetensors tests/fixtures/onnx/*.safetensors \
    tests/fixtures/layer_norm/*.safetensors tests/fixtures/dropout/*.safetensors tests/fixtures/zoneout/*.safetensors \
    tests/fixtures/recurrent_dropout/*.safetensors tests/fixtures/input_dropout/*.safetensors
for dtype in f16 bf16; do
    step "verify-$dtype" "${VERIFY[@]}" --backend cuda --dtype "$dtype" tests/fixtures/*.safetensors
done

if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    HAVE_TORCH_CUDA=1
    step compare python3 benches/compare.py --configs cuda --ours cuda --peers pytorch-cuda --rounds "$ROUNDS" \
        "${BENCH[@]}" --json "$OUT/compare.jsonl"
    # Issue 18's attention row on the GPU (Luong general, B 64, T_enc = T_dec = 50, H 512): our
    # device-buffer calls against PyTorch's CUDA tensors, all lengths S and spread lengths.
    ATTN_BIN=()
    [ -n "$PRE" ] && ATTN_BIN=(--bin "$PRE/bin/attention_bench")
    step attention-cuda python3 benches/attention.py --device cuda --rounds "$ROUNDS" "${ATTN_BIN[@]}"
    step attention-cuda-varlen python3 benches/attention.py --device cuda --rounds "$ROUNDS" --varlen "${ATTN_BIN[@]}"
else
    HAVE_TORCH_CUDA=0
    echo "python3 with CUDA torch not found: the cuDNN table was not run" | tee -a "$OUT/summary.txt"
    failed=1
fi

SAN=$(command -v compute-sanitizer || true)
[ -z "$SAN" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SAN=$CUDA_HOME/bin/compute-sanitizer
if [ -n "$SAN" ]; then
    # The test binary of tests/cuda.rs (the prebuilt one, or the newest one cargo built).
    if [ -n "$PRE" ]; then BIN=$PRE/bin/test-cuda; else BIN=$(ls -t target/release/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -1); fi
    step memcheck "$SAN" --tool memcheck --error-exitcode 1 "$BIN" --test-threads 1
    # racecheck on the tests small enough for it (the persistent kernels at small sizes, layer
    # norm's block reductions): the whole binary takes far longer under it.
    step racecheck "$SAN" --tool racecheck --error-exitcode 1 "$BIN" --test-threads 1 for_sanitizers cuda_layer_norm
else
    echo "compute-sanitizer not found: memcheck and racecheck not run" | tee -a "$OUT/summary.txt"
    failed=1
fi

if [ "$HAVE_TORCH_CUDA" = 1 ]; then
    step compare-f16 python3 benches/compare.py --configs cuda --ours cuda --peers pytorch-cuda --rounds "$ROUNDS" \
        --dtype f16 "${BENCH[@]}" --json "$OUT/compare-f16.jsonl"
fi

if [ "$HAVE_TORCH_CUDA" = 1 ]; then
    step compare-dropout python3 benches/compare.py --ours cuda --peers pytorch-cuda --rounds "$ROUNDS" "${BENCH[@]}" \
        --configs lstm-1024-1024-64-25-l3:train,lstm-1024-1024-64-25-l3-drop0.3:train,gru-1024-1024-64-25-l3:train,gru-1024-1024-64-25-l3-drop0.3:train \
        --json "$OUT/compare-dropout.jsonl"
fi

NCU=$(command -v ncu || true)
[ -z "$NCU" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/ncu" ] && NCU=$CUDA_HOME/bin/ncu
if [ "${GPU_PROFILE:-0}" = 1 ] && [ -n "$NCU" ]; then
    ROW=(--cell lstm --input 1024 --hidden 1024 --batch 64 --steps 25 --mode inference)
    if [ -n "$PRE" ]; then OURS=("$PRE/bin/bench"); else OURS=(cargo run --release --features cuda --example bench --); fi
    for dtype in f16 f32; do
        step "profile-ours-$dtype" "$NCU" --metrics gpu__time_duration.sum --print-summary per-kernel \
            "${OURS[@]}" --backend cuda --dtype "$dtype" "${ROW[@]}" --reps 2 --warmup 1
        [ "$HAVE_TORCH_CUDA" = 1 ] && step "profile-cudnn-$dtype" "$NCU" --metrics gpu__time_duration.sum --print-summary per-kernel \
            python3 benches/peers.py --impl pytorch-cuda --dtype "$dtype" "${ROW[@]}" --reps 2 --warmup 1
    done
fi

echo "== summary"
cat "$OUT/summary.txt"
exit $failed
