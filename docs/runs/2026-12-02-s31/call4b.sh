#!/usr/bin/env bash
# Session 31, call 4b (call 4 cut to the device time left): gdn-new2 (40f68a5: unled kernels as in
# cb3ab3f per ptxas, the lead's waits in led variants only). The delta-rule selftest (8 led rows
# bitwise), then gdn-base (cb3ab3f) and gdn-new2 once each on B4·K128, K256 and B2·T8192.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
R=4x4096x16x128x128,4x4096x6x256x512,2x8192x16x128x128
GDN_CACHE_DIR=/tmp/gdn_cache_base timeout 150 target/device/gdn-base bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
GDN_CACHE_DIR=/tmp/gdn_cache_new2 timeout 120 target/device/gdn-new2 selftest --device cuda --filter delta_rule > $O/selftest_new2.log 2>&1; echo "exit $?" >> $O/selftest_new2.log
grep -i "NO \|checks\|exit\|rror" $O/selftest_new2.log | head; grep -c "led by prep.*yes" $O/selftest_new2.log; ts selftest
wait
for b in base new2; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 60 target/device/gdn-$b bench kernels --shapes $R --reps 30 --out /tmp/b_$b > /tmp/b_$b.log 2>&1; echo "$b exit $?"
  grep "^| [0-9]" /tmp/b_$b.log | head -3 | cut -d'|' -f2-8; cat /tmp/b_$b.log >> $O/bench_ab.log
done
ts end
