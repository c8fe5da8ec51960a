#!/usr/bin/env bash
# Session 17, call 3: every tile load of prep, wu, dvloc, dqk and wy through load_rows_async
# (compile-time pieces) instead of the generic loop — selftest, then the per-kernel breakdown and
# fwd+bwd, old (71c083f) and new binaries alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; OLD=target/device/gdn-old
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
# compile both (NVRTC) before timing
timeout 120 $OLD bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
timeout 120 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
wait
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
{
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x64x64
for r in 1 2; do
 for b in $OLD $N; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
tail -3 $O/selftest.log; grep -c "ok\b" $O/selftest.log; cat $O/bench.log
