#!/usr/bin/env bash
# Session 29, call 4: the NVlabs 0.4B preset on gdn-prepared Python sources (.corpus, made on the
# development machine as docs/results.md says), 300 steps in bf16 and with --fp8 from the same
# seed: the loss curves and held-out losses compared.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8c
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for m in "" "--fp8"; do
  R=/tmp/run${m/--/_}
  timeout 270 $N train --data .corpus/shards --tokenizer .corpus/tokenizer.json --preset nvlabs-0.4b \
    --seq-len 2048 --batch-size 8 --steps 300 --lr 1e-3 --min-lr 1e-4 --warmup 100 --eval-every 100 \
    --checkpoint-every 1000 --device cuda $m --out $R > $O/train${m/--/_}.log 2>&1; echo "exit $?" >> $O/train${m/--/_}.log
  tr '\r' '\n' < $O/train${m/--/_}.log | grep -v "^\s*$" | grep -E "eval|done|error|gdn train|exit" | tail -6
  cp $R/metrics.jsonl $O/metrics${m/--/_}.jsonl 2>/dev/null
  ts "train $m"
done
