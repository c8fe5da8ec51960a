#!/usr/bin/env bash
# Session 17, call 4: dqk leaves k in shared memory for wy (KTile), dqk reads kernel 5's <h,dh>
# partials before its loop, wu/prep's in-loop V slice load back on the generic loop — selftest,
# then breakdowns alternating old (71c083f), mid (call 3's binary) and new.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; OLD=target/device/gdn-old; MID=target/device/gdn-mid
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $OLD $MID $N; do
timeout 120 $b bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $OLD $MID $N; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: prep\|bwd: wu\|bwd: dqk\|bwd: dvloc"
 done
done
ts done
} > $O/bench.log 2>&1
tail -2 $O/selftest.log; cat $O/bench.log
