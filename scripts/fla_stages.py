# FLA's chunked gated delta rule, kernel by kernel: graph-replayed fwd and fwd+bwd medians and a
# torch.profiler table of each Triton kernel's device time per fwd+bwd call, so gdn's
# `bench kernels --breakdown` stages can be set beside FLA's in the same device call.
# Needs FLA's wheels on PYTHONPATH (../shared/bench/README.md). Shapes: SHAPES="B,T,H,K,V;...", or
# B,T,H,K,V,HV for GVA (HV value heads on H q/k heads; FLA's kernels index q/k by group).
import os, sys, json, torch, torch.nn.functional as F
from fla.ops.gated_delta_rule import chunk_gated_delta_rule
import fla.ops.common.chunk_o as _co
_co.TRITON_ABOVE_3_7_1 = True  # timing only (FLA issue #640), as in ../shared/bench/fla_ops.py
from torch.profiler import profile, ProfilerActivity

def graph_ms(fn, reps=50):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): fn()
    torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): fn()
    for _ in range(5): g.replay()
    torch.cuda.synchronize(); ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts) // 2]

shapes = [tuple(int(x) for x in s.split(",")) for s in
          os.environ.get("SHAPES", "4,4096,16,128,128;4,4096,6,256,512").split(";")]
out = []
for shape in shapes:
    B, T, H, K, V = shape[:5]
    HV = shape[5] if len(shape) > 5 else H
    torch.manual_seed(0); dev = "cuda"
    q = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
    k = F.normalize(torch.randn(B, T, H, K, device=dev), p=2, dim=-1).to(torch.bfloat16)
    v = torch.randn(B, T, HV, V, device=dev, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(B, T, HV, device=dev))
    beta = torch.rand(B, T, HV, device=dev, dtype=torch.bfloat16).sigmoid()
    for t in (q, k, v, g, beta): t.requires_grad_(True)
    do = torch.randn(B, T, HV, V, device=dev, dtype=torch.bfloat16)
    fwd = lambda: chunk_gated_delta_rule(q, k, v, g, beta, scale=K**-0.5, output_final_state=False)
    def fb():
        o, _ = fwd(); o.backward(do)
    for _ in range(3): fb()
    torch.cuda.synchronize()
    r = dict(B=B, T=T, H=H, HV=HV, K=K, V=V, fwd_graph_ms=graph_ms(fwd), fwdbwd_graph_ms=graph_ms(fb))
    n = 10
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n): fb()
        torch.cuda.synchronize()
    stages = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.count > 0:
            stages[e.key] = dict(ms_per_call=getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1e3 / n,
                                 launches_per_call=e.count / n)
    r["stages"] = dict(sorted(stages.items(), key=lambda kv: -kv[1]["ms_per_call"]))
    out.append(r)
    print(f"FLA B{B} T{T} H{H} HV{HV} K{K} V{V}: fwd {r['fwd_graph_ms']:.3f} ms, fwd+bwd {r['fwdbwd_graph_ms']:.3f} ms (graph)", flush=True)
    for name, s in r["stages"].items():
        print(f"  {s['ms_per_call']:8.3f} ms  x{s['launches_per_call']:.0f}  {name[:110]}", flush=True)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "fla_stages.json"), "w"), indent=1)
