#!/usr/bin/env bash
# Session 22, call 5: gdn-seg4 (18c0d80: seg_combine's loads ahead of use) — full selftest and
# model selftest; B1·T16384 breakdowns alternating with gdn-seg3 (1675c12's kernels); then FLA
# 0.6.0 and seg4 in the same call at the three target shapes (gdn before and after FLA).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; S3=target/device/gdn-seg3; N=target/device/gdn-seg4
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $S3 $N; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL" $O/selftest.log | head
timeout 150 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log
ts selftests
S=1x16384x16x128x128,1x16384x16x64x64
{
for r in 1 2; do
  for b in $S3 $N; do
    ts "$b run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| 1 | 16384\|segment starts"
  done
done
} > $O/ab.log 2>&1
cat $O/ab.log
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --breakdown > $O/breakdown.log 2>&1
grep "^| [0-9]" $O/breakdown.log | head -6
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
ts FLA
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 330 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -8
ts end
