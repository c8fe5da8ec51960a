#!/usr/bin/env bash
# Session 19, call 5: wy issues all of its T loads before using any (gdn-t) against main 7838723
# (gdn-final): delta-rule selftest of t, breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final; A=target/device/gdn-t
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 150 $A selftest --device cuda --filter delta_rule > $O/selftest_t.log 2>&1; echo "selftest exit $?" >> $O/selftest_t.log
tail -2 $O/selftest_t.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|dqk\|^| 4 | 4096 | 16 | 128 | 128 | 0\|^| 1 | 16384 | 16 | 128 | 128 | 0\|^| 4 | 4096 | 6 | 256 | 512 | 0" $O/bench.log
