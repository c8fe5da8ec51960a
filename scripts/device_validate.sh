#!/usr/bin/env bash
# Everything prepared without a GPU in session 2, checked on the GPU machine in two calls of under
# 10 minutes each (PART=1, then PART=2). Writes under $OUT; prints one summary line per check.
#   PART=1: the full selftest (ops, delta rule with every decode variant), the GPU model against
#           the CPU (--filter model), GPU decoding (--filter decode_model), the graph selftest rows,
#           and the kernel bench with the per-stage breakdown (chunk v3, decode v3).
#   PART=2: training checks (resume / recompute / graph bit for bit, CPU curve), the 1.3B step
#           eager / recompute / graph with the op breakdown, and GPU vs CPU greedy generation.
# Usage: GDN_BIN=path/to/gdn OUT=folder PART=1 bash scripts/device_validate.sh
set -u
. "$(dirname "$0")/device_env.sh"
case "${PART:-1}" in
1)
  timeout 200 "$B" selftest --device cuda --json "$OUT/selftest.json" > "$OUT/selftest.log" 2>&1
  echo "selftest (ops, delta rule, decode variants): exit $?; $(grep -c '| NO ' "$OUT/selftest.log") rows over tolerance"
  for f in model decode_model graph; do
    timeout 120 "$B" selftest --device cuda --filter "$f" --json "$OUT/selftest_$f.json" > "$OUT/selftest_$f.log" 2>&1
    echo "selftest --filter $f: exit $?; $(grep -c '| NO ' "$OUT/selftest_$f.log") rows over tolerance"
  done
  timeout 200 "$B" bench kernels --breakdown --out "$OUT" > "$OUT/bench_kernels.log" 2>&1
  echo "bench kernels: exit $?"; grep -E '^\| [0-9]' "$OUT/bench_kernels.log" | head -12
  ;;
2)
  SKIP_FLA=1 bash "$(dirname "$0")/device_train_check.sh" > "$OUT/train_check.log" 2>&1
  echo "train check: exit $?"; grep -E '"identical"|tokens/s' "$OUT/train_check.log" | cut -c1-220
  W=/tmp/gdn-validate-gen
  rm -rf "$W" && mkdir -p "$W"
  cat src/*.rs src/*/*.rs > "$W/corpus.txt"
  timeout 120 "$B" train --data "$W/corpus.txt" --preset small --steps 60 --device cuda --out "$W/run" --quiet
  for d in cuda cpu; do
    timeout 60 "$B" generate --checkpoint "$W/run/checkpoint" --prompt "fn main() {" --max-tokens 64 \
      --temperature 0 --device "$d" > "$OUT/generate_$d.txt" 2> "$OUT/generate_$d.err"
  done
  if cmp -s "$OUT/generate_cuda.txt" "$OUT/generate_cpu.txt"; then echo "generate: GPU greedy = CPU greedy"
  else echo "generate: GPU and CPU greedy differ (bf16 near-ties possible): see generate_*.txt"; fi
  ;;
esac
