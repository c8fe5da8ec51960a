#!/usr/bin/env bash
# Session 16, call 1: the warp-specialised reverse pass (dṼ_loc warps beside the state warps) and
# kernel 4 v6 (Pᵀ as register fragments) — the selftest, the backward forced plain / ws
# alternating, breakdowns; the previous binary's breakdown for kernel 4 v5 against v6.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; P=target/device/gdn-old
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,4x4096x16x64x64,4x4096x16x64x128
{
ts "selftest"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep "| no" $O/selftest.log | head
grep -i "reverse pass" $O/selftest.log | grep -v "| yes" | head
grep -ic "reverse pass" $O/selftest.log
for r in plain1:plain ws1:ws plain2:plain ws2:ws; do
  name=${r%%:*}; f=${r#*:}
  ts "bench $name"; GDN_DR_BWD=$f timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]\|forward" | head -12
done
for f in plain ws; do
  ts "breakdown $f"
  GDN_DR_BWD=$f timeout 90 $N bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|bwd: "
done
ts "breakdown old binary"
timeout 90 $P bench kernels --shapes 4x4096x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|bwd: "
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
