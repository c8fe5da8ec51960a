"""Compares the metrics.jsonl of training runs made from the same config (GPU training checks).

  compare_runs.py REF RUN...   one JSON line per RUN: steps compared, whether every training loss
                               equals REF's bit for bit, and the largest relative loss difference.
"""
import json, sys


def losses(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    return {r["step"]: r for r in rows}


ref_name = sys.argv[1]
ref = losses(ref_name)
for name in sys.argv[2:]:
    run = losses(name)
    steps = sorted(set(ref) & set(run))
    rel = max(abs(run[s]["loss"] - ref[s]["loss"]) / abs(ref[s]["loss"]) for s in steps)
    ev = [s for s in steps if "eval_loss" in ref[s] and "eval_loss" in run[s]]
    print(json.dumps(dict(
        ref=ref_name, run=name, steps=len(steps), of=len(ref),
        identical=all(run[s]["loss"] == ref[s]["loss"] for s in steps) and len(steps) == len(ref),
        max_rel_loss_diff=rel,
        eval=[(s, ref[s]["eval_loss"], run[s]["eval_loss"]) for s in ev],
        last_loss=(ref[steps[-1]]["loss"], run[steps[-1]]["loss"]),
    )))
