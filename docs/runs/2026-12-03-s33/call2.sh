#!/usr/bin/env bash
# Session 33, call 2: call 1's led recompute was 2× slower because no wu CTA fitted beside the pass
# (the driver sized the SMs' shared-memory carveout for one pass CTA). gdn-new now asks for the
# whole carveout (CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 100) for the led recompute
# and dr_wu_led. Selftest (delta rule), then main and new alternating, the forced shares, and new
# unled (GDN_DR_LEAD=0).
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in main new; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
done
wait; ts compiled
GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 200 target/device/gdn-new selftest --device cuda --filter delta_rule > $O/selftest_new.log 2>&1; echo "exit $?" >> $O/selftest_new.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_new.log | head; grep -c "recompute led by wu.*yes" $O/selftest_new.log; ts selftest
R=4x4096x16x128x128,4x4096x8x128x128
for r in 1 2; do
  for b in main new; do
    GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes $R > /tmp/b_$b$r.log 2>&1; echo "$b run $r exit $?"
    grep "^| [0-9]" /tmp/b_$b$r.log | head -2 | cut -d'|' -f2-8; cat /tmp/b_$b$r.log >> $O/bench_ab.log
  done
done
ts bench
for s in 0 0.15 0.3 0.45; do
  GDN_DR_LEAD=$s GDN_CACHE_DIR=/tmp/gdn_cache_new timeout 60 target/device/gdn-new bench kernels --shapes $R > /tmp/s.log 2>&1
  echo "share $s:"; grep "^| [0-9]" /tmp/s.log | head -2 | cut -d'|' -f2-8; cat /tmp/s.log >> $O/bench_share.log
done
ts end
