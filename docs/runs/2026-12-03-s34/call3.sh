#!/usr/bin/env bash
# Session 34, call 3: FLA 0.6.0 at B4·T4096·H6·K256·V512 (call 1's FLA run ran out of time before
# it), with gdn timed before and after it in the same call.
set -u
for f in target/device/*.gz; do [ -e "$f" ] && { gunzip -f $f; chmod +x ${f%.gz}; }; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-main; S=4x4096x6x256x512
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 60 $N bench kernels --shapes $S --out $O/bench1 > $O/bench1.log 2>&1; grep "^| [0-9]" $O/bench1.log | head -2; ts FLA
SHAPES="4,4096,6,256,512" PYTHONPATH=/tmp/site OUT=$O timeout 330 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log; ts "gdn again"
timeout 60 $N bench kernels --shapes $S --out $O/bench2 > $O/bench2.log 2>&1
for b in bench1 bench2; do cp $O/fla_stages.json $O/$b/ 2>/dev/null; python3 scripts/compare_fla.py $O/$b | grep "graph" | head -2; done
ts end
