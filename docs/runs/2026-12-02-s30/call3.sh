#!/usr/bin/env bash
# Session 30, call 3: issue 4's same-call comparison. gdn's 1.3B FP8 step (0284e2a: SwiGLU fused
# with its FP8 codes) before and after FLA 0.6.0's fla_train.py (FLA's default 1.3B config,
# B8·T4096, pure bf16), then gdn's bf16 step. No Triton cache was carried (none in this
# checkout): FLA compiles here, and its cache comes back in pieces (scripts/device_fla_train.sh).
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-a
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
gdn() { # tag, extra flags
  timeout 110 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 5 --save auto --memory-limit 68.9 $2 --out /tmp/gdn_$1 > /tmp/gdn_$1.log 2>&1
  echo "gdn $1: exit $?"; grep "tokens/s\|rror" /tmp/gdn_$1.log | tail -2
}
{ ts "gdn fp8 (before FLA)"; gdn fp8_before --fp8; } >> $O/bench.log 2>&1
ts "FLA" >> $O/bench.log
TIMEOUT=400 bash scripts/device_fla_train.sh 1.3B > $O/fla.log 2>&1
cat $O/fla.log >> $O/bench.log
{ ts "gdn fp8 (after FLA)"; gdn fp8_after --fp8; ts "gdn bf16"; gdn bf16 ""; ts end; } >> $O/bench.log 2>&1
cat $O/bench.log
