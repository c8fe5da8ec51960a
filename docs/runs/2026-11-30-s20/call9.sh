#!/usr/bin/env bash
# Session 20, call 9 (an experiment, not landed): the warp-specialised reverse pass's dṼ_loc
# warps read the forward's P (left in the workspace by prep; GDN_DR_BWD_P=1) instead of forming
# Pᵀ from Q and K. Valid where the backward follows a warp-specialised forward on the same
# workspace, as in `bench kernels`. gdn-bp with and without the variable, alternating; the
# delta-rule selftest with it (rows after a forced split forward read a stale P: expected to fail).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; C=target/device/gdn-bp
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $C bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
ts compiled
GDN_DR_BWD_P=1 timeout 200 $C selftest --device cuda --filter delta_rule > $O/selftest_bp.log 2>&1; echo "selftest exit $?" >> $O/selftest_bp.log
tail -2 $O/selftest_bp.log; grep -c "| no " $O/selftest_bp.log; grep "| no " $O/selftest_bp.log | cut -c1-160 | head -12
{
S=4x4096x16x128x128,8x2048x16x128x128,4x4096x16x64x64
for r in 1 2; do
 for e in 0 1; do
  ts "GDN_DR_BWD_P=$e run $r"; GDN_DR_BWD_P=$e timeout 100 $C bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|state_bwd"
 done
done
ts done
} > $O/bench.log 2>&1
grep "===\|state_bwd\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
