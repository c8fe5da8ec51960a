#!/usr/bin/env bash
# Session 28, call 1: what pairs of chunks per sequential step could give the state passes
# (timing only; the pair binary's results are wrong on purpose). In the pair binary each
# even step of a split or warp-specialised state pass forms the next chunk's Ṽ product beside its
# own (same Sᵀ operand, W of the other buffer), and the odd step skips its product: the chain
# a composed pair (Ṽ_b = U'_b − W'_b S_a) would have. Per-stage eager breakdowns, main and pair
# alternating.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512
GDN_CACHE_DIR=/tmp/gdn_cache_main timeout 250 target/device/gdn-main bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
timeout 250 target/device/gdn-pair bench kernels --shapes $W --reps 1 > /dev/null 2>&1
wait
ts compiled
S=4x4096x16x128x128,4x4096x6x256x512,8x2048x16x128x128
{
for r in 1 2; do
  ts "main run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_main timeout 150 target/device/gdn-main bench kernels --shapes $S --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
  ts "pair run $r"; timeout 150 target/device/gdn-pair bench kernels --shapes $S --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
done
ts "split forward forced, K128"
for b in main pair; do
  c=/tmp/gdn_cache; [ $b = main ] && c=/tmp/gdn_cache_main
  GDN_CACHE_DIR=$c GDN_DR_FWD=split timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128 --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
