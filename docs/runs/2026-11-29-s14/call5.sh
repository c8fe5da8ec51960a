#!/usr/bin/env bash
# Session 14, call 5: the final binary (f521051) — full selftest, model selftest, FLA 0.6.0 at the
# three target shapes then gdn's kernels at the README shapes (with the kept fwd+bwd table), one
# after the other, and the 1.3B step at FLA's memory.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
timeout 90 $N selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
{
ts "gdn bench kernels (README shapes, decode)"; timeout 150 $N bench kernels --out $O 2>&1 | tail -n 40
ts "breakdown"; timeout 90 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
ts "train auto 68.9"; timeout 60 $N bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step"
ts done
} > $O/bench.log 2>&1
tail -3 $O/selftest.log; tail -2 $O/model_selftest.log; cat $O/fla_stages.log | grep "^FLA"; cat $O/bench.log
