#!/usr/bin/env bash
# Session 26, call 4: after the fix of the dq/dk split, the model and GPU-decode selftests (four
# configurations, one GVA), and short GPU training runs of the small preset with and without GVA.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-gva
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 240 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "model selftest exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log; grep "FAIL\| NO " $O/model_selftest.log | head; grep -c "GVA" $O/model_selftest.log
ts "model selftest"
cat src/*.rs src/*/*.rs > /tmp/corpus.txt
timeout 150 $N train --data /tmp/corpus.txt --preset small --steps 200 --device cuda --out /tmp/r-plain > $O/train_plain.log 2>&1; echo "exit $?" >> $O/train_plain.log
timeout 150 $N train --data /tmp/corpus.txt --config docs/runs/2026-12-01-s26/gva_small.json --steps 200 --device cuda --out /tmp/r-gva > $O/train_gva.log 2>&1; echo "exit $?" >> $O/train_gva.log
tail -3 $O/train_plain.log $O/train_gva.log
timeout 60 $N generate --checkpoint /tmp/r-gva/checkpoint --prompt "fn main" --max-tokens 60 --device cuda > $O/generate_gva.log 2>&1; echo "exit $?" >> $O/generate_gva.log
tail -4 $O/generate_gva.log
ts end
