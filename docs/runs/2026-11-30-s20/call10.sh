#!/usr/bin/env bash
# Session 20, call 10: the forward's P kept behind the saved T for the warp-specialised reverse
# pass (gdn-final3) against call 6's final binary (gdn-final2): full selftest and model selftest
# of final3, breakdowns alternating, the README bench of final3, FLA 0.6.0 at B4 only.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; BASE=target/device/gdn-final2; C=target/device/gdn-final3
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
for b in $BASE $C; do
timeout 150 $b bench kernels --shapes 1x1024x16x128x128,1x1024x16x64x64,1x1024x6x256x512 --reps 1 > /dev/null 2>&1 &
done
wait
ts compiled
timeout 120 $C selftest --device cuda > $O/selftest.log 2>&1; echo "selftest exit $?" >> $O/selftest.log
tail -2 $O/selftest.log; grep "from the forward's P" $O/selftest.log | cut -c1-150 | head -3
timeout 60 $C selftest --device cuda --filter model > $O/model_selftest.log 2>&1; echo "exit $?" >> $O/model_selftest.log
tail -2 $O/model_selftest.log
{
S=4x4096x16x128x128,8x2048x16x128x128,4x4096x16x64x64,1x16384x16x128x128
for b in $BASE $C $BASE $C; do
  ts "$b breakdown"; timeout 60 $b bench kernels --shapes $S --breakdown 2>&1 | grep "^| [0-9]\|state_bwd\|prep"
done
ts "README bench final3"; timeout 60 $C bench kernels 2>&1
ts done
} > $O/bench.log 2>&1
grep "===\|state_bwd\|^| [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9]* | [0-9.]* / [0-9.]* | [0-9.]* / [0-9.]* | [0-9]" $O/bench.log
timeout 30 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
SHAPES="4,4096,16,128,128" PYTHONPATH=/tmp/site OUT=$O timeout 110 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log
ts end
