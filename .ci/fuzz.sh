#!/usr/bin/env bash
# The fuzz targets of fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer), each for a bounded
# time on a copy of the committed seed corpus (fuzz/corpus/<target>/), so the tree stays clean.
#
#   bash .ci/fuzz.sh                              every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh             longer
#   FUZZ_RUNS=1000000 bash .ci/fuzz.sh            a number of executions per target instead
#   bash .ci/fuzz.sh capi_args params_load        some targets only
#
# Fails on any finding: a panic, an invalid memory access, a leak, an allocation of more than
# FUZZ_MALLOC_LIMIT_MB (default 64: no input of at most 16 KB may ask for more) or a resident size
# over 2 GB, an input that runs longer than 10 s. The input that found it is left in
# fuzz/artifacts/<target>/ (ignored by git); `cargo +nightly fuzz run <target> <file>` replays it.
# New inputs that the runs discover go to a temporary directory, not into the tree; to keep some,
# `cargo +nightly fuzz cmin <target>` on a copy, then commit a few small files.
#
# Needs a nightly toolchain (libFuzzer's instrumentation and AddressSanitizer are nightly-only);
# where none can be installed this prints so and exits 0 without fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
runs=${FUZZ_RUNS:-}
malloc_limit=${FUZZ_MALLOC_LIMIT_MB:-64}
all_targets=(params_load case_load config_build seq_shape capi_args onnx_load capi_options)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

skip() {
    echo "######################################################################"
    echo "## FUZZING SKIPPED: $1"
    echo "######################################################################"
    exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (minimal profile)"
    rustup toolchain install nightly --profile minimal || skip "no nightly toolchain could be installed"
    cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain could be installed"
fi
# -Zbuild-std (cargo-fuzz's default) needs the standard library's sources.
if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src --toolchain nightly
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo +nightly --version
cargo fuzz --version

# Optimised, with overflow checks and debug assertions: an overflow is a finding too.
build_flags=(-O --debug-assertions)
echo "== building the fuzz targets"
cargo +nightly fuzz build "${build_flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -r "fuzz/corpus/$t/." "$work/$t/"
    fi
    dict=()
    case $t in params_load | case_load) dict=(-dict=fuzz/safetensors.dict) ;; esac
    limit=(-max_total_time="$seconds")
    [ -n "$runs" ] && limit=(-runs="$runs")
    if [ -n "$runs" ]; then label="$runs executions"; else label="$seconds s"; fi
    echo "== fuzzing $t ($label)"
    start=$(date +%s)
    set +e
    # -max_len 16384: the loader seeds are up to 10 KB. -timeout: seconds per input.
    LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
    cargo +nightly fuzz run "${build_flags[@]}" "$t" "$work/$t" -- \
        "${limit[@]}" "${dict[@]}" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" \
        -print_final_stats=1 2>&1 | tee "$work/$t.log" | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)'
    status=${PIPESTATUS[0]}
    set -e
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
    if [ "$status" -ne 0 ]; then
        failed=1
        summary+=("$t: FAILED (exit $status) after ${execs:-?} executions, ${elapsed} s; input in fuzz/artifacts/$t/")
    else
        summary+=("$t: ${execs:-?} executions in ${elapsed} s, no finding")
    fi
done

echo "== fuzzing summary"
printf '  %s\n' "${summary[@]}"
exit $failed
