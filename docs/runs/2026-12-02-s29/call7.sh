#!/usr/bin/env bash
# Session 29, call 7: the model selftest of the final binary (its FP8 rows, the worst FP8 weight's
# gradient included), which call 6's full selftest does not run.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-fp8e
timeout 200 $N selftest --device cuda --filter model > $O/selftest_model.log 2>&1; echo "exit $?" >> $O/selftest_model.log
grep "FP8\|checks\|exit\|NO " $O/selftest_model.log | head -12
