#!/usr/bin/env bash
# Session 19, call 6: store_tiles_staged reads all of its stage pieces before storing any (gdn-s)
# against main 650576f (gdn-t): delta-rule selftest of s, breakdowns alternating (the five
# shapes, the 1.3B training shape B8·T4096·H6·K256·V512 too), the 1.3B step alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-t; A=target/device/gdn-s
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 150 $A selftest --device cuda --filter delta_rule > $O/selftest_s.log 2>&1; echo "selftest exit $?" >> $O/selftest_s.log
tail -2 $O/selftest_s.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64,8x4096x6x256x512
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
for r in 1 2; do
 for b in $BASE $A; do
  ts "train auto 68.9 $b run $r"; timeout 60 $b bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|s/step\|state\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | 0" $O/bench.log
