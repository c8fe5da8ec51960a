#!/usr/bin/env bash
# Session 28, call 5: kernel 3 (fwd_o) on wgmma too (wgo2) against call 4's binary (wgo, the
# warp-specialised forward's output warps on wgmma). Full selftest on wgo2; wgo and wgo2
# alternating where fwd_o runs (K = 256; the split forward forced at K = 128); then the README
# bench with wgo2, FLA 0.6.0 at the same shapes in the same call, wgo2 again; ratios by
# scripts/compare_fla.py.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-wgo2
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null &
W=1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64
for b in wgo wgo2; do
  GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 250 target/device/gdn-$b bench kernels --shapes $W --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
export GDN_CACHE_DIR=/tmp/gdn_cache_wgo2
timeout 250 $N selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "FAIL\| NO \|rror" $O/selftest.log | head -10; grep "unsplit split pass, bitwise" $O/selftest.log | head -3
ts selftest
{
for r in 1 2; do
  for b in wgo wgo2; do
    ts "$b run $r"
    GDN_CACHE_DIR=/tmp/gdn_cache_$b timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x6x256x512,8x4096x6x256x512 --breakdown 2>&1 | grep "^breakdown\|fwd: \|^| [0-9]"
    GDN_CACHE_DIR=/tmp/gdn_cache_$b GDN_DR_FWD=split timeout 100 target/device/gdn-$b bench kernels --shapes 4x4096x16x128x128 --breakdown 2>&1 | grep "^breakdown\|fwd: "
  done
done
} > $O/ab.log 2>&1
cat $O/ab.log
ts "README bench"
timeout 200 $N bench kernels --out $O/bench1 > $O/bench1.log 2>&1; echo "bench exit $?" >> $O/bench1.log
grep "^| [0-9]\|exit" $O/bench1.log | head -20
ts FLA
SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512" \
  PYTHONPATH=/tmp/site OUT=$O timeout 300 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts "gdn again"
timeout 150 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --out $O/bench2 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
cp $O/fla_stages.json $O/bench2/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench2 | grep "graph\|^| B" | head -10
cp $O/fla_stages.json $O/bench1/ 2>/dev/null; python3 scripts/compare_fla.py $O/bench1 | grep "graph" | head -10
ts end
