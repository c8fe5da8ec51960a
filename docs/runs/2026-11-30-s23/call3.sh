#!/usr/bin/env bash
# Session 23, call 3: the 1.3B training step (FLA's default config, B8·T4096), gdn (612e873's
# kernels, gdn-comb) and FLA 0.6.0's fla_train.py in the same call. No Triton cache was carried
# (this workspace had none), so FLA compiles here; its cache comes back in pieces for later calls.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-comb
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
{
ts "gdn auto 68.9"; timeout 150 $N bench train --save auto --memory-limit 68.9 --out $O/gdn_auto 2>&1 | grep -v "^\s*$" | tail -6
ts "gdn lean"; timeout 120 $N bench train 2>&1 | grep "s/step\|memory"
ts "FLA"
} > $O/bench.log 2>&1
cat $O/bench.log
TIMEOUT=380 bash scripts/device_fla_train.sh 1.3B > $O/fla.log 2>&1
cat $O/fla.log
ts end
