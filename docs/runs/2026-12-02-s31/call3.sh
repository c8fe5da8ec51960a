#!/usr/bin/env bash
# Session 31, call 3: FP8 scales in the checkpoint (gdn-new, 2b6d7d5) against the session-30
# binary (gdn-base, cb3ab3f): a small --fp8 run stopped at step 20 and resumed, against an
# unbroken one. Then the README kernel bench on gdn-new (prep leads the forward at B2·T8192),
# FLA 0.6.0 at the same shapes in the same call, gdn-new again; ratios by compare_fla.py.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new; BASE=target/device/gdn-base
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null &
W=/tmp/fp8-resume; rm -rf $W; mkdir -p $W; cat src/*.rs src/*/*.rs > $W/corpus.txt
c=(--data $W/corpus.txt --preset small --steps 40 --eval-every 10 --checkpoint-every 20 --quiet --device cuda --fp8)
GDN_CACHE_DIR=/tmp/gdn_cache_base timeout 200 $BASE bench kernels --shapes 1x1024x16x64x64 --reps 1 > /dev/null 2>&1 &
timeout 120 $N train "${c[@]}" --out $W/new 2>&1 | tail -2
timeout 120 $N train "${c[@]}" --out $W/new_split --stop-after 20 2>&1 | tail -1
ls $W/new_split/checkpoint/
timeout 120 $N train --resume --out $W/new_split --device cuda --fp8 2>&1 | grep -v "^\s*$" | tail -3
wait
export GDN_CACHE_DIR=/tmp/gdn_cache_base
timeout 120 $BASE train "${c[@]}" --out $W/base_split --stop-after 20 2>&1 | tail -1
timeout 120 $BASE train --resume --out $W/base_split --device cuda --fp8 --quiet 2>&1 | tail -1
export GDN_CACHE_DIR=/tmp/gdn_cache
python3 scripts/compare_runs.py $W/new $W/new_split $W/base_split | tee $O/fp8_resume.jsonl
cp $W/new/metrics.jsonl $O/fp8_small_metrics.jsonl
ts fp8 resume
timeout 150 $N bench kernels --out $O/bench1 > $O/bench1.log 2>&1; echo "bench exit $?" >> $O/bench1.log
grep "^| [0-9]\|exit" $O/bench1.log | head -20
ts FLA
SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512" \
  PYTHONPATH=/tmp/site OUT=$O timeout 280 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 100 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --out $O/bench2 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
cp $O/fla_stages.json $O/bench2/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench2 | grep "graph\|^| B" | head -10
cp $O/fla_stages.json $O/bench1/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench1 | grep "graph" | head -10
ts end
