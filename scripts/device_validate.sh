#!/usr/bin/env bash
# Everything prepared without a GPU in session 2, checked on the GPU machine in two calls of under
# 10 minutes each (PART=1, then PART=2). Writes under $OUT; prints one summary line per check.
#   PART=1: the full selftest (ops, delta rule with every decode variant), the GPU model against
#           the CPU (--filter model), GPU decoding (--filter decode_model), the graph selftest rows,
#           and the kernel bench with the per-stage breakdown (chunk v3, decode v3).
#   PART=2: training checks (resume / recompute / graph bit for bit, CPU curve), the 1.3B step
#           eager / recompute / graph with the op breakdown, and GPU vs CPU greedy generation.
#   PART=3: the closing kernel measurement: scripts/device_check.sh (full selftest, bench kernels,
#           FLA's fla_ops.py in the same call, the ratio table) and the per-stage breakdown.
#   PART=4: the 1.3B training step (plain, CUDA graph, op breakdown, memory) beside FLA's
#           fla_train.py 1.3B in the same call (Triton compiles for minutes: ~7 min in all).
# Only a few files come back from a device call: everything is packed into $OUT/part$PART.tgz.
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
3)
  GDN_BIN="$B" OUT="$OUT" bash "$(dirname "$0")/device_check.sh" > /dev/null 2>&1
  echo "device_check: exit $?"; sed -n '/=== .*comparison/,/=== .*done/p' "$OUT/device_check.log" | head -40
  timeout 120 "$B" bench kernels --breakdown --out "$OUT/breakdown" > "$OUT/breakdown.log" 2>&1
  echo "breakdown: exit $?"
  ;;
4)
  for mode in "" "--graph"; do
    timeout 150 "$B" bench train $mode --out "$OUT/train$mode" 2>&1 | grep tokens/s
  done
  timeout 120 "$B" bench train --breakdown --out "$OUT/breakdown" > "$OUT/breakdown.log" 2>&1
  echo "breakdown: exit $?"
  PEER=$(for d in .peer/bench ../shared/bench shared/bench; do [ -f "$d/fla_train.py" ] && echo "$d" && break; done)
  if [ -n "$PEER" ] && ls .whl/*.whl > /dev/null 2>&1; then
    timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    (export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1; P=$(realpath "$PEER"); cd "$OUT" &&
      timeout "${FLA_TIMEOUT:-420}" python3 "$P/fla_train.py" 1.3B > fla_train.log 2>&1)
    echo "fla_train: exit $?"; grep -v Warning "$OUT/fla_train.log" | tail -4
  else echo "fla_train: skipped (no .peer/bench/fla_train.py or .whl)"; fi
  ;;
esac
(cd "$OUT" && tar czf "/tmp/part${PART:-1}.tgz" . && find . -mindepth 1 -delete && mv "/tmp/part${PART:-1}.tgz" .)
