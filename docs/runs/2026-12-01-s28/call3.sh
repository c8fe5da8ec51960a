#!/usr/bin/env bash
# Session 28, call 3: where prep's time goes (timing only; p1-p4 give wrong results on purpose).
# p1: no T solve (its three steps); p2: no W and U products (prep and wu; accumulators zero);
# p3: no W and U stores (prep and wu); p4: no KKᵀ / M / P products. Eager per-stage
# breakdowns, main and each hack alternating.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
W=1x1024x16x128x128,1x1024x6x256x512
for b in main p1 p2 p3 p4; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
S=4x4096x16x128x128,4x4096x6x256x512
{
for r in 1 2; do
  for b in main p1 p2 p3 p4; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 150 target/device/gdn-$b bench kernels --shapes $S --breakdown 2>&1 | grep "^breakdown\|^| [a-z]"
  done
done
} > $O/ab.log 2>&1
grep "===\|prep\|wu" $O/ab.log
ts end
