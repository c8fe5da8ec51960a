#!/usr/bin/env bash
# Session 18, call 6: the split pass and the recompute store h_c after the Ṽ product (A = gdn-e),
# against 38002e6 (base): delta-rule selftest of A, breakdowns alternating base and A.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-base; A=target/device/gdn-e
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 150 $A selftest --device cuda --filter delta_rule > $O/selftest_a.log 2>&1; echo "selftest exit $?" >> $O/selftest_a.log
tail -3 $O/selftest_a.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64,8x2048x16x128x128,2x8192x16x128x128
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
