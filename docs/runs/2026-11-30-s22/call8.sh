#!/usr/bin/env bash
# Session 22, call 8: gdn-seg6 (seg_combine backwards through shared-memory tiles of A)
# against gdn-seg5 (b4dd3f2): full selftest of seg6, B1·T16384 (K128, K64 V64, K64 V128) and
# B4·T4096 alternating, with the breakdown.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; S4=target/device/gdn-seg5; N=target/device/gdn-seg6
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $S4 $N; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL" $O/selftest.log | head
ts selftest
S=1x16384x16x128x128,1x16384x16x64x64,1x16384x16x64x128,4x4096x16x128x128
{
for r in 1 2; do
  for b in $S4 $N; do
    ts "$b run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [14] | [14][06][93][68]\|segment\|state_bwd"
  done
done
} > $O/ab.log 2>&1
grep -v "kept\|^| [14] | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* | [0-9]* |$" $O/ab.log
ts end
