#!/usr/bin/env bash
# Session 21, call 3: prep with Q's rows sharing tb's region (gdn-prepq; 53 KB instead of 62 KB at
# K = 128 when forming P) against 67d8276's kernels (gdn-main2), the forward forced
# warp-specialised in both (main2's host predates ws_fwd_pays); then, on prepq, the reverse pass
# forced warp-specialised against the cost model's plain pick where the forward now forms P.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-main2; A=target/device/gdn-prepq
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $A selftest --device cuda --filter delta_rule > $O/selftest_prepq.log 2>&1; echo "selftest exit $?" >> $O/selftest_prepq.log
tail -2 $O/selftest_prepq.log
ts selftest
{
S=4x4096x16x128x128,8x2048x16x128x128,2x8192x16x128x128,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $A; do
  ts "$b breakdown run $r"; GDN_DR_FWD=ws timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
S2=2x8192x16x128x128,1x16384x16x128x128,8x2048x16x128x128
for r in 1 2; do
 for m in plain ws; do
  ts "$A GDN_DR_BWD=$m run $r"; GDN_DR_BWD=$m timeout 100 $A bench kernels --shapes $S2 --breakdown 2>&1 | grep "^| [0-9]\|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|fwd: prep\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
