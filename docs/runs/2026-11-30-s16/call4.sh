#!/usr/bin/env bash
# Session 16, call 4: does the state passes' cost model miss a faster variant? Every (column
# groups, K split) of the split pass (forward and recompute) and of the reverse pass forced in
# turn (GDN_DR_SF_NW / GDN_DR_KS, GDN_DR_SB_NW / GDN_DR_SB_KS), eager breakdown, at the shapes
# where the plain passes run: K256/V512 B4·H6, B1·T16384 and B2·T8192 at K = 128 (the
# backward forced plain there).
set -u
export GDN_CACHE_DIR=/tmp/gdn_cache
. scripts/device_env.sh
O=$OUT; N=target/device/gdn-new
T0=$(date +%s); ts() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
{
for sh in 4x4096x6x256x512 1x16384x16x128x128 2x8192x16x128x128; do
  ts "$sh default"
  GDN_DR_FWD=split GDN_DR_BWD=plain timeout 60 $N bench kernels --shapes $sh --breakdown 2>&1 | grep "breakdown\|state\|dvloc"
  for c in 1:1 2:1 4:1 8:1 1:2 1:4 2:2 2:4; do
    nw=${c%%:*}; ks=${c#*:}
    ts "$sh nw=$nw ks=$ks"
    GDN_DR_FWD=split GDN_DR_BWD=plain GDN_DR_SF_NW=$nw GDN_DR_KS=$ks GDN_DR_SB_NW=$nw GDN_DR_SB_KS=$ks \
      timeout 60 $N bench kernels --shapes $sh --breakdown 2>&1 | grep "breakdown\|state"
  done
done
ts done
} > $O/bench.log 2>&1
cat $O/bench.log
