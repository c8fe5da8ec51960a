#!/usr/bin/env bash
# Session 28, call 4: the warp-specialised forward's output warps on wgmma (h_c and Ṽ handed over
# as core matrices). The delta-rule selftest on the new binary (wgo), then main and wgo
# alternating: per-stage breakdowns and the README bench rows at K <= 128.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x16x64x64
for b in main wgo; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_wgo timeout 300 target/device/gdn-wgo selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|rror" $O/selftest.log | head -20; grep "warp-specialised" $O/selftest.log | head -8
ts selftest
S=4x4096x16x128x128,8x2048x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x16x64x64
{
for r in 1 2; do
  for b in main wgo; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 150 target/device/gdn-$b bench kernels --shapes $S 2>&1 | grep "^| [0-9]"
  done
done
for b in main wgo; do
  ts "$b breakdown"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 150 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128,4x4096x16x64x64 --breakdown 2>&1 | grep "^breakdown\|fwd: "
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts end
