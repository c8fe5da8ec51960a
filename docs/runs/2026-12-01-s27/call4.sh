#!/usr/bin/env bash
# Session 27, call 4: call 3's 1.3B-class GVA and plain-32-head steps, which did not fit 68.9 GB
# under `--save auto`: lean (the default), with the budget of the whole GPU.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final; D=docs/runs/2026-12-01-s27
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for c in gva_1b plain32_1b; do
  timeout 200 $N bench train --config $D/$c.json --memory-limit 135 > $O/train_$c.log 2>&1; echo "exit $?" >> $O/train_$c.log
  grep -v "^\s*$" $O/train_$c.log | tail -2
  ts "$c step"
done
