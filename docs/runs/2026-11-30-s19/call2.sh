#!/usr/bin/env bash
# Session 19, call 2: dq, dk, dv stored in bf16 (gdn-c, branch bf16-grads) against the landed
# binary (gdn-final, 8d78ef4): full selftest of c; model selftest of both (gradient parity before
# and after); breakdowns alternating; the 1.3B training step at FLA's memory, alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final; C=target/device/gdn-c
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $C selftest --device cuda > $O/selftest_c.log 2>&1; echo "selftest exit $?" >> $O/selftest_c.log
tail -2 $O/selftest_c.log
for b in $BASE $C; do
  n=$(basename $b)
  timeout 120 $b selftest --device cuda --filter model > $O/model_selftest_$n.log 2>&1; echo "exit $?" >> $O/model_selftest_$n.log
  tail -2 $O/model_selftest_$n.log
done
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $C; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
for r in 1 2; do
 for b in $BASE $C; do
  ts "train auto 68.9 $b run $r"; timeout 60 $b bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
 done
done
ts done
} > $O/bench.log 2>&1
grep -v "^| [0-9]" $O/bench.log | grep "===\|s/step\|dqk"
