#!/usr/bin/env bash
# The CPU backend's tuner against its fixed strategy: each row of README's CPU table (and a
# small one) run with `--tune off` and `--tune auto`, alternating, ROUNDS times; prints per
# row the median of each, their ratio (auto/off, < 1: the tuner's choice is faster), and the
# tuner's choices with the time it spent (from the first `auto` run's stderr).
#
#   bash benches/tuner_ab.sh [THREADS (2)] [ROUNDS (3)] [DTYPE: f32 (default), bf16 or f16]
#
# Each `auto` run is a new process, so each round tunes again.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-3}
dtype=${3:-f32}
cargo build --release --example bench >/dev/null 2>&1
bench=target/release/examples/bench
rows=(
  "lstm 256 256 1 150 inference"
  "lstm 512 512 64 100 inference"
  "lstm 512 512 64 100 train"
  "gru 512 512 64 100 inference"
  "gru 512 512 64 100 train"
  "gru 1024 1024 4 375 inference"
  "rnn_relu 1760 1760 16 50 inference"
  "rnn_relu 1760 1760 16 50 train"
  "lstm 128 128 64 30 train"
)
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $threads threads, $rounds rounds, $dtype, $(date -u +%F)"
for row in "${rows[@]}"; do
  read -r cell input hidden batch steps mode <<<"$row"
  off=() auto=()
  for ((r = 0; r < rounds; r++)); do
    for tune in off auto; do
      ms=$("$bench" --backend cpu --cell "$cell" --input "$input" --hidden "$hidden" --batch "$batch" --steps "$steps" \
        --mode "$mode" --threads "$threads" --reps 7 --warmup 1 --dtype "$dtype" --tune "$tune" 2>/tmp/tuner_ab.err |
        sed -n 's/.*"median_ms":\([0-9.]*\).*/\1/p')
      if [ "$tune" = off ]; then off+=("$ms"); else
        auto+=("$ms")
        [ "$r" = 0 ] && choices=$(sed 's/^/    /' /tmp/tuner_ab.err)
      fi
    done
  done
  python3 - "$row" "${off[*]}" "${auto[*]}" <<'EOF'
import statistics, sys
row, off, auto = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
o, a = statistics.median(off), statistics.median(auto)
print(f"{row:36s} off {o:9.3f} ms  auto {a:9.3f} ms  auto/off {a / o:.3f}")
EOF
  echo "$choices"
done
