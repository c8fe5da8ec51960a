#!/usr/bin/env bash
# Session 16, call 7: call 6's code with K's fragments up front again where reading them as the
# products go was slower (kernel 4 at K = 256, the dṼ_loc warps) — the delta-rule selftest and
# the breakdown (no old binary: the device time left allowed no second NVRTC compile).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
{
ts "selftest (delta rule)"
timeout 150 $N selftest --device cuda --filter delta_rule > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
grep "| no" $O/selftest.log | head
ts "breakdown"
timeout 40 $N bench kernels --shapes 4x4096x16x128x128,2x8192x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|dvloc\|state_bwd_ws"
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
