#!/usr/bin/env bash
# What a training step costs with each regulariser, against the same step without: README's
# `lstm-512-512-64-100 train` row (and a 2-layer stack for dropout between layers), the plain
# step and each variant alternating in every round, ROUNDS rounds per thread count; prints per
# variant the median over rounds of variant / plain (each round's plain run is the one just
# before), with the range.
#
#   bash benches/regularisers_ab.sh [ROUNDS (6)] [THREADS... (2 1)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}
shift || true
threads=("$@")
[ ${#threads[@]} -eq 0 ] && threads=(2 1)
cargo build --release --example bench >/dev/null 2>&1
bench=target/release/examples/bench
variants=(
  "--layers 1|--layers 1 --zoneout 0.1"
  "--layers 1|--layers 1 --zoneout 0.1 --zoneout-cell 0.1"
  "--layers 1|--layers 1 --recurrent-dropout 0.3"
  "--layers 1|--layers 1 --input-dropout 0.3"
  "--layers 2|--layers 2 --dropout 0.3"
)
ms() {
  # shellcheck disable=SC2086
  "$bench" --backend cpu --cell lstm --input 512 --hidden 512 --batch 64 --steps 100 --mode train \
    --reps 5 --warmup 1 --threads "$1" $2 2>/dev/null | sed -n 's/.*"median_ms":\([0-9.]*\).*/\1/p'
}
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $rounds rounds, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
for t in "${threads[@]}"; do
  for v in "${variants[@]}"; do
    plain=${v%%|*} var=${v#*|}
    ratios=() plains=()
    for ((r = 0; r < rounds; r++)); do
      p=$(ms "$t" "$plain")
      q=$(ms "$t" "$var")
      plains+=("$p")
      ratios+=("$(python3 -c "print($q / $p)")")
    done
    python3 - "$t" "$var" "${ratios[*]}" "${plains[*]}" <<'PY'
import statistics, sys
t, var, ratios, plains = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3].split()], [float(v) for v in sys.argv[4].split()]
print(f"{t} threads  {var:40s} variant/plain {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]  plain {min(plains):.1f}-{max(plains):.1f} ms")
PY
  done
done
