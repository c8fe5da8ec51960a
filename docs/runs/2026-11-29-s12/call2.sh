#!/usr/bin/env bash
# Session 12, call 2: FLA's 1.3B training step (fla_train.py, Triton cache from session 11 carried)
# and gdn's (new binary, auto at 68.9 GB and lean) in the same call.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
# gdn's kernels compile on the CPU while FLA's Triton compiles.
( $N bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
TIMEOUT=430 bash scripts/device_fla_train.sh 1.3B > $O/fla.log 2>&1
wait
{
ts "gdn auto 68.9"; timeout 100 $N bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
ts "gdn lean"; timeout 100 $N bench train 2>&1 | grep "s/step"
ts done
} > $O/bench.log 2>&1
