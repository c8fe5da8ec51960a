#!/usr/bin/env bash
# Session 12, call 1: logits in blocks, gate‖up and q‖k‖v as one matmul (new) against main c30b603
# (base): full selftest, the 1.3B step lean and auto alternating, the training shape's forward
# fused against split, and the training checks (bit-identical modes, GPU vs CPU, model selftest).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; B=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
( $B bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
wait
{
ts "kernels at the training shape: split (default), then fused"
timeout 60 $N bench kernels --shapes 8x4096x6x256x512,4x4096x6x256x512 2>&1 | grep "^| [0-9]"
GDN_DR_FWD=fused timeout 60 $N bench kernels --shapes 8x4096x6x256x512,4x4096x6x256x512 2>&1 | grep "^| [0-9]"
for r in new1:$N base1:$B new2:$N base2:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "train lean $name"; timeout 100 $bin bench train 2>&1 | grep "s/step"
done
ts "train auto 68.9 base"; timeout 100 $B bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
ts done
} > $O/bench.log 2>&1
GDN_BIN=$N MODES="--save auto --memory-limit 68.9" SKIP_GRAPH=1 SKIP_FLA=1 timeout 300 bash scripts/device_train_check.sh > $O/train_check.log 2>&1
echo "train check exit $? at $(( $(date +%s) - T0 ))s" >> $O/train_check.log
