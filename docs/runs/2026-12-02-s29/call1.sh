#!/usr/bin/env bash
# Session 29, call 1: the FP8 building blocks. The fp8 and matmul selftest groups, then
# `bench matmul` (the 1.3B preset's linear layers at 8 × 4096 tokens, bf16 against FP8).
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv | tail -1
timeout 200 $N selftest --device cuda --filter fp8 > $O/selftest_fp8.log 2>&1; echo "exit $?" >> $O/selftest_fp8.log
cat $O/selftest_fp8.log | tail -40
ts selftest fp8
timeout 120 $N selftest --device cuda --filter matmul > $O/selftest_matmul.log 2>&1; echo "exit $?" >> $O/selftest_matmul.log
tail -3 $O/selftest_matmul.log
ts selftest matmul
GDN_MATMUL_TUNE_LOG=1 timeout 300 $N bench matmul --preset fla-1.3b --reps 20 --out $O > $O/bench_matmul.log 2>&1; echo "exit $?" >> $O/bench_matmul.log
cat $O/bench_matmul.log | grep -v "^tuned" | tail -20
grep -c "^tuned" $O/bench_matmul.log
ts end
