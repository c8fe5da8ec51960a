#!/usr/bin/env bash
# Session 25, call 6: the upper bound of what faster loads could give the split pass — timing
# only, wrong results on purpose: hackA issues W and K for the first two chunks only, hackB also
# U; base is main's kernels. Stage breakdowns (eager, each stage alone).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512
for b in base hackA hackB; do timeout 200 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 & done; wait
ts compiled
for r in 1 2; do for b in base hackA hackB; do
  ts "$b run $r"
  timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x6x256x512,4x4096x16x128x128,8x4096x6x256x512 --breakdown 2>&1 | grep "^breakdown\|state_split\|recompute"
done; done
ts end
