#!/usr/bin/env python3
"""Markdown table of FLA / gdn time ratios (> 1: gdn is faster), per shape, graph and eager.

usage: compare_fla.py [DIR]   (DIR holds gdn_bench.json and fla_anchor.json or fla_stages.json;
default $OUT or .)
gdn_bench.json comes from `gdn bench kernels --out DIR`; fla_anchor.json from
bench/fla_ops.py run with OUT=DIR (eager and graph, decode too); fla_stages.json from
scripts/fla_stages.py (graph-replayed chunked fwd and fwd+bwd only, in less device time).
"""
import json
import math
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001
        print(f"(cannot read {path}: {e})")
        return None


def fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"


def ratio(fla, gdn):
    if fla is None or gdn is None:
        return None
    if not (math.isfinite(fla) and math.isfinite(gdn)) or gdn <= 0:
        return None
    return fla / gdn


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", ".")
    g = load(os.path.join(d, "gdn_bench.json"))
    f = load(os.path.join(d, "fla_anchor.json")) or []
    if not f and os.path.exists(os.path.join(d, "fla_stages.json")):
        # fla_stages.py's graph timings under fla_ops.py's names.
        f = [dict(r, fla_fwd_graph_ms=r["fwd_graph_ms"], fla_fwdbwd_graph_ms=r["fwdbwd_graph_ms"])
             for r in load(os.path.join(d, "fla_stages.json")) or []]
    if g is None:
        return 1
    rows = g.get("rows", [])
    # HV: value heads under GVA (absent from older files: H).
    chunk_key = lambda r: (r["B"], r["T"], r["H"], r["K"], r["V"], r.get("HV", r["H"]))
    fla_chunk = {chunk_key(r): r for r in f if "T" in r}
    fla_dec = {(r["decode_B"], r["H"], r["K"], r["V"]): r for r in f if "decode_B" in r}
    print(f"device: {g.get('device')}, reps {g.get('reps')}")
    print()
    print("| B | T | H | K | V | mode | gdn fwd ms | FLA fwd ms | FLA/gdn fwd | gdn fwd+bwd ms | FLA fwd+bwd ms | FLA/gdn fwd+bwd | gdn fwd frac of floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "T" not in r:
            continue
        key = chunk_key(r)
        fr = fla_chunk.get(key, {})
        heads = key[2] if key[5] == key[2] else f"{key[2]}/{key[5]}"
        for mode, gk, fk in (("graph", "_graph_ms", "_graph_ms"), ("eager", "_ms", "_ms")):
            gf, gfb = r.get("fwd" + gk), r.get("fwdbwd" + gk)
            ff, ffb = fr.get("fla_fwd" + fk), fr.get("fla_fwdbwd" + fk)
            frac = r.get("fwd_graph_frac_of_floor") if mode == "graph" else None
            print(f"| {key[0]} | {key[1]} | {heads} | {key[3]} | {key[4]} | {mode} | {fmt(gf)} | {fmt(ff)} | "
                  f"{fmt(ratio(ff, gf), 2)} | {fmt(gfb)} | {fmt(ffb)} | {fmt(ratio(ffb, gfb), 2)} | {fmt(frac, 2)} |")
    print()
    print("| decode B | H | K | V | mode | gdn step ms | FLA step ms | FLA/gdn | gdn state TB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "decode_B" not in r:
            continue
        key = (r["decode_B"], r["H"], r["K"], r["V"])
        fr = fla_dec.get(key, {})
        for mode, gk, tb in (("graph", "step_graph_ms", "state_TBps_graph"), ("eager", "step_ms", "state_TBps")):
            gv, fv = r.get(gk), fr.get(gk)
            print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {mode} | {fmt(gv, 4)} | {fmt(fv, 4)} | "
                  f"{fmt(ratio(fv, gv), 2)} | {fmt(r.get(tb), 2)} |")
    if not f:
        print("\n(no FLA numbers: fla_anchor.json and fla_stages.json missing or empty)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
