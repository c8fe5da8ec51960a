#!/usr/bin/env bash
# The K-split state passes on the GPU machine (session 5): the delta-rule selftest with each
# K split forced (GDN_DR_KS for the forward-type passes, GDN_DR_SB_KS for the reverse pass, with
# the fused and split forwards and 1 or 2 column groups), then `bench kernels --breakdown`
# unsplit, KS = 2 and KS = 4, one binary. Everything is packed into $OUT/ks.tgz.
# Usage: GDN_BIN=path/to/gdn OUT=folder bash scripts/device_ks.sh
set -u
. "$(dirname "$0")/device_env.sh"
export GDN_CACHE_DIR=${GDN_CACHE_DIR:-/tmp/gdn_cache}
W=$OUT/ks
mkdir -p "$W"
st() {
  local name=$1
  shift
  env "$@" timeout 150 "$B" selftest --device cuda --filter delta_rule > "$W/selftest_$name.log" 2>&1
  echo "selftest $name: exit $?; $(grep -c '| NO ' "$W/selftest_$name.log") over, $(grep -c '| yes' "$W/selftest_$name.log") within tolerance"
}
bench() {
  local name=$1
  shift
  env "$@" timeout 150 "$B" bench kernels --breakdown --out "$W/bench_$name" > "$W/bench_$name.log" 2>&1
  echo "bench $name: exit $?"
  grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ /' "$W/bench_$name.log" | cut -d'|' -f2-8
  grep -E '^breakdown' "$W/bench_$name.log" | sed 's/(eager.*//'
}
st default
st ks2_fused GDN_DR_KS=2 GDN_DR_SB_KS=2 GDN_DR_FWD=fused
st ks4_split GDN_DR_KS=4 GDN_DR_SB_KS=4 GDN_DR_FWD=split
st ks2_split_nw2 GDN_DR_KS=2 GDN_DR_SB_KS=2 GDN_DR_FWD=split GDN_DR_SF_NW=2 GDN_DR_SB_NW=2
st ks4_fused_nw1 GDN_DR_KS=4 GDN_DR_SB_KS=4 GDN_DR_FWD=fused GDN_DR_SF_NW=1 GDN_DR_SB_NW=1
bench default
bench ks2 GDN_DR_KS=2 GDN_DR_SB_KS=2
bench ks4 GDN_DR_KS=4 GDN_DR_SB_KS=4
(cd "$OUT" && tar czf /tmp/ks.tgz ks && rm -rf ks && mv /tmp/ks.tgz .)
