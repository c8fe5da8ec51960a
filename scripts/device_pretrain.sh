#!/usr/bin/env bash
# A real-corpus pre-training run on the GPU machine (issue 4): the NVlabs 0.4B preset on token shards
# made by `gdn tokenizer train` + `gdn prepare`, then evaluation at 1×, 2× and 4× the training length
# and samples. The run folder stays in /tmp (the checkpoint is GBs); metrics, the eval table and the
# samples are copied to $OUT.
# Usage: GDN_BIN=gdn DATA=shards-folder TOK=tokenizer.json OUT=folder bash scripts/device_pretrain.sh
set -u
. "$(dirname "$0")/device_env.sh"
DATA=${DATA:?shards folder}
TOK=${TOK:?tokenizer.json}
STEPS=${STEPS:-1000}
T=${SEQ_LEN:-2048}
R=/tmp/gdn-pretrain
rm -rf "$R"
start=$(date +%s)
timeout "${TRAIN_TIMEOUT:-420}" "$B" train --data "$DATA" --tokenizer "$TOK" --preset nvlabs-0.4b \
  --seq-len "$T" --batch-size 8 --steps "$STEPS" --lr 1e-3 --min-lr 1e-4 --warmup 100 \
  --eval-every "${EVAL_EVERY:-250}" --checkpoint-every "${CKPT_EVERY:-1000}" --device cuda --out "$R" > "$OUT/train.log" 2>&1
echo "train: exit $? after $(( $(date +%s) - start )) s"
tr '\r' '\n' < "$OUT/train.log" | grep -v "^\s*$" | grep -E "eval|done|error|gdn train" | tail -14
cp "$R/metrics.jsonl" "$R/train_config.json" "$OUT/" 2>/dev/null
timeout 90 "$B" eval --checkpoint "$R/checkpoint" --shards "$DATA" --lengths "$T,$((2 * T)),$((4 * T))" \
  --batch 4 --device cuda --json "$OUT/eval.json" --quiet 2>&1 | tail -5
for p in "def main(argv):" "class Parser:"; do
  echo "=== prompt: $p"
  timeout 60 "$B" generate --checkpoint "$R/checkpoint" --tokenizer "$TOK" --prompt "$p" --echo \
    --max-tokens "${SAMPLE_TOKENS:-120}" --temperature 0.7 --top-p 0.9 --seed 1 2>&1
  echo
done > "$OUT/samples.txt"
tail -c 2500 "$OUT/samples.txt"
