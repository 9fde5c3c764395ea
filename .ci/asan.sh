#!/usr/bin/env bash
# CI, the C ABI under memory checkers: the two C programs of capi/tests/c (capi_test.c, the
# whole API compared bit for bit with the Rust API; capi_hardening.c, every length checked
# before its buffer is touched, absurd sizes, overlaps, malformed files, every status code,
# 16 threads on one model) run through capi/tests/c_program.rs, on the reference backend and
# the CPU backend with 1 and 2 threads:
#
#   1. under valgrind (memcheck): any invalid read or write, use of uninitialised memory or
#      definite leak, in the C programs or in the library's Rust code, fails the run;
#   2. compiled with AddressSanitizer and UndefinedBehaviorSanitizer (the library's allocations
#      go through ASan's allocator too, and libc's memory functions are checked).
#
# Before each, a canary (a C program that reads past a malloc'd block) must be reported by
# the checker, so a checker that does not run cannot pass silently.
#
# Idempotent: installs valgrind and a C compiler if missing (Debian packages). Exits non-zero
# on any report. About 1.5 minutes on 2 cores once the library is built (valgrind is most of it).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tools"
missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
valgrind --version
cc --version | head -n1

SAN_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
# allocator_may_return_null: ASan's malloc returns NULL for a size it cannot serve, like libc's
# (by default it aborts the process, which is what the library must not do).
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"

echo "== canaries: each checker reports a read past a malloc'd block"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/canary.c" <<'EOF'
#include <stdlib.h>
int main(void) {
    volatile int* p = malloc(4 * sizeof(int));
    int past = p[4];
    free((void*)p);
    return past == 12345;
}
EOF
cc -O0 -g -o "$work/canary" "$work/canary.c"
if $VALGRIND "$work/canary" >/dev/null 2>&1; then
    echo "valgrind did not report the canary's invalid read" >&2
    exit 1
fi
# shellcheck disable=SC2086
cc -O0 $SAN_CFLAGS -o "$work/canary_asan" "$work/canary.c"
if "$work/canary_asan" >/dev/null 2>&1; then
    echo "AddressSanitizer did not report the canary's invalid read" >&2
    exit 1
fi
echo "both reported"

# valgrind's virtual CPU has no AVX-512: the C programs under valgrind would run the AVX2
# kernels while the Rust side of the bit-for-bit comparison ran AVX-512 ones. Forcing the ISA
# makes both run the same kernels.
case "$(uname -m)" in
    x86_64) if grep -qw avx2 /proc/cpuinfo; then isa=avx2; else isa=scalar; fi ;;
    aarch64) isa=neon ;;
    *) isa=scalar ;;
esac

echo "== build"
cargo build --release -p rnn-kernels-capi --lib
cargo test --release -p rnn-kernels-capi --test c_program --no-run

echo "== valgrind (RNN_KERNELS_ISA=$isa)"
RNN_KERNELS_ISA=$isa RNN_KERNELS_CAPI_RUNNER="$VALGRIND" \
    cargo test --release -p rnn-kernels-capi --test c_program -- --test-threads=1

echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
RNN_KERNELS_CAPI_CFLAGS="$SAN_CFLAGS" cargo test --release -p rnn-kernels-capi --test c_program -- --test-threads=1

echo "== the C ABI is clean under valgrind and ASan/UBSan"
