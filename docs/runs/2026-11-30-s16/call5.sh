#!/usr/bin/env bash
# Session 16, call 5: kernel 4 forms Pᵀ while its first dO slices land (q and k in their own
# cp.async group) — the delta-rule selftest, then kernel 4 against call 3's binary (gdn-old),
# alternating, at shapes where the plain reverse path runs.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; P=target/device/gdn-old
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
{
ts "selftest (delta rule)"
timeout 200 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep "| no" $O/selftest.log | head
for r in old1:$P new1:$N old2:$P new2:$N; do
  name=${r%%:*}; b=${r#*:}
  ts "$name"
  GDN_DR_BWD=plain timeout 60 $b bench kernels --shapes 4x4096x16x128x128,2x8192x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|dvloc"
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
