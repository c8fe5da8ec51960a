#!/usr/bin/env bash
# Session 31, call 4c (the device time left allows only this): the delta-rule selftest on
# gdn-new2 (40f68a5), whose led variants (dr_state_ws_led, dr_prep_led) had not run on the GPU.
set -u
for f in target/device/gdn-new2.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
GDN_CACHE_DIR=/tmp/gdn_cache timeout 140 target/device/gdn-new2 selftest --device cuda --filter delta_rule > $OUT/selftest_new2.log 2>&1; echo "exit $?" >> $OUT/selftest_new2.log
grep -i "NO \|checks\|exit\|rror" $OUT/selftest_new2.log | head; grep "led by prep" $OUT/selftest_new2.log | cut -c1-140
