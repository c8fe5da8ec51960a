#!/usr/bin/env bash
# GPU training checks on the GPU machine: GPU training runs agree with themselves across a resume
# (also with --fp8) and with --recompute, --save auto / all and --graph (bit for bit) and with the CPU run of the same config (loss curves); the whole
# model's GPU gradients against the CPU (selftest --filter model); training throughput and memory of
# FLA's 1.3B config at T 4096 × 8 beside the peer's fla_train.py in the same call.
# Usage: GDN_BIN=path/to/gdn OUT=folder bash scripts/device_train_check.sh   (FLA wheels in .whl/,
# the peer's fla_train.py in .peer/bench/ or ../shared/bench/)
set -u
. "$(dirname "$0")/device_env.sh"
W=/tmp/gdn-train-check
rm -rf "$W" && mkdir -p "$W"
cat src/*.rs src/*/*.rs > "$W/corpus.txt"
c=(--data "$W/corpus.txt" --preset small --steps 40 --eval-every 10 --checkpoint-every 20 --quiet)
# The CPU run of the same config, on the host cores while the GPU runs.
(timeout 300 "$B" train "${c[@]}" --device cpu --out "$W/cpu" > "$OUT/train_cpu.log" 2>&1) &
cpu=$!
timeout 120 "$B" train "${c[@]}" --device cuda --out "$W/gpu" 2>&1 | tail -2
timeout 120 "$B" train "${c[@]}" --device cuda --out "$W/split" --stop-after 20 2>&1 | tail -1
timeout 120 "$B" train --resume --out "$W/split" --device cuda --quiet 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --recompute --out "$W/recompute" 2>&1 | tail -1
# FP8: a run stopped and resumed continues with the scales it saved (amax histories): bit for bit.
timeout 120 "$B" train "${c[@]}" --device cuda --fp8 --out "$W/fp8" 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --fp8 --out "$W/fp8_split" --stop-after 20 2>&1 | tail -1
timeout 120 "$B" train --resume --out "$W/fp8_split" --device cuda --fp8 --quiet 2>&1 | tail -1
# Save policy (branch save-policy): every mode must give the same losses bit for bit.
timeout 120 "$B" train "${c[@]}" --device cuda --save auto --out "$W/save_auto" 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --save all --out "$W/save_all" 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --save all --graph --out "$W/save_all_graph" 2>&1 | tail -1
# CUDA-graph replay of each micro-batch (one eager, one captured, then replays) against eager;
# --grad-accum 2: two micro-batches per step through one graph, gradients accumulated.
timeout 120 "$B" train "${c[@]}" --device cuda --graph --out "$W/graph" 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --grad-accum 2 --out "$W/accum" 2>&1 | tail -1
timeout 120 "$B" train "${c[@]}" --device cuda --grad-accum 2 --graph --out "$W/accum_graph" 2>&1 | tail -1
wait $cpu
python3 scripts/compare_runs.py "$W/gpu" "$W/split" "$W/recompute" "$W/save_auto" "$W/save_all" "$W/save_all_graph" "$W/graph" "$W/cpu" | tee "$OUT/train_check.jsonl"
python3 scripts/compare_runs.py "$W/accum" "$W/accum_graph" | tee -a "$OUT/train_check.jsonl"
python3 scripts/compare_runs.py "$W/fp8" "$W/fp8_split" | tee -a "$OUT/train_check.jsonl"
cp "$W/gpu/metrics.jsonl" "$OUT/gpu_small_metrics.jsonl"
# MODES: the 1.3B bench modes, ';'-separated (an empty field is the default mode).
IFS=';' read -ra modes <<< "${MODES:-;--recompute;--save auto --memory-limit 68.9;--save auto;--save all}"
for r in "${modes[@]}"; do
  timeout 150 "$B" bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --breakdown $r --out "$OUT" 2>&1 | tail -60
done
[ -n "${SKIP_GRAPH:-}" ] || {
# Graph vs eager in one call: the same step replayed from a CUDA graph (gdn_train_graph.json), and
# a small model where launch gaps weigh more.
timeout 150 "$B" bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --graph --out "$OUT" 2>&1 | tail -3
for g in "" --graph; do
  timeout 60 "$B" bench train --preset small --seq-len 512 --batch-size 4 --steps 20 $g 2>&1 | tail -1
done
}
PEER=$(for d in .peer/bench ../shared/bench shared/bench; do [ -f "$d/fla_train.py" ] && echo "$d" && break; done)
if [ -n "$PEER" ] && [ -z "${SKIP_FLA:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
  (export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1; P=$(realpath "$PEER"); cd "$OUT" && timeout 240 python3 "$P/fla_train.py" 1.3B 2>&1 | grep -v Warning | tail -3)
fi
timeout 120 "$B" selftest --device cuda --filter model --json "$OUT/model_selftest.json" > "$OUT/model_selftest.log" 2>&1; echo "model selftest: exit $?, $(grep -c FAIL "$OUT/model_selftest.log") FAIL rows"
