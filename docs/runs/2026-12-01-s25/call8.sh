#!/usr/bin/env bash
# Session 25, call 8: the final binary against FLA 0.6.0 in the same call at the three target
# shapes (gdn before and after FLA; CUDA-graph replays, FLA's stages per kernel).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-final
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
S=4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1
ts compiled
timeout 100 $N bench kernels --shapes $S > $O/bench1.log 2>&1
grep "^| [0-9]" $O/bench1.log | head -6
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
ts FLA
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 330 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 100 $N bench kernels --shapes $S > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
ts end
