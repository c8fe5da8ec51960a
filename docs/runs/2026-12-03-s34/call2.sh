#!/usr/bin/env bash
# Session 34, call 2: main (dc0d7fa, the kernels of 40f68a5, which call 1 timed): the full
# selftest and the model selftest, for the closing note's tables.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-main
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 400 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?" >> $O/selftest.log
grep -i "NO \|checks\|exit\|rror" $O/selftest.log | head -20; ts selftest
timeout 120 $N selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "checks\|exit\|NO " $O/selftest_model.log | head -12; ts end
