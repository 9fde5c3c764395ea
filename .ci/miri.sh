#!/usr/bin/env bash
# The unit tests that exercise the library's unsafe host code, under Miri (undefined behaviour,
# out-of-bounds and use-after-free accesses, data races, aliasing violations):
#   - the scalar ISA's cell kernels through their checked entry points (isa/scalar.rs with the
#     harness of isa/cell_tests.rs: sub-slices of larger buffers, row splits of isa/rows.rs);
#   - the ISA-neutral SGEMM (gemm/sgemm.rs: the loop nest, the packing of A and B, the skinny
#     driver) with the weights packed by gemm/packed.rs, run with a portable register tile
#     (gemm/portable_tile_tests.rs), serial and split across a team;
#   - the thread team (gemm/team.rs) and the portable GEMM's split (gemm/mod.rs: raw output
#     views written by several threads);
#   - the fallible allocation of error.rs (try_zeroed), the reserve's workspace, the affinity plan;
#   - the C ABI's argument parser (capi/src/args.rs: raw pointers checked, then made slices) and
#     its status guard.
# Tests Miri cannot run are marked `#[cfg_attr(miri, ignore = "why")]` and listed as ignored
# with that reason: the AVX2/AVX-512/NEON kernels (SIMD intrinsics; no SIMD ISA is detected
# under Miri) and an allocation larger than memory. Under Miri the tests use smaller sizes
# (`cfg!(miri)`), and the GEMM's threshold for splitting across threads is lower so that the
# small products still run on several threads.
#
# Aliasing model: Miri's default, Stacked Borrows (the stricter one). No test here runs on
# rayon's pool (whose crossbeam-epoch internals Stacked Borrows reports as known upstream
# patterns): the thread team is driven by scoped std threads (`gemm::with_par`), the same code
# path a `Cpu` runs on its pool. MIRIFLAGS adds to the flags below (e.g.
# MIRIFLAGS=-Zmiri-tree-borrows for the other model).
#
# Needs a nightly toolchain with the miri component; where none can be installed this says so
# and exits 0. Takes about MIRI_TIMEOUT (default 900) seconds at most.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "######################################################################"
    echo "## MIRI SKIPPED: $1"
    echo "######################################################################"
    exit 0
}

if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain with Miri"
    rustup toolchain install nightly --profile minimal --component miri,rust-src || skip "no nightly toolchain with Miri could be installed"
    cargo +nightly miri --version >/dev/null 2>&1 || skip "no nightly toolchain with Miri could be installed"
fi
cargo +nightly miri --version
cargo +nightly miri setup

# -Zmiri-disable-isolation: the affinity plan reads the allowed CPUs, the CPU backend reads
# RNN_KERNELS_ISA from the environment. -Zmiri-deterministic-floats: Miri otherwise adds a
# random error of a few ULP to each float library call (tanh, exp: their precision is not
# specified), and the scalar cell kernels' tests require bit-identity with the reference
# kernels, which call the same functions.
export MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-deterministic-floats ${MIRIFLAGS:-}"
deadline=${MIRI_TIMEOUT:-900}
start=$(date +%s)
run() {
    local left=$((deadline - ($(date +%s) - start)))
    [ "$left" -gt 0 ] || { echo "Miri: out of time (MIRI_TIMEOUT=$deadline s)"; exit 1; }
    echo "== cargo +nightly miri test $* (at most $left s)"
    timeout "$left" cargo +nightly miri test "$@" -- -Z unstable-options --report-time
}
run --lib -p rnn-kernels
run --lib -p rnn-kernels-capi
echo "== Miri: done in $(($(date +%s) - start)) s"
