#!/usr/bin/env bash
# Session 25, call 2: the split pass on wgmma, h_c stored while the Ṽ product runs and Ṽ while the update runs — delta-rule selftest, then
# A/B against GDN_DR_WG=0 in the same binary, and the K = 256 breakdown both ways.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-wg2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 200 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL" $O/selftest.log | head -30; grep "wgmma" $O/selftest.log | head -40
ts selftest
S=4x4096x6x256x512,8x4096x6x256x512,4x4096x16x128x128,1x16384x16x128x128
{
for r in 1 2; do
  ts "mma.sync run $r"; GDN_DR_WG=0 timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]\|state_plan\|plan" | head -12
  ts "wgmma run $r"; timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]\|state_plan\|plan" | head -12
done
ts breakdown
GDN_DR_WG=0 timeout 100 $N bench kernels --shapes 4x4096x6x256x512,4x4096x16x128x128 --breakdown 2>&1 | grep "^breakdown\|recompute\|split"
timeout 100 $N bench kernels --shapes 4x4096x6x256x512,4x4096x16x128x128 --breakdown 2>&1 | grep "^breakdown\|recompute\|split"
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
