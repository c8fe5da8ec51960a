#!/usr/bin/env bash
# Session 24, call 4: gdn-follow2 (also dqk + wy follows the plain reverse pass) — selftest and
# model selftest, then A/B: GDN_DR_FOLLOW=0 (neither follows), gdn-follow (call 3: fwd_o only),
# gdn-follow2.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-follow2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 300 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head
timeout 120 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; tail -1 $O/model_selftest.log
ts selftests
S=4x4096x6x256x512,2x4096x6x256x512,8x4096x6x256x512,4x4096x16x128x128,1x16384x16x128x128
{
for r in 1 2; do
  ts "off run $r"; GDN_DR_FOLLOW=0 timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -5
  ts "follow (fwd_o only) run $r"; timeout 150 target/device/gdn-follow bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -5
  ts "follow2 run $r"; timeout 150 $N bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -5
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
