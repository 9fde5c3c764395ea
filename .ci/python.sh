#!/usr/bin/env bash
# CI: the Python package (python/): builds the wheel with maturin, installs it into a venv of its
# own and runs python/tests with pytest. Needs the Rust toolchain, gcc and Python 3 with venv and
# pip (3.11 here; the wheel is abi3, for every CPython >= 3.9); downloads maturin, numpy, pytest,
# torch (CPU) and matplotlib from PyPI. Any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=target/venv-python

echo "== python: venv ($VENV) with maturin, numpy, pytest, torch, matplotlib"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" --version
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# Pinned: the versions the package and its tests were last checked with (the wheel itself asks
# only numpy>=1.26).
"$VENV/bin/python" -m pip install --quiet maturin==1.16.0 numpy==2.4.6 pytest==9.2.0 torch==2.15.0 matplotlib==3.11.2

echo "== python: formatting and lints of the extension crate (warnings are errors)"
cargo fmt --all --check
PYO3_PYTHON="$VENV/bin/python" cargo clippy -p rnn-kernels-python --all-targets -- -D warnings
# The wheel with the CUDA backend (backend="cuda"; .ci/gpu-pack.sh builds it): without nvcc the
# library's PTX is left empty, which is enough for the lints.
PYO3_PYTHON="$VENV/bin/python" cargo clippy -p rnn-kernels-python --all-targets --features cuda -- -D warnings

echo "== python: build the wheel (release, the workspace's target directory)"
rm -f target/wheels/rnn_kernels-*.whl
"$VENV/bin/maturin" build --release -m python/Cargo.toml --interpreter "$VENV/bin/python"
wheel=$(ls target/wheels/rnn_kernels-*.whl)
echo "$wheel"

echo "== python: install the wheel"
"$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"

echo "== python: tests"
# `import rnn_kernels` is the installed wheel's (the sources are under python/, not on the path);
# CI, when set, reaches the tests with the rest of the environment.
"$VENV/bin/python" -m pytest -q python/tests
