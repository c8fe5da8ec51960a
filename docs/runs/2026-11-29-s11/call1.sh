#!/usr/bin/env bash
# Session 11, call 1: dh_c in bf16 (new) against main 22904d1 (base), FLA at B4 beside them.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; B=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi -L > $O/gpu.txt 2>&1
# The base binary's kernels compile on the CPU while the new one runs its selftest.
( $B bench kernels --shapes 1x128x1x128x128,1x128x1x256x512 --reps 1 > /dev/null 2>&1 ) &
ts selftest > $O/selftest.log
timeout 240 $N selftest --device cuda >> $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
wait
{
for r in new1:$N base:$B new2:$N; do
  name=${r%%:*}; bin=${r#*:}
  ts "bench all $name"; timeout 120 $bin bench kernels --out $O/$name 2>&1 | tail -n 30
done
for r in new:$N base:$B; do
  name=${r%%:*}; bin=${r#*:}
  ts "breakdown B4 + training shape $name"
  timeout 90 $bin bench kernels --shapes 4x4096x16x128x128,8x4096x6x256x512 --breakdown 2>&1 | tail -n 50
done
ts done gdn
} > $O/bench.log 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
mkdir -p .fla_cache
left=$(( 560 - ($(date +%s) - T0) ))
echo "fla budget $left s" > $O/fla.log
( export PYTHONPATH=/tmp/site TRITON_CACHE_DIR=$(realpath .fla_cache) SHAPES="4,4096,16,128,128" OUT=$O
  timeout $left python3 scripts/fla_stages.py 2>&1 | grep -v Warning | tail -n 40 ) >> $O/fla.log
echo "fla exit ${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s" >> $O/fla.log
tar czf $O/fla_triton_cache.tgz -C .fla_cache . 2>/dev/null
