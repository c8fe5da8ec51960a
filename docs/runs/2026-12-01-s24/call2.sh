#!/usr/bin/env bash
# Session 24, call 2: graphs instantiated with USE_NODE_PRIORITY (gdn-prio) against gdn-fork
# (call 1: the side stream's lower priority held eagerly but not in graph replays) and gdn-main.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 target/device/gdn-prio bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1
ts compiled
S=4x4096x6x256x512,1x16384x16x128x128,8x4096x6x256x512
{
for r in 1 2; do
  for b in gdn-main gdn-fork gdn-prio; do
    ts "$b run $r"; timeout 150 target/device/$b bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -3
  done
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
