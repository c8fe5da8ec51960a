#!/usr/bin/env bash
# Session 12, call 4: whole-sector stores in kernels 1, 1b, 3, 4 (new) against 29f4dab (base: the
# same but for those stores): full selftest, kernels alternating with the breakdown, the 1.3B step
# (lean, auto at 68.9 GB) alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; B=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
( $B bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
wait
{
for r in new1:$N base1:$B new2:$N base2:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench $name"; timeout 120 $bin bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,8x4096x6x256x512 2>&1 | grep "^| [0-9]"
done
for r in new:$N base:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,8x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: prep\|fwd: fwd_o\|bwd: wu\|bwd: dvloc\|fwd: sum\|bwd: sum"
done
for r in new1:$N base1:$B new2:$N base2:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "train auto $name"; timeout 100 $bin bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
done
ts "train lean new"; timeout 100 $N bench train 2>&1 | grep "s/step"
ts done
} > $O/bench.log 2>&1
