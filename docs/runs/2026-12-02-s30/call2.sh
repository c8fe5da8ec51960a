#!/usr/bin/env bash
# Session 30, call 2: SwiGLU fused with its FP8 codes (backward: d gate‖up straight to E5M2 in
# both layouts; the backward's recompute: actᵀ codes only; forward: act and its codes in one
# kernel). The fp8 and swiglu selftest groups, the 1.3B FP8 step (timed, then by op group), and
# the model selftest (its FP8 rows run the fused kernels in their second step).
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-a
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for g in fp8 swiglu; do
  timeout 90 $N selftest --device cuda --filter $g > $O/selftest_$g.log 2>&1; echo "exit $?" >> $O/selftest_$g.log
  grep -i "swiglu\|NO \|checks\|exit\|rror" $O/selftest_$g.log | head -30
  ts selftest $g
done
timeout 120 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 --fp8 --out $O/t > $O/bench_train_fp8.log 2>&1; echo "exit $?" >> $O/bench_train_fp8.log
grep "tokens/s\|exit\|rror" $O/bench_train_fp8.log | tail -3
ts bench train
timeout 120 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 3 --save auto --memory-limit 68.9 --fp8 --breakdown --out $O > $O/bench_train_fp8_breakdown.log 2>&1; echo "exit $?" >> $O/bench_train_fp8_breakdown.log
grep "tokens/s\|exit\|rror\|swiglu\|mlp" $O/bench_train_fp8_breakdown.log | tail -12
ts bench train breakdown
timeout 150 $N selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit\|NO " $O/selftest_model.log | head -12
ts selftest model
