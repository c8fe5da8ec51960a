#!/usr/bin/env bash
# Session 28, call 2: where a state step's time goes (timing only; h1-h3 give wrong results on
# purpose). h1: the state passes read half of W and K by ldmatrix (the fragments of the other
# half reused), half the shared-memory reads of their products; h2: the warp-specialised
# forward's state warps skip staging h_c and Ṽ for the output warps (the barriers stay); h3: its
# output warps skip their products and O's stores (loads and barriers stay). Eager per-stage
# breakdowns, main and each hack alternating.
set -u
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512
for b in main h1 h2 h3; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
S=4x4096x16x128x128,4x4096x6x256x512
{
for r in 1 2; do
  for b in main h1 h2 h3; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 150 target/device/gdn-$b bench kernels --shapes $S --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
  done
done
} > $O/ab.log 2>&1
cat $O/ab.log | grep -v "sum\|dqk\|wu\|dvloc\|state_bwd\|prep"
ts end
