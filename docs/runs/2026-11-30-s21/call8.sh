#!/usr/bin/env bash
# Session 21, call 8: as call 7 with the whole loader warpgroup (4 warps) issuing the state warps'
# tiles (gdn-ld) against 11b0bf3's kernels (gdn-wyb): delta-rule selftest of gdn-ld, forward
# breakdowns alternating at the shapes that run the warp-specialised forward.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-wyb; A=target/device/gdn-ld
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda --filter delta_rule > $O/selftest_ld.log 2>&1; echo "selftest exit $?" >> $O/selftest_ld.log
tail -2 $O/selftest_ld.log
ts selftest
{
S=4x4096x16x128x128,8x2048x16x128x128,2x8192x16x128x128,4x4096x16x64x64,16x1024x16x128x128
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: state"
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|fwd: state\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
