#!/usr/bin/env bash
# Session 30, call 1: where the FP8 1.3B step's time goes (main a0e9e59): `bench train --fp8
# --breakdown`, op group by op group.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-base
timeout 200 $N bench train --preset fla-1.3b --seq-len 4096 --batch-size 8 --steps 3 --save auto --memory-limit 68.9 --fp8 --breakdown --out $O > $O/bench_train_fp8.log 2>&1; echo "exit $?" >> $O/bench_train_fp8.log
grep -v "^| [A-Z][a-zA-Z]* |" $O/bench_train_fp8.log | tail -70
