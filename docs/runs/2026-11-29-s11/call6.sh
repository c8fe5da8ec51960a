#!/usr/bin/env bash
# Session 11, call 6: the final kernel (K splits stage dh through `red`) against base; full selftest;
# the training checks (bit-identical modes, GPU vs CPU, model selftest, auto mode at 68.9 GB).
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
  ts "bench $name"; timeout 120 $bin bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512,8x4096x6x256x512 2>&1 | grep "^| [0-9]"
done
ts "breakdown new"
timeout 90 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,2x8192x16x128x128 --breakdown 2>&1 | grep "breakdown\|bwd: state_bwd\|bwd: dqk"
ts "train lean new, base"
timeout 100 $N bench train 2>&1 | grep "s/step"
timeout 100 $B bench train 2>&1 | grep "s/step"
ts done
} > $O/bench.log 2>&1
GDN_BIN=$N MODES="--save auto --memory-limit 68.9" SKIP_GRAPH=1 SKIP_FLA=1 timeout 330 bash scripts/device_train_check.sh > $O/train_check.log 2>&1
echo "train check exit $?" >> $O/train_check.log
