#!/usr/bin/env bash
# Session 27, call 6: the delta-rule selftest on the last binary (its refusal rows share a helper).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
timeout 250 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|ERROR" $O/selftest.log | head; grep "refused" $O/selftest.log | grep -v KeptForward | cut -c1-140
