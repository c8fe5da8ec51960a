#!/usr/bin/env bash
# Session 29, call 3: FP8 linears with each scale_inv 256 bytes apart (call 2's
# CUBLAS_STATUS_NOT_SUPPORTED). fp8 ops rows, the model selftest (its FP8 rows), the 1.3B step
# in bf16 and --fp8.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8c
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 200 $N selftest --device cuda --filter fp8 > $O/selftest_fp8.log 2>&1; echo "exit $?" >> $O/selftest_fp8.log
tail -3 $O/selftest_fp8.log
ts selftest fp8
CUBLASLT_LOG_LEVEL=2 timeout 200 $N selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit\|cublasLt" $O/selftest_model.log | head -20
ts selftest model
for m in "" "--fp8"; do
  timeout 150 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 $m --out $O > $O/bench_train${m/--/_}.log 2>&1; echo "exit $?" >> $O/bench_train${m/--/_}.log
  grep "tokens/s\|exit\|rror" $O/bench_train${m/--/_}.log | tail -3
  ts "bench train $m"
done
