#!/usr/bin/env bash
# Session 34, call 1: main (dc0d7fa; the kernels of 40f68a5) at the README shapes with FLA 0.6.0
# in the same call, gdn timed before and after FLA, for the closing note's tables.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-main
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1 &
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
wait; ts compiled
timeout 150 $N bench kernels --out $O/bench1 > $O/bench1.log 2>&1; echo "bench exit $?" >> $O/bench1.log
grep "^| [0-9]\|exit" $O/bench1.log | head -24; ts FLA
SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512" \
  PYTHONPATH=/tmp/site OUT=$O timeout 280 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log; ts "gdn again"
timeout 100 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --out $O/bench2 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
for b in bench1 bench2; do cp $O/fla_stages.json $O/$b/ 2>/dev/null; python3 scripts/compare_fla.py $O/$b | grep "graph\|^| B" | head -12; done
ts end
