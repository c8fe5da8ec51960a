#!/usr/bin/env bash
# Session 13, call 3: the state passes with 8-warp CTAs (one CTA per sequence and head at V = 128,
# so W and K are read from L2 once, not twice) against the cost model's pick, forced by
# GDN_DR_SF_NW / GDN_DR_SB_NW; kernels and the breakdown.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=4x4096x16x128x128,8x2048x16x128x128,2x8192x16x128x128,4x4096x6x256x512
{
$N bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1
for it in 1 2; do
  ts "default $it"; timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
  ts "SF_NW=8 $it"; GDN_DR_SF_NW=8 timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
  ts "SF_NW=8 SB_NW=8 $it"; GDN_DR_SF_NW=8 GDN_DR_SB_NW=8 timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]"
done
for e in "" "GDN_DR_SF_NW=8 GDN_DR_SB_NW=8"; do
  ts "breakdown $e"
  env $e timeout 90 $N bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
done
ts done
} > $O/bench.log 2>&1
