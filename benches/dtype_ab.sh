#!/usr/bin/env bash
# 16-bit storage on the CPU against f32, and against PyTorch in the same 16-bit type: each row of
# README's CPU table run as ours f32, ours bf16, ours f16 and PyTorch bf16 (`module.to(bfloat16)`,
# oneDNN where it has bf16 kernels), alternating, ROUNDS times; prints per row the median of
# each and the ratios ours bf16 / ours f32 and ours bf16 / PyTorch bf16 (< 1: ours faster).
#
#   bash benches/dtype_ab.sh [THREADS (2)] [ROUNDS (3)]
#
# PyTorch is taken from $PYTHON (default python3); without torch its column is empty.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-3}
py=${PYTHON:-python3}
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
)
have_torch=0
"$py" -c "import torch" 2>/dev/null && have_torch=1
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $threads threads, $rounds rounds, $(date -u +%F)"
echo "# ms per call (median of rounds); bf16/f32 and bf16/torch < 1: ours bf16 faster"
median_of() { sed -n 's/.*"median_ms":\([0-9.]*\).*/\1/p' | head -1; }
for row in "${rows[@]}"; do
  read -r cell input hidden batch steps mode <<<"$row"
  f32=() bf16=() f16=() torch=()
  flags=(--cell "$cell" --input "$input" --hidden "$hidden" --batch "$batch" --steps "$steps" --mode "$mode" --threads "$threads")
  for ((r = 0; r < rounds; r++)); do
    for dtype in f32 bf16 f16; do
      ms=$("$bench" --backend cpu "${flags[@]}" --reps 7 --warmup 1 --dtype "$dtype" 2>/dev/null | median_of)
      case $dtype in f32) f32+=("$ms") ;; bf16) bf16+=("$ms") ;; f16) f16+=("$ms") ;; esac
    done
    if [ "$have_torch" = 1 ]; then
      ms=$("$py" benches/peers.py --impl pytorch-cpu "${flags[@]}" --reps 5 --warmup 1 --dtype bf16 2>/dev/null | median_of || true)
      torch+=("${ms:-nan}")
    fi
  done
  python3 - "$row" "${f32[*]}" "${bf16[*]}" "${f16[*]}" "${torch[*]:-}" <<'EOF'
import math, statistics, sys
row = sys.argv[1]
med = lambda s: statistics.median(float(v) for v in s.split()) if s.strip() else math.nan
f32, bf16, f16, torch = (med(s) for s in sys.argv[2:6])
print(f"{row:36s} f32 {f32:9.3f}  bf16 {bf16:9.3f}  f16 {f16:9.3f}  torch-bf16 {torch:9.3f}  "
      f"bf16/f32 {bf16 / f32:.3f}  f16/f32 {f16 / f32:.3f}  bf16/torch {bf16 / torch:.3f}")
EOF
done
