#!/usr/bin/env bash
# Session 21, call 4: wy's TMP = dT Tᵀ tiles balanced over the warps at K <= 128 (gdn-wyb) against
# f8af784 (gdn-prepq): full selftest and model selftest of wyb, dq/dk + WY alternating, the
# README bench of wyb.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-prepq; A=target/device/gdn-wyb
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log
timeout 120 $A selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log
ts selftests
{
S=4x4096x16x128x128,4x4096x16x64x64,4x4096x6x256x512
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|bwd: dqk"
 done
done
ts done
} > $O/ab.log 2>&1
grep "===\|bwd: dqk\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/ab.log
ts "README bench"; timeout 200 $A bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
tail -30 $O/bench.log; ts end
