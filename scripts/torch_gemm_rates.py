#!/usr/bin/env python3
"""The rates PyTorch's own matmul reaches on the GEMM shapes of one training step of FLA's 1.3B
preset (8 × 4096 tokens), for comparison with the per-group rates of `gdn bench train --breakdown`
(same device call). Forward y = x·Wᵀ (bf16 out), input gradient dx = dy·W (bf16 out) and weight
gradient dW = dyᵀ·x (fp32 out where this torch supports it, as gdn accumulates it). Prints one line per shape and writes JSON
to $OUT/torch_gemm_rates.json.

With --fp8, the same three products in FP8 through torch._scaled_mm (x and W in e4m3, dy in e5m2,
per-tensor scales, operands laid out as the FP8 tensor cores want them; bf16 out, dW in fp32),
beside the time of producing those operands with separate PyTorch ops (amax, scale, cast, and the
transposed copies that dx and dW need): what FP8 matmuls could give a training step, and what
unfused casts would take back. The step totals count each layer once per block (21 at FLA's 1.3B)
and the lm head once.

Usage: OUT=folder python3 scripts/torch_gemm_rates.py [--fp8]
"""
import json
import os
import sys

import torch

TOKENS = 8 * 4096
# (name, in, out) of the step's linear layers; the mixer's q, k, v and gate projections are
# separate matrices of one input, timed as one product of their summed width as well.
LAYERS = [
    ("q or k proj", 2048, 1536),
    ("v or gate proj", 2048, 3072),
    ("q+k+v+gate proj", 2048, 9216),
    ("o proj", 3072, 2048),
    ("mlp gate or up", 2048, 5632),
    ("mlp gate+up", 2048, 11264),
    ("mlp down", 5632, 2048),
    ("lm head", 2048, 32000),
]


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def weight_grad(dy, x):
    # fp32 output where this torch has it (gdn accumulates dW in fp32), else bf16.
    try:
        return torch.mm(dy.t(), x, out_dtype=torch.float32)
    except TypeError:
        return dy.t() @ x


# The layers one block of the step runs (fused as gdn runs them), and how many blocks.
STEP = ["q+k+v+gate proj", "o proj", "mlp gate+up", "mlp down"]
BLOCKS = 21
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def to_fp8(t, dtype):
    """Per-tensor scaled cast (amax → scale → cast), as separate PyTorch ops; returns (t8, 1/scale)."""
    amax = t.abs().amax().float().clamp(min=1e-12)
    scale = torch.finfo(dtype).max / amax
    return (t.float() * scale).to(dtype), scale.reciprocal()


def col_major(t):
    """The same matrix stored column-major (what _scaled_mm wants for its second operand)."""
    return t.t().contiguous().t()


def fp8_times(x, w, dy):
    """ms of the FP8 forward, dx and dW products, and of preparing their operands unfused."""
    x8, sx = to_fp8(x, E4M3)
    w8, sw = to_fp8(w, E4M3)
    dy8, sdy = to_fp8(dy, E5M2)
    w8_cm = col_major(w8)  # dx = dy · W: W column-major
    dyt8 = dy8.t().contiguous()  # dW = dyᵀ · x: dyᵀ row-major, x column-major
    x8_cm = col_major(x8)
    mm = torch._scaled_mm
    fwd = time_ms(lambda: mm(x8, w8.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16))
    dx = time_ms(lambda: mm(dy8, w8_cm, scale_a=sdy, scale_b=sw, out_dtype=torch.bfloat16))
    dw = time_ms(lambda: mm(dyt8, x8_cm, scale_a=sdy, scale_b=sx, out_dtype=torch.float32))
    # Operands per step: x and dy cast once each, with their transposed copies; W cast (and its
    # transposed copy) once per step as well, after the optimizer.
    cast = time_ms(lambda: (to_fp8(x, E4M3)[0].t().contiguous(), to_fp8(dy, E5M2)[0].t().contiguous()))
    cast_w = time_ms(lambda: col_major(to_fp8(w, E4M3)[0]))
    return fwd, dx, dw, cast, cast_w


def main():
    fp8 = "--fp8" in sys.argv[1:]
    dev = torch.device("cuda")
    rows = []
    for name, inp, out in LAYERS:
        x = torch.randn(TOKENS, inp, device=dev, dtype=torch.bfloat16)
        w = torch.randn(out, inp, device=dev, dtype=torch.bfloat16)
        dy = torch.randn(TOKENS, out, device=dev, dtype=torch.bfloat16)
        flop = 2.0 * TOKENS * inp * out
        fwd = time_ms(lambda: x @ w.t())
        dx = time_ms(lambda: dy @ w)
        dw = time_ms(lambda: weight_grad(dy, x))
        row = {
            "name": name,
            "in": inp,
            "out": out,
            "fwd_ms": fwd,
            "dx_ms": dx,
            "dw_fp32_ms": dw,
            "fwd_tflops": flop / fwd / 1e9,
            "dx_tflops": flop / dx / 1e9,
            "dw_tflops": flop / dw / 1e9,
        }
        rows.append(row)
        print(
            f"{name:16s} {inp:5d}->{out:5d}: fwd {fwd:.3f} ms {row['fwd_tflops']:.0f} TFLOP/s | "
            f"dx {dx:.3f} ms {row['dx_tflops']:.0f} | dW fp32 {dw:.3f} ms {row['dw_tflops']:.0f}"
        )
        if fp8:
            f8 = dict(zip(["fp8_fwd_ms", "fp8_dx_ms", "fp8_dw_ms", "fp8_cast_ms", "fp8_cast_w_ms"],
                          fp8_times(x, w, dy)))
            row.update(f8)
            print(
                f"{'':16s} {'':11s}  fp8: fwd {f8['fp8_fwd_ms']:.3f} ms "
                f"{flop / f8['fp8_fwd_ms'] / 1e9:.0f} | dx {f8['fp8_dx_ms']:.3f} ms "
                f"{flop / f8['fp8_dx_ms'] / 1e9:.0f} | dW {f8['fp8_dw_ms']:.3f} ms "
                f"{flop / f8['fp8_dw_ms'] / 1e9:.0f} | casts (unfused) x, dy {f8['fp8_cast_ms']:.3f} ms, "
                f"W {f8['fp8_cast_w_ms']:.3f} ms"
            )
    totals = {}
    if fp8:
        # One step: each block layer BLOCKS times, the lm head once.
        count = {r["name"]: BLOCKS for r in rows if r["name"] in STEP}
        count["lm head"] = 1
        for key in ["fwd_ms", "dx_ms", "dw_fp32_ms", "fp8_fwd_ms", "fp8_dx_ms", "fp8_dw_ms",
                    "fp8_cast_ms", "fp8_cast_w_ms"]:
            totals[key] = sum(r[key] * count.get(r["name"], 0) for r in rows)
        bf = totals["fwd_ms"] + totals["dx_ms"] + totals["dw_fp32_ms"]
        f8 = totals["fp8_fwd_ms"] + totals["fp8_dx_ms"] + totals["fp8_dw_ms"]
        casts = totals["fp8_cast_ms"] + totals["fp8_cast_w_ms"]
        totals.update(step_bf16_ms=bf, step_fp8_ms=f8, step_fp8_casts_ms=casts)
        print(f"step ({BLOCKS} blocks + lm head): bf16 {bf:.1f} ms, fp8 {f8:.1f} ms "
              f"({bf / f8:.2f}x), unfused casts {casts:.1f} ms")
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "torch_gemm_rates.json"), "w") as f:
        json.dump({"tokens": TOKENS, "torch": torch.__version__, "rows": rows, "step": totals},
                  f, indent=1)


if __name__ == "__main__":
    main()
