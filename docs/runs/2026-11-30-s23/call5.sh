#!/usr/bin/env bash
# Session 23, call 5: gdn-ss (the forward keeps its segment states behind the saved T; the
# backward walks from them) against gdn-comb (612e873). Full selftest and model selftest on
# gdn-ss; B1·T16384 breakdowns alternating; B4 and K256 unchanged (no segments there).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; M=target/device/gdn-comb; N=target/device/gdn-ss
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
timeout 240 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO " $O/selftest.log | head; grep -c "segment states = forming them again" $O/selftest.log
timeout 100 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; tail -1 $O/model_selftest.log
ts selftests
S=1x16384x16x128x128,1x16384x16x64x64,1x16384x16x64x128
{
for r in 1 2; do
  for b in $M $N; do
    ts "$b run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| 1 | 16384\|segment\|recompute"
  done
done
for b in $M $N; do
  ts "$b B4 K256"; timeout 100 $b bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 2>&1 | grep "^| 4 | 4096"
done
} > $O/ab.log 2>&1
cat $O/ab.log | grep -v "^| [fb]wd"
ts end
