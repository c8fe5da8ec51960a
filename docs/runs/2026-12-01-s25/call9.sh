#!/usr/bin/env bash
# Session 25, call 9: call 6's bound split in two — timing only, wrong results on purpose: hackC
# issues the same W and K cp.async as base (same instructions, same shared-memory writes), but
# from chunk cs's rows after the first two chunks, so that they hit in L2; base is main.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512
for b in base hackC; do timeout 200 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 & done; wait
ts compiled
for r in 1 2; do for b in base hackC; do
  ts "$b run $r"
  timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x6x256x512,4x4096x16x128x128,8x4096x6x256x512 --breakdown 2>&1 | grep "state_split\|recompute)"
done; done
ts end
