#!/usr/bin/env bash
# Session 29, call 6: the final binary (dX's FP8 products with fast accumulation). Full selftest,
# `bench matmul`, the 1.3B step with --fp8 and in bf16, and the NVlabs 0.4B preset on
# gdn-prepared Python sources, 300 steps in bf16 and with --fp8 from the same seed.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8e
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 260 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FP8\|NO \|rror" $O/selftest.log | head -12
ts selftest
timeout 100 $N bench matmul --preset fla-1.3b --reps 20 --out $O > $O/bench_matmul.log 2>&1; echo "exit $?" >> $O/bench_matmul.log
grep "^|\|per step\|exit" $O/bench_matmul.log
ts bench matmul
for m in "--fp8" ""; do
  tag=$(echo "$m" | tr -d ' -'); tag=${tag:-bf16}
  timeout 120 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 $m --out $O > $O/bench_train_$tag.log 2>&1; echo "exit $?" >> $O/bench_train_$tag.log
  grep "tokens/s\|exit\|rror" $O/bench_train_$tag.log | tail -2
  ts "bench train $m"
done
for m in "--fp8" ""; do
  tag=$(echo "$m" | tr -d ' -'); tag=${tag:-bf16}
  R=/tmp/run_$tag
  timeout 110 $N train --data .corpus/shards --tokenizer .corpus/tokenizer.json --preset nvlabs-0.4b \
    --seq-len 2048 --batch-size 8 --steps 300 --lr 1e-3 --min-lr 1e-4 --warmup 100 --eval-every 100 \
    --checkpoint-every 1000 --device cuda $m --out $R > $O/train_$tag.log 2>&1; echo "exit $?" >> $O/train_$tag.log
  tr '\r' '\n' < $O/train_$tag.log | grep -v "^\s*$" | grep -E "eval|done|error|exit" | tail -5
  cp $R/metrics.jsonl $O/metrics_$tag.jsonl 2>/dev/null
  ts "train $m"
done
