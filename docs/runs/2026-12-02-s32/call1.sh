#!/usr/bin/env bash
# Session 32, call 1: main (39a63e3; the kernels of 40f68a5) at the README shapes with FLA 0.6.0
# in the same call, twice around FLA; the led shapes with the lead on and off; then Nsight Compute
# (full set, per-SASS stall samples, lineinfo build) on prep, wu and dqk + wy at B4·T4096·H16·K128.
set -u
for f in target/device/*.gz; do gunzip -f $f; chmod +x ${f%.gz}; done
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-main
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1 &
GDN_CACHE_DIR=/tmp/gdn_cache_li GDN_NVRTC_LINEINFO=1 timeout 200 $N bench kernels --shapes 1x1024x16x128x128 --reps 1 > /dev/null 2>&1 &
timeout 200 $N bench kernels --shapes 1x1024x16x128x128,1x1024x6x256x512,1x1024x16x64x64 --reps 1 > /dev/null 2>&1
wait; ts compiled
timeout 150 $N bench kernels --out $O/bench1 > $O/bench1.log 2>&1; echo "bench exit $?" >> $O/bench1.log
grep "^| [0-9]\|exit" $O/bench1.log | head -20; ts FLA
SHAPES="8,2048,16,128,128;4,4096,16,128,128;2,8192,16,128,128;1,16384,16,128,128;4,4096,6,256,512" \
  PYTHONPATH=/tmp/site OUT=$O timeout 280 python3 scripts/fla_stages.py 2>&1 | grep -v Warning > $O/fla_stages.log
grep "^FLA" $O/fla_stages.log; ts "gdn again"
timeout 100 $N bench kernels --shapes 8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x6x256x512 --out $O/bench2 > $O/bench2.log 2>&1
grep "^| [0-9]" $O/bench2.log | head -6
for b in bench1 bench2; do cp $O/fla_stages.json $O/$b/ 2>/dev/null; python3 scripts/compare_fla.py $O/$b | grep "graph\|^| B" | head -12; done
ts lead
S=2x8192x16x128x128,4x4096x16x64x64,4x4096x8x128x128,2x4096x16x128x128
for r in 1 2; do
  for v in on off; do
    if [ $v = off ]; then export GDN_DR_LEAD=0; else unset GDN_DR_LEAD; fi
    timeout 100 $N bench kernels --shapes $S --out /tmp/bl_$v$r > /tmp/bl_$v$r.log 2>&1; echo "lead $v run $r exit $?"
    grep "^| [0-9]" /tmp/bl_$v$r.log | head -4 | cut -d'|' -f2-8; cat /tmp/bl_$v$r.log >> $O/bench_lead_ab.log
  done
done
unset GDN_DR_LEAD; ts ncu
export GDN_CACHE_DIR=/tmp/gdn_cache_li GDN_NVRTC_LINEINFO=1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu | head -1)
for x in "prep_k 1" "(wu_k|dqkwy_k) 2"; do
  set -- $x; n=$(( ${n:-0} + 1 ))
  timeout 150 "$NCU" --clock-control none --set full --import-source no --kernel-name regex:"^dr_$1" \
    --launch-skip 0 --launch-count $2 -o /tmp/r$n $N bench kernels --shapes 4x4096x16x128x128 --reps 1 > $O/ncu$n.log 2>&1
  echo "ncu $n exit $?"; tail -2 $O/ncu$n.log
  timeout 60 "$NCU" -i /tmp/r$n.ncu-rep --page details --csv > $O/details$n.csv 2>&1
  timeout 100 "$NCU" -i /tmp/r$n.ncu-rep --page source --csv --print-source sass > $O/sass$n.csv 2>&1
done
grep -h '"Kernel Name"' $O/sass*.csv | head; gzip $O/*.csv; ts end
