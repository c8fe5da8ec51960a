#!/usr/bin/env bash
# Session 30, call 5: the final build (gdn-b) training end to end with --fp8: the NVlabs 0.4B
# preset on gdn-prepared Python sources, 300 steps, as session 29's call 6 (same data, seed and
# schedule), to compare the loss curve with that run's.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-b; R=/tmp/run_fp8
timeout 150 $N train --data .corpus/shards --tokenizer .corpus/tokenizer.json --preset nvlabs-0.4b \
  --seq-len 2048 --batch-size 8 --steps 300 --lr 1e-3 --min-lr 1e-4 --warmup 100 --eval-every 100 \
  --checkpoint-every 1000 --device cuda --fp8 --out $R > $O/train_fp8.log 2>&1; echo "exit $?" >> $O/train_fp8.log
tr '\r' '\n' < $O/train_fp8.log | grep -v "^\s*$" | grep -E "eval|done|error|exit" | tail -6
cp $R/metrics.jsonl $O/metrics_fp8.jsonl 2>/dev/null
