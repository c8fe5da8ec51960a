#!/usr/bin/env bash
# Session 20, call 1: the fused forward (state pass + output, no h_c) against the split pass +
# fwd_o at K = 256 today (last measured in session 6), 4 and 8 warps; main's binary (451f2a9).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-main
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for s in 4x4096x6x256x512 8x4096x6x256x512; do
for e in "GDN_DR_FWD=split" "GDN_DR_FWD=fused" "GDN_DR_FWD=fused GDN_DR_SF_NW=4" "GDN_DR_FWD=split"; do
  ts "$s env: $e"; env $e timeout 90 $N bench kernels --shapes $s --breakdown 2>&1 | grep "fwd:\|^| [0-9]* | 4096 | 6 | 256 | 512 | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]"
done
done > $O/bench.log 2>&1
cat $O/bench.log
