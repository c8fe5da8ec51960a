#!/usr/bin/env python3
"""The rates PyTorch's own matmul reaches on the GEMM shapes of one training step of FLA's 1.3B
preset (8 × 4096 tokens), for comparison with the per-group rates of `gdn bench train --breakdown`
(same device call). Forward y = x·Wᵀ (bf16 out), input gradient dx = dy·W (bf16 out) and weight
gradient dW = dyᵀ·x (fp32 out where this torch supports it, as gdn accumulates it). Prints one line per shape and writes JSON
to $OUT/torch_gemm_rates.json.

Usage: OUT=folder python3 scripts/torch_gemm_rates.py
"""
import json
import os

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


def main():
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
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "torch_gemm_rates.json"), "w") as f:
        json.dump({"tokens": TOKENS, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
