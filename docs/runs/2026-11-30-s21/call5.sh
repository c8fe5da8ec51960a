#!/usr/bin/env bash
# Session 21, call 5: FLA 0.6.0 and gdn-wyb (11b0bf3's kernels) in the same call at the three
# target shapes (graph-replayed fwd and fwd+bwd, gdn's breakdown), and the 1.3B step at FLA's
# memory.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-wyb
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
timeout 150 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512 --reps 1 > /dev/null 2>&1
ts compiled
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512,8x4096x6x256x512 --breakdown > $O/breakdown.log 2>&1
ts "train auto 68.9"; timeout 60 $N bench train --save auto --memory-limit 68.9 2>&1 | grep "s/step" > $O/train.log
cat $O/train.log
grep "^| [0-9]" $O/breakdown.log | head -8
timeout 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
ts FLA
SHAPES="4,4096,16,128,128;1,16384,16,128,128;4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O \
  timeout 330 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 100 $N bench kernels --shapes 4x4096x16x128x128,1x16384x16x128x128,4x4096x6x256x512 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -8
ts end
