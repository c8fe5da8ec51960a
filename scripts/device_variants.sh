#!/usr/bin/env bash
# Kernel variants on the GPU machine: each argument is a step, "st NAME [VAR=value...]" (the
# delta-rule selftest with those variables) or "bench NAME [VAR=value...]" (`bench kernels
# --breakdown`), e.g. the K splits of session 5:
#   bash scripts/device_variants.sh "st ks2 GDN_DR_KS=2 GDN_DR_SB_KS=2" "bench default" \
#     "bench ks4 GDN_DR_KS=4 GDN_DR_SB_KS=4"
# BIN=path in a step runs another binary (a branch built beside main, both carried), e.g.
#   "bench main" "bench next BIN=./target/device/gdn-next"
# Logs are packed into $OUT/variants.tgz; a summary line per step goes to stdout.
set -u
. "$(dirname "$0")/device_env.sh"
export GDN_CACHE_DIR=${GDN_CACHE_DIR:-/tmp/gdn_cache}
W=$OUT/variants
mkdir -p "$W"
# The step's binary: BIN=path among its variables, else $B.
bin_of() {
  local b=$B a
  for a in "$@"; do case $a in BIN=*) b=$(realpath -m "${a#BIN=}") ;; esac; done
  echo "$b"
}
st() {
  local name=$1
  shift
  env "$@" timeout 150 "$(bin_of "$@")" selftest --device cuda --filter delta_rule > "$W/selftest_$name.log" 2>&1
  echo "selftest $name: exit $?; $(grep -c '| NO ' "$W/selftest_$name.log") over, $(grep -c '| yes' "$W/selftest_$name.log") within tolerance"
  grep '| NO ' "$W/selftest_$name.log" | head -5
}
bench() {
  local name=$1
  shift
  env "$@" timeout 150 "$(bin_of "$@")" bench kernels --breakdown --out "$W/bench_$name" > "$W/bench_$name.log" 2>&1
  echo "bench $name: exit $?"
  grep -E '^\| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9]+ \| [0-9.]+ /' "$W/bench_$name.log" | cut -d'|' -f2-8
  grep -E '^breakdown|state|fwd_o' "$W/bench_$name.log" | sed 's/(eager.*//'
}
for step in "$@"; do
  # shellcheck disable=SC2086
  set -- $step
  "$@"
done
(cd "$OUT" && tar czf /tmp/variants.tgz variants && rm -rf variants && mv /tmp/variants.tgz .)
