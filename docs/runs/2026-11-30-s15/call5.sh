#!/usr/bin/env bash
# Session 15, call 5: the warp-specialised forward v2 — the state warps form diag(s γ) Q h_c (the
# fused pass's Sᵀ Qᵀ) and hand it over; the output groups read K, Q and G from the state warps'
# slots. The selftest, split / ws alternating, breakdown, Nsight Compute on state_ws at B4.
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache GDN_NVRTC_LINEINFO=1
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
SH=8x2048x16x128x128,4x4096x16x128x128,2x8192x16x128x128,1x16384x16x128x128,4x4096x16x64x64,4x4096x16x64x128
{
ts "selftest"
timeout 200 $N selftest --device cuda > $O/selftest.log 2>&1; echo "exit $?"; tail -1 $O/selftest.log
for r in split1:split ws1:ws split2:split ws2:ws; do
  name=${r%%:*}; f=${r#*:}
  ts "bench $name"; GDN_DR_FWD=$f timeout 100 $N bench kernels --shapes $SH 2>&1 | grep "^| [0-9]" | head -6
done
ts "breakdown ws"
GDN_DR_FWD=ws timeout 90 $N bench kernels --shapes 4x4096x16x128x128 --breakdown 2>&1 | grep "breakdown\|fwd: "
ts "ncu"
S=4x4096x16x128x128
mkdir -p $O/n
GDN_DR_FWD=ws timeout 150 "$NCU" --clock-control none --kernel-name regex:'^dr_state_ws_k128' --launch-skip 3 --launch-count 1 \
  --set full --section SourceCounters -o $O/n/ws $N bench kernels --shapes $S --reps 3 > $O/n/ws_run.log 2>&1
echo "ncu exit $?"
timeout 60 "$NCU" --import $O/n/ws.ncu-rep --page details --csv > $O/n/ws_details.csv 2>&1
timeout 60 "$NCU" --import $O/n/ws.ncu-rep --page source --csv --print-source cuda,sass > $O/n/ws_source.csv 2>&1
rm -f $O/n/ws.ncu-rep
tar czf $O/ncu.tgz -C $O n && rm -rf $O/n
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
