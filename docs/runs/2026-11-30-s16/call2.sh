#!/usr/bin/env bash
# Session 16, call 2: the warp-specialised reverse pass with one group of 4 dṼ_loc warps (ws1,
# 8 warps) against two groups (ws, 12 warps) and the plain path (dvloc v6 + state_bwd), all
# alternating in one call; the selftest with the backward's warp-specialised rows on ws1.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,4x4096x16x64x64,4x4096x16x64x128
{
ts "selftest (delta rule), ws1"
GDN_DR_BWD=ws1 timeout 200 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep "| no" $O/selftest.log | head
for r in plain1:plain ws1:ws ws11:ws1 plain2:plain ws2:ws ws12:ws1; do
  name=${r%%:*}; f=${r#*:}
  ts "bench $name"; GDN_DR_BWD=$f timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]\|forward" | head -5
done
for f in plain ws ws1; do
  ts "breakdown $f"
  GDN_DR_BWD=$f timeout 90 $N bench kernels --shapes 4x4096x16x128x128,4x4096x16x64x128 --breakdown 2>&1 | grep "breakdown\|bwd: "
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
