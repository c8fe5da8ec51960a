#!/usr/bin/env bash
# Session 19, call 9: call 8's missing case, 8 warps forced at B8·T4096·H6·K256·V512 (the cost
# model picks 4 there), for the split pass, the recompute and the reverse pass.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for e in "" "GDN_DR_SF_NW=8 GDN_DR_SB_NW=8" ""; do
  ts "env: ${e:-default}"; env $e timeout 60 $N bench kernels --shapes 8x4096x6x256x512 --breakdown 2>&1 | grep "state\|^| [0-9]* | 4096 | 6 | 256 | 512 | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]"
done > $O/bench.log 2>&1
cat $O/bench.log
