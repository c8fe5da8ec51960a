#!/usr/bin/env bash
# Session 20, call 3: prep forms P beside the T solve's first two steps (gdn-p2) instead of
# before it (call 2's gdn-p), against main (gdn-main): selftest of p2, breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-main; C=target/device/gdn-p2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $C selftest --device cuda --filter delta_rule > $O/selftest_p2.log 2>&1; echo "selftest exit $?" >> $O/selftest_p2.log
tail -2 $O/selftest_p2.log
{
S=4x4096x16x128x128,8x2048x16x128x128,4x4096x16x64x64,4x4096x6x256x512
for r in 1 2; do
 for b in $BASE $C; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|fwd: \|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
