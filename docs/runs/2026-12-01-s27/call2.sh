#!/usr/bin/env bash
# Session 27, call 2: where the GVA head offset is formed. v3: once per CTA (QkHead, two 32-bit
# registers); v4: per use, with the pre-GVA arithmetic when VG = 1. Both with sum_head_groups 8
# elements per thread. The full selftest on each, A/B/C against base (main) alternating at the
# target shapes, both at GVA shapes; then FLA 0.6.0 at the GVA shapes and B4 in the same call.
set -u
. scripts/device_env.sh
O=$OUT
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null &
W=1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64
for b in base v3 v4; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
for b in v3 v4; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 200 target/device/gdn-$b selftest --device cuda > $O/selftest_$b.log 2>&1; echo "selftest exit $?" >> $O/selftest_$b.log
  tail -2 $O/selftest_$b.log; grep "FAIL\| NO \|ERROR" $O/selftest_$b.log | head -10
done
ts selftests
S=4x4096x16x128x128,8x2048x16x128x128,1x16384x16x128x128,4x4096x6x256x512,2x8192x16x128x128
G=4x4096x16x128x128x32,4x4096x32x128x128,1x16384x16x128x128x32,1x16384x32x128x128
{
for r in 1 2; do
  for b in base v3 v4; do
    ts "$b run $r"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 120 target/device/gdn-$b bench kernels --shapes $S 2>&1 | grep "^| [0-9]" | head -5
  done
done
for b in v3 v4; do
  ts "$b GVA shapes"; GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 120 target/device/gdn-$b bench kernels --shapes $G --out $O/bench_$b 2>&1 | grep "^| [0-9]" | head -4
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts FLA
SHAPES="4,4096,16,128,128,32;1,16384,16,128,128,32;4,4096,16,128,128" PYTHONPATH=/tmp/site OUT=$O \
  timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
for b in v3 v4; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 120 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128x32,1x16384x16x128x128x32,4x4096x16x128x128 2>&1 | grep "^| [0-9]" | head -3
done
ts end
