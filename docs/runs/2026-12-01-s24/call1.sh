#!/usr/bin/env bash
# Session 24, call 1: gdn-fork (dṼ_loc on a side stream beside the recompute, where the reverse
# pass is the plain one) against gdn-main (5e38657). Full selftest and model selftest on
# gdn-fork (also the first GPU run of session 23's last host-side commits); A/B alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; M=target/device/gdn-main; N=target/device/gdn-fork
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 240 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head; grep -c "segment states = forming them again" $O/selftest.log
timeout 100 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; tail -1 $O/model_selftest.log
ts selftests
S=4x4096x6x256x512,1x16384x16x128x128,8x4096x6x256x512,4x4096x16x128x128,1x16384x16x64x64
{
for r in 1 2; do
  for b in $M $N; do
    ts "$b run $r"; timeout 150 $b bench kernels --shapes $S 2>&1 | grep "^| [0-9]"
  done
done
ts "breakdown fork"; timeout 100 $N bench kernels --shapes 4x4096x6x256x512 --breakdown 2>&1 | grep -v "^| [fb]wd" | tail -30
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
