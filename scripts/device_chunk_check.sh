#!/usr/bin/env bash
# One device call for a chunked-kernel change: the branch binary's delta-rule selftest (every row
# must pass), then `gdn bench kernels --breakdown` for the branch binary and, in the same call, for
# a baseline binary, and a per-stage side-by-side table. Runs from the repository root; logs, JSON
# and the table go to $OUT. Stays under ~9 minutes (every step under `timeout`).
#
#   GDN_BIN=./target/release/gdn GDN_BASE=./target/base/gdn OUT=/some/dir bash scripts/device_chunk_check.sh
#
# GDN_BIN: the branch binary (default ./target/release/gdn). GDN_BASE: the baseline (main's
# release binary, copied to the ignored ./target/base/gdn and carried; skipped if missing).
# Carry limit is 64 MiB and a release binary is ~79 MB: carry stripped copies (~9.4 MB each), e.g.
#   mkdir -p target/base target/chunk && strip -o target/base/gdn <main>/target/release/gdn \
#     && strip -o target/chunk/gdn <branch>/target/release/gdn
#   run: carry ["target/base", "target/chunk"],
#        GDN_BIN=./target/chunk/gdn GDN_BASE=./target/base/gdn OUT=$OUT bash scripts/device_chunk_check.sh
# SHAPES=quick limits both benches to one shape (default all: the five FLA shapes + decode).
# The summary ends with one line "CHUNK_CHECK selftest=<pass|FAIL> ..." for a quick read.
set -u
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT/branch" "$OUT/base"
exec > >(tee -a "$OUT/device_chunk_check.log") 2>&1
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $* ==="; }

BIN=${GDN_BIN:-./target/release/gdn}
BASE=${GDN_BASE:-./target/base/gdn}
SHAPES=${SHAPES:-all}

step "GPU"
timeout 30 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv || true

step "CUDA toolkit for NVRTC (headers + libnvrtc)"
. "$(dirname "$0")/device_env.sh"
echo "CUDA_HOME=$CUDA_HOME"

ST=missing
if [ ! -x "$BIN" ]; then
  echo "missing branch binary $BIN (cargo build --release on the branch; carry target/release/gdn)"
else
  # Separate NVRTC caches: the two binaries carry different kernel sources.
  step "branch: gdn selftest --device cuda --filter delta"
  GDN_CACHE_DIR=/tmp/gdn_cache_branch timeout 240 "$BIN" selftest --device cuda --filter delta \
    --json "$OUT/branch/selftest_delta.json" 2>&1 | tail -n 100
  rc=${PIPESTATUS[0]}
  echo "selftest exit: $rc"
  if [ "$rc" = 0 ]; then ST=pass; else ST="FAIL(rc=$rc)"; fi

  step "branch: gdn bench kernels --breakdown"
  GDN_CACHE_DIR=/tmp/gdn_cache_branch timeout 170 "$BIN" bench kernels --breakdown --shapes "$SHAPES" \
    --out "$OUT/branch" 2>&1 | tail -n 120
  echo "bench exit: ${PIPESTATUS[0]}"
fi

if [ ! -x "$BASE" ]; then
  echo "missing baseline binary $BASE: no comparison"
else
  step "baseline: gdn bench kernels --breakdown"
  GDN_CACHE_DIR=/tmp/gdn_cache_base timeout 170 "$BASE" bench kernels --breakdown --shapes "$SHAPES" \
    --out "$OUT/base" 2>&1 | tail -n 120
  echo "bench exit: ${PIPESTATUS[0]}"
fi

step "per-stage comparison (ms; ratio = base / branch, above 1 = branch faster)"
OUT="$OUT" ST="$ST" timeout 30 python3 - <<'EOF' | tee "$OUT/chunk_compare.md"
import json, os
out = os.environ["OUT"]
def load(d):
    try:
        return json.load(open(os.path.join(out, d, "gdn_bench.json")))
    except Exception as e:
        print(f"({d}: no gdn_bench.json: {e})")
        return None
def chunk_rows(doc):
    rows = {}
    if not doc:
        return rows
    def walk(x):
        if isinstance(x, dict):
            if "fwdbwd_graph_ms" in x and all(k in x for k in ("B", "T")):
                key = tuple(x.get(k) for k in ("B", "T", "H", "K", "V"))
                rows[key] = x
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(doc)
    return rows
br, ba = chunk_rows(load("branch")), chunk_rows(load("base"))
def num(x, *names):
    for n in names:
        if isinstance(x, dict) and isinstance(x.get(n), (int, float)):
            return x[n]
    return None
summary = []
for key in sorted(set(br) | set(ba), key=str):
    b, a = br.get(key), ba.get(key)
    print(f"\n### B·T·H·K·V = {'·'.join(str(k) for k in key)}\n")
    print("| stage | base ms | branch ms | base/branch |")
    print("|---|---:|---:|---:|")
    stages = []
    for src in (a, b):
        for s in (src or {}).get("breakdown", []):
            if s.get("stage") not in stages:
                stages.append(s.get("stage"))
    def ms(src, st):
        for s in (src or {}).get("breakdown", []):
            if s.get("stage") == st:
                return num(s, "ms")
        return None
    for st in stages:
        x, y = ms(a, st), ms(b, st)
        r = f"{x / y:.2f}" if x and y else "—"
        fx = f"{x:.3f}" if x is not None else "—"
        fy = f"{y:.3f}" if y is not None else "—"
        print(f"| {st} | {fx} | {fy} | {r} |")
    for label, names in (("graph fwd", ("fwd_graph_ms",)), ("graph fwd+bwd", ("fwdbwd_graph_ms",))):
        x, y = num(a, *names), num(b, *names)
        if x or y:
            r = f"{x / y:.2f}" if x and y else "—"
            fx = f"{x:.3f}" if x is not None else "—"
            fy = f"{y:.3f}" if y is not None else "—"
            print(f"| **{label}** | {fx} | {fy} | {r} |")
            if x and y and label == "graph fwd+bwd":
                summary.append(f"{'x'.join(str(k) for k in key[:2])}:{x / y:.2f}")
print(f"\nCHUNK_CHECK selftest={os.environ['ST']} fwd+bwd base/branch " + (" ".join(summary) or "n/a"))
EOF
step "done"
ls -laR "$OUT" | head -40
