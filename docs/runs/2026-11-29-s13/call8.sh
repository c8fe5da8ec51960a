#!/usr/bin/env bash
# Session 13, call 8: the final binary's full selftest, gdn's kernels at the README shapes, and
# FLA 0.6.0's chunked gated delta rule at the three target shapes in the same call
# (scripts/fla_stages.py: graph-replayed fwd and fwd+bwd, and FLA's kernels one by one).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 150 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
# FLA alone on the GPU (its Triton compile included), then gdn's kernels.
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
{
ts "gdn bench kernels (README shapes, decode)"; timeout 120 $N bench kernels --out $O 2>&1 | tail -n 30
ts "breakdown"; timeout 90 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --breakdown 2>&1 | grep "breakdown\|fwd: \|bwd: "
ts done
} > $O/bench.log 2>&1
ls $O
