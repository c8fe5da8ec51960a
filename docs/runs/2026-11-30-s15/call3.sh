#!/usr/bin/env bash
# Session 15, call 3: the warp-specialised forward with two output groups taking chunks in turn (the
# groups of 4 warps) — the selftest, then the forward forced split / ws alternating, breakdown.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,4x4096x16x64x64,4x4096x16x64x128
{
ts "selftest"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep -i "warp-spec" $O/selftest.log | grep -v "| yes" | head
grep -ic "warp-spec" $O/selftest.log
for r in split1:split ws1:ws split2:split ws2:ws; do
  name=${r%%:*}; f=${r#*:}
  ts "bench $name"; GDN_DR_FWD=$f timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]" | head -5
done
for f in split ws; do
  ts "breakdown $f"
  GDN_DR_FWD=$f timeout 90 $N bench kernels --shapes 4x4096x16x128x128 --breakdown 2>&1 | grep "breakdown\|fwd: "
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
