#!/usr/bin/env bash
# Session 27, call 5: the final binary. Full selftest (with the GVA-group refusal row); the README
# bench (five chunk shapes and three decode shapes) and a Qwen3.5-heads GVA shape, then FLA 0.6.0
# at the same chunk shapes in the same call, then gdn again; ratios by scripts/compare_fla.py.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null &
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
wait
ts compiled
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|ERROR\|refused" $O/selftest.log | head -10
ts selftest
timeout 200 $N bench kernels --out $O/bench1 > $O/bench1.log 2>&1; echo "bench exit $?" >> $O/bench1.log
grep "^| [0-9]\|exit" $O/bench1.log | head -20
timeout 100 $N bench kernels --shapes 4x4096x16x128x128x32 --out $O/bench1_gva 2>&1 | grep "^| [0-9]" | head -1
ts FLA
SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512;4,4096,16,128,128,32" \
  PYTHONPATH=/tmp/site OUT=$O timeout 330 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 150 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512,4x4096x16x128x128x32 --out $O/bench2 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
python3 scripts/compare_fla.py $O/bench2 > /dev/null 2>&1
cp $O/fla_stages.json $O/bench2/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench2 | grep "graph\|^| B" | head -10
cp $O/fla_stages.json $O/bench1/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench1 | grep "graph" | head -10
ts end
