#!/usr/bin/env bash
# Session 29, call 5: the transposing cast with whole 64-byte row segments per warp, h1ᵀ cast
# once for q‖k‖v and the gate. fp8 ops rows and the model selftest, `bench matmul` (cast rates),
# then the 1.3B step: bf16, --fp8, and both with --graph.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8d
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 200 $N selftest --device cuda --filter fp8 > $O/selftest_fp8.log 2>&1; echo "exit $?" >> $O/selftest_fp8.log
tail -2 $O/selftest_fp8.log
ts selftest fp8
timeout 200 $N selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit" $O/selftest_model.log | head -8
ts selftest model
timeout 200 $N bench matmul --preset fla-1.3b --reps 20 --out $O > $O/bench_matmul.log 2>&1; echo "exit $?" >> $O/bench_matmul.log
grep "^|\|per step\|exit" $O/bench_matmul.log
ts bench matmul
for m in "--fp8" "" "--fp8 --graph" "--graph"; do
  tag=$(echo "$m" | tr -d ' -'); tag=${tag:-bf16}
  timeout 150 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 $m --out $O > $O/bench_train_$tag.log 2>&1; echo "exit $?" >> $O/bench_train_$tag.log
  grep "tokens/s\|exit\|rror" $O/bench_train_$tag.log | tail -2
  ts "bench train $m"
done
