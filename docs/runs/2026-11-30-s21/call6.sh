#!/usr/bin/env bash
# Session 21, call 6: the warp-specialised recompute (wu beside the split pass in one kernel,
# GDN_DR_WSR=1; binary gdn-wsr) against wu + split (gdn-wyb, 11b0bf3's kernels): delta-rule
# selftest of gdn-wsr with and without the variable, breakdowns alternating (gdn-wsr without the
# variable: the w_product / u_slice refactor of wu and prep).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-wyb; A=target/device/gdn-wsr
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $A; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
GDN_DR_WSR=1 timeout 200 $A selftest --device cuda --filter delta_rule > $O/selftest_wsr.log 2>&1; echo "selftest exit $?" >> $O/selftest_wsr.log
tail -2 $O/selftest_wsr.log; grep -i "fail" $O/selftest_wsr.log | head -5
timeout 200 $A selftest --device cuda --filter delta_rule > $O/selftest_nowsr.log 2>&1; echo "selftest exit $?" >> $O/selftest_nowsr.log
tail -2 $O/selftest_nowsr.log
ts selftests
{
S=4x4096x16x128x128,4x4096x16x64x64,8x2048x16x128x128,2x8192x16x128x128
for r in 1 2; do
 ts "base run $r"; timeout 100 $BASE bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: prep\|bwd: "
 ts "wsr run $r"; GDN_DR_WSR=1 timeout 100 $A bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: prep\|bwd: "
 ts "nowsr run $r"; timeout 100 $A bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: prep\|bwd: "
done
ts done
} > $O/bench.log 2>&1
grep "===\|bwd: state_wsr\|bwd: wu\|bwd: state_fwd\|fwd: prep\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
