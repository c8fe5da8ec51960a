#!/usr/bin/env bash
# Session 20, call 8: chunk c + 2's W, K and U rows prefetched into L2 by the K <= 128 state
# passes when chunk c + 1's are issued (gdn-pf), against the final binary (gdn-final2):
# delta-rule selftest of pf, breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final2; C=target/device/gdn-pf
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $C selftest --device cuda --filter delta_rule > $O/selftest_pf.log 2>&1; echo "selftest exit $?" >> $O/selftest_pf.log
tail -2 $O/selftest_pf.log
{
S=4x4096x16x128x128,1x16384x16x128x128,8x2048x16x128x128,4x4096x16x64x64
for r in 1 2; do
 for b in $BASE $C; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|state\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
