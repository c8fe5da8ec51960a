#!/usr/bin/env bash
# Session 26, call 5: the final binary (allow_neg_eigval, GVA, SIGPIPE): the README bench (the
# decode kernel gained a group argument; the gates a β scale) and the 1.3B step, against
# session 25's figures (cross-call).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
ts "README bench"; timeout 240 $N bench kernels > $O/bench.log 2>&1; echo "bench exit $?" >> $O/bench.log
grep "^| [0-9]\|exit\|TB/s" $O/bench.log | head -40
ts "1.3B step"; timeout 200 $N bench train --save auto --memory-limit 68.9 --out $O/gdn_auto > $O/train.log 2>&1
grep -v "^\s*$" $O/train.log | tail -4
ts end
