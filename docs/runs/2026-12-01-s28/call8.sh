#!/usr/bin/env bash
# Session 28, call 8: what the warp-specialised reverse pass's dṼ_loc products cost its state
# warps (timing only; dvh skips the dṼ_loc warps' P^T dO products, its results are wrong on
# purpose). Eager breakdowns at K <= 128, final and dvh alternating.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x16x64x64
for b in final dvh; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
S=4x4096x16x128x128,4x4096x16x64x64
{
for r in 1 2; do
  for b in final dvh; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes $S --breakdown 2>&1 | grep "^breakdown\|state_bwd"
  done
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
