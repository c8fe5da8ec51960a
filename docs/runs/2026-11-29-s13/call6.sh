#!/usr/bin/env bash
# Session 13, call 6: the state passes' K splits forced at the batch shapes (the cost model picks
# them only for few long sequences): GDN_DR_KS (split pass and recompute), GDN_DR_SB_KS (reverse
# pass), and the fused forward with a K split; kernels, then the breakdown of each.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=4x4096x16x128x128,8x2048x16x128x128,4x4096x6x256x512
{
$N bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1
for it in 1 2; do
  for e in "X=0" "GDN_DR_KS=2" "GDN_DR_KS=4" "GDN_DR_SB_KS=2" "GDN_DR_FWD=fused GDN_DR_KS=2"; do
    ts "$e $it"; env $e timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
  done
done
for e in "X=0" "GDN_DR_KS=2" "GDN_DR_SB_KS=2"; do
  ts "breakdown $e"
  env $e timeout 90 $N bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
done
ts done
} > $O/bench.log 2>&1
