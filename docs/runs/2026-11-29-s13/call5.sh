#!/usr/bin/env bash
# Session 13, call 5: prep and wu with swizzled K and V tiles and padded tw tiles (new) against call 2
# (s2) and main 995c17b (base): the delta rule's selftest, kernels alternating, the
# breakdown.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; S=target/device/gdn-s2; B=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
( for b in $B $S; do $b bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1; done ) &
timeout 150 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
wait
{
for r in new1:$N s2_1:$S base1:$B new2:$N s2_2:$S base2:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 100 $bin bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 2>&1 | grep "^| [0-9]"
done
for r in new:$N s2:$S; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,8x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: wu"
done
ts done
} > $O/bench.log 2>&1
