#!/usr/bin/env bash
# Session 17, call 9: the final binary (c797af8, call 8's "base"): full selftest and the README
# bench (decode included).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-base
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log
timeout 100 $N bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
tail -n 32 $O/bench.log
