#!/usr/bin/env bash
# FLA's 1.3B training step (the peer's fla_train.py: B8·T4096, pure bf16) on the GPU machine, with
# Triton's compile cache kept across device calls and sessions. On a fresh machine Triton compiles
# for more than 330 s before FLA's first step (session 10, call 6), which leaves no room in a call
# for gdn's own runs beside it. So:
#   1. one call runs this alone with a long limit (TIMEOUT=560). The cache comes back as
#      $OUT/fla_triton_cache.tgz.part-aa, -ab, ..: one tarball split into pieces of 15 MiB (a
#      file over 16 MiB does not come back from a call: session 12's whole cache was 28 MB);
#   2. keep the pieces in .peer/fla_cache/ (renamed as a set, NAME.tgz.part-*; or whole tarballs,
#      any name ending .tgz; several merge) and carry ".peer/fla_cache" (and ".whl") in later
#      calls: they are unpacked into .fla_cache first, so FLA starts at once and its step can be
#      timed beside `gdn bench train` in the same call. Tarballs, not the unpacked folder,
#      travel: the kernel bench's and the training step's caches unpacked exceed the 64 MiB a
#      call carries.
#   A run cut short by TIMEOUT still returns what Triton compiled so far (session 11: 200 s of it,
#   .peer/fla_cache/train-partial-s11.tgz); the next run continues from there. With it, session
#   12's run reached FLA's first step after 148 s.
# The peer script is looked for in .peer/bench, ../shared/bench and shared/bench (../shared does not
# travel to the GPU machine: copy ../shared/bench/fla_train.py into .peer/bench/ and carry ".peer");
# the wheels in .whl.
# Usage: OUT=folder [TIMEOUT=s] bash scripts/device_fla_train.sh [1.3B|small]
set -u
OUT=${OUT:-/tmp/gdn-out}
mkdir -p "$OUT" .fla_cache
for t in .peer/fla_cache/*.tgz; do [ -f "$t" ] && tar xzf "$t" -C .fla_cache; done
for p in .peer/fla_cache/*.tgz.part-aa; do
  [ -f "$p" ] && cat "${p%-aa}"-* | tar xz -C .fla_cache
done
PEER=$(for d in .peer/bench ../shared/bench shared/bench; do [ -f "$d/fla_train.py" ] && realpath "$d" && break; done)
[ -n "$PEER" ] || { echo "fla_train.py not found: copy ../shared/bench/fla_train.py into .peer/bench/ and carry .peer"; exit 2; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
cached=$(find .fla_cache -type f | wc -l)
t0=$(date +%s)
(
  export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$(realpath .fla_cache)
  cd "$OUT" && timeout "${TIMEOUT:-560}" python3 "$PEER/fla_train.py" "${1:-1.3B}" > "$OUT/fla_train.log" 2>&1
)
rc=$?
echo "fla_train.py: exit $rc after $(( $(date +%s) - t0 )) s, with $cached cached Triton files at the start"
grep -v Warning "$OUT/fla_train.log" | tail -4
tar czf - -C .fla_cache . | split -b 15M - "$OUT/fla_triton_cache.tgz.part-" && du -ch "$OUT"/fla_triton_cache.tgz.part-* | tail -1
