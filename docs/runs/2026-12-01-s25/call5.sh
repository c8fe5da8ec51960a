#!/usr/bin/env bash
# Session 25, call 5: the split pass's W, K and U by bulk copies (cp.async.bulk, one per row, an
# mbarrier per buffer) — delta-rule selftest, then A/B against the base binary (8c05f88, the
# code of aafef50), alternating, and both breakdowns.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-bulk; BASE=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64
timeout 200 $N bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
timeout 200 $BASE bench kernels --shapes $W --reps 1 > /dev/null 2>&1; wait
ts compiled
timeout 200 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL" $O/selftest.log | head -30
ts selftest
S=4x4096x6x256x512,8x4096x6x256x512,4x4096x16x128x128,1x16384x16x128x128,8x2048x16x128x128
{
for r in 1 2; do
  ts "base run $r"; timeout 150 $BASE bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -10
  ts "bulk run $r"; timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -10
done
ts breakdown
for b in $BASE $N; do
  timeout 100 $b bench kernels --shapes 4x4096x6x256x512,4x4096x16x128x128,1x16384x16x128x128 --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
