#!/usr/bin/env bash
# Session 20, call 6: prep launched without Q's rows in shared memory where it forms no P (the
# split forward at B1 and B2, the backward's prep), gdn-final2, against call 5's gdn-final (Q's
# rows always there: prep at B1 0.141 -> 0.160 ms): delta-rule selftest of final2, the README
# bench and the breakdowns alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final; C=target/device/gdn-final2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 200 $C selftest --device cuda --filter delta_rule > $O/selftest_final2.log 2>&1; echo "selftest exit $?" >> $O/selftest_final2.log
tail -2 $O/selftest_final2.log
{
S=4x4096x16x128x128,1x16384x16x128x128,2x8192x16x128x128
for r in 1 2; do
 for b in $BASE $C; do
  ts "$b breakdown run $r"; timeout 100 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|fwd: \|bwd: "
 done
done
ts "README bench final2"; timeout 200 $C bench kernels 2>&1
ts done
} > $O/bench.log 2>&1
grep "===\|fwd: prep\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
