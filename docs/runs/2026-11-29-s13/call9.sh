#!/usr/bin/env bash
# Session 13, call 9: the final binary's model selftest and the 1.3B training step (lean and
# --save auto at FLA's memory) against main 995c17b (base), alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; B=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
( $B bench kernels --shapes 1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
timeout 70 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
wait
{
for r in new1:$N base1:$B new2:$N base2:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "train lean $name"; timeout 45 $bin bench train 2>&1 | grep "s/step"
done
for r in new:$N base:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "train auto 68.9 $name"; timeout 45 $bin bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
done
ts done
} > $O/bench.log 2>&1
