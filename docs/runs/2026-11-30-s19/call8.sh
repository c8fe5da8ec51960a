#!/usr/bin/env bash
# Session 19, call 8: the K = 256 state passes' picks re-checked on the final binary (now that
# the split pass does not spill): breakdowns at B4 and B8·T4096·H6·K256·V512 with the cost
# model's choice and with forced column groups (GDN_DR_SF_NW, GDN_DR_SB_NW) and K splits.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 100 $N bench kernels --shapes 1x1024x6x256x512 --reps 1 > /dev/null 2>&1
ts compiled
S=4x4096x6x256x512,8x4096x6x256x512
{
for e in "" GDN_DR_SF_NW=4 GDN_DR_SF_NW=2 GDN_DR_KS=2 GDN_DR_SB_NW=4 GDN_DR_SB_KS=2; do
  ts "env: ${e:-default}"; env $e timeout 40 $N bench kernels --shapes $S --breakdown 2>&1 | grep "state\|^| [0-9]* | 4096 | 6 | 256 | 512 | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]"
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
