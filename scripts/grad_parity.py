"""Gradient parity with FLA's GatedDeltaNetForCausalLM (issue 4; run by grad_parity.sh on the GPU machine).

  grad_parity.py make_fla DIR [--tie] [--neg] [--gva]
      a random FLA model (float32, norms moved off 1.0), saved by save_pretrained; --neg: allow_neg_eigval;
      --gva: num_v_heads=4 on the 2 q/k heads
  grad_parity.py compare CKPT CPU.safetensors [--cuda CUDA.safetensors] [--device cuda|cpu] [--plain] [--name N]
      CPU.safetensors / CUDA.safetensors: `gdn logits --grads --device cpu|cuda` on CKPT. Loads CKPT in FLA
      (float32), computes the logits of the same token sequences (each sequence alone, batch 1), the mean
      next-token cross-entropy over every position that has a next token in its sequence (all sequences
      together, as gdn does), and its gradient by autograd, and compares with gdn: max|a-b| / max|b| per
      tensor. Prints a table and a final JSON line; exits 1 when an fp32 check fails.

The reference is FLA's model with the chunk kernels replaced by its naive fp32 recurrence (the rule patched
by fla_interop.py, imported here). --plain (automatic with --device cpu, where Triton cannot run) also
replaces FLA's Triton RMSNorm, gated RMSNorm, SwiGLU and causal conv by plain PyTorch, so that the whole
reference is naive fp32 PyTorch.

Tolerances: gdn CPU (f32) logits and every gradient < 1e-3, loss < 1e-4 (these decide the exit status);
gdn CUDA (bf16 activations) logits < 2e-2; CUDA loss and gradients < 5e-2 (informative).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fla_interop  # noqa: E402  (patches FLA's chunk / fused-recurrent rule with the naive fp32 one)
from fla_interop import rel  # noqa: E402
from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM  # noqa: E402

TOL_FP32 = 1e-3
TOL_LOSS_FP32 = 1e-4
TOL_BF16_LOGITS = 2e-2
TOL_CUDA = 5e-2


def use_plain_torch():
    """Replaces FLA's Triton RMSNorm, gated RMSNorm, SwiGLU and causal conv by plain PyTorch; returns the config
    overrides that select the unfused modules."""
    import fla.layers.gated_deltanet as gdl
    import fla.modules.mlp as mlp
    from fla.modules import FusedRMSNormGated

    def causal_conv1d(x, weight=None, bias=None, activation=None, residual=None, initial_state=None,
                      output_final_state=False, cu_seqlens=None, **_):
        assert residual is None and initial_state is None and not output_final_state and cu_seqlens is None
        t, width = x.shape[1], weight.shape[-1]
        y = F.conv1d(x.transpose(1, 2), weight.reshape(weight.shape[0], 1, width), bias, padding=width - 1,
                     groups=x.shape[-1])[..., :t].transpose(1, 2)
        if activation in ("silu", "swish"):
            y = F.silu(y)
        return y, None

    def gated_norm(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        assert residual is None and not prenorm
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y * (torch.sigmoid(g) if self.activation == "sigmoid" else F.silu(g))

    gdl.causal_conv1d = causal_conv1d
    FusedRMSNormGated.forward = gated_norm
    mlp.swiglu = lambda x, y: F.silu(x) * y
    return dict(fuse_norm=False, fuse_swiglu=False)


def make_fla(out, tie, neg, gva):
    torch.manual_seed(0)
    cfg = GatedDeltaNetConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=64,
                              expand_v=2.0, tie_word_embeddings=tie, allow_neg_eigval=neg,
                              num_v_heads=4 if gva else None)
    model = GatedDeltaNetForCausalLM(cfg).float()
    with torch.no_grad():  # move the norms off 1.0 so that a mis-mapped weight or gradient shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    print(json.dumps(dict(check="FLA checkpoint written", dir=out, tie_word_embeddings=tie, allow_neg_eigval=neg,
                          num_v_heads=cfg.num_v_heads)), flush=True)


def reference(ckpt, tokens, cu, device, overrides):
    """FLA's logits [tokens, vocab], loss, gradients by name, and the loading problems."""
    model, info = GatedDeltaNetForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, output_loading_info=True,
                                                           **overrides)
    model = model.float().to(device).eval()
    tied = bool(model.config.tie_word_embeddings)
    problems = [f"missing {k}" for k in info["missing_keys"] if not (tied and k == "lm_head.weight")]
    problems += [f"unexpected {k}" for k in info["unexpected_keys"]]
    if tied and model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr():
        problems.append("tie_word_embeddings is set but FLA did not tie lm_head to the embeddings")
    logits, loss_sum, count = [], 0.0, 0
    for s, e in zip(cu[:-1], cu[1:]):
        ids = torch.tensor([tokens[s:e]], device=device)
        lg = model(input_ids=ids, use_cache=False).logits[0].float()
        logits.append(lg)
        if e - s > 1:
            loss_sum = loss_sum + F.cross_entropy(lg[:-1], ids[0, 1:], reduction="sum")
            count += e - s - 1
    loss = loss_sum / count
    loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        if p.grad is None:
            problems.append(f"no gradient for {n}")
            grads[n] = torch.zeros_like(p).cpu()
        else:
            grads[n] = p.grad.detach().cpu()
    return torch.cat(logits).detach().cpu(), loss.item(), grads, problems


def compare(a):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    plain = a.plain or a.device == "cpu"
    overrides = use_plain_torch() if plain else {}
    cpu = load_file(a.cpu)
    cuda = load_file(a.cuda) if a.cuda and os.path.exists(a.cuda) else None
    tokens = [int(t) for t in cpu["tokens"].tolist()]
    cu = [int(c) for c in cpu["cu_seqlens"].tolist()]
    problems = []
    if cuda is not None and not torch.equal(cuda["tokens"], cpu["tokens"]):
        problems.append("the CUDA file has other tokens than the CPU file")
        cuda = None
    if a.cuda and cuda is None:
        problems.append(f"no usable gdn CUDA output ({a.cuda}); CUDA rows skipped")
    ref_logits, ref_loss, ref_grads, loading = reference(a.ckpt, tokens, cu, a.device, overrides)
    problems += loading

    rows = []  # (name, cpu err, cpu tol, cuda err, cuda tol)

    def loss_err(f):
        return abs(f["loss"].item() - ref_loss) / max(abs(ref_loss), 1e-30)

    rows.append(("logits", rel(cpu["logits"], ref_logits), TOL_FP32,
                 cuda is not None and rel(cuda["logits"], ref_logits), TOL_BF16_LOGITS))
    rows.append(("loss", loss_err(cpu), TOL_LOSS_FP32, cuda is not None and loss_err(cuda), TOL_CUDA))
    gdn_names = [k[len("grad."):] for k in cpu if k.startswith("grad.")]
    for n in sorted(set(ref_grads) - set(gdn_names)):
        problems.append(f"gdn wrote no gradient for FLA parameter {n}")
    for n in gdn_names:
        if n not in ref_grads:
            problems.append(f"gdn gradient {n} has no FLA parameter")
            continue
        b = ref_grads[n]
        ours = [f[f"grad.{n}"] if f is not None else None for f in (cpu, cuda)]
        errs = []
        for g in ours:
            if g is None:
                errs.append(False)
            elif g.numel() != b.numel():
                problems.append(f"grad.{n}: shape {list(g.shape)}, FLA's {list(b.shape)}")
                errs.append(float("inf"))
            else:
                errs.append(rel(g.reshape(b.shape), b))
        rows.append((f"grad {n}", errs[0], TOL_FP32, errs[1], TOL_CUDA))

    def cell(e, tol):
        if e is False:
            return f"{'-':>10} {tol:>8.0e} {'-':>4}"
        return f"{e:>10.2e} {tol:>8.0e} {'ok' if e < tol else 'FAIL':>4}"

    w = max(len(r[0]) for r in rows)
    print(f"\n{a.name}: gdn vs FLA ({'plain PyTorch' if plain else 'FLA kernels'} + naive fp32 rule, "
          f"torch on {a.device}); {len(tokens)} tokens in {len(cu) - 1} sequences, loss {ref_loss:.6f}")
    print(f"{'tensor':<{w}} | {'cpu f32':>10} {'tol':>8} {'pass':>4} | {'cuda bf16':>10} {'tol':>8} {'pass':>4}")
    for n, e1, t1, e2, t2 in rows:
        print(f"{n:<{w}} | {cell(e1, t1)} | {cell(e2, t2)}")
    for p in problems:
        print(f"problem: {p}")

    def worst(col):
        rs = [(r[0], r[col]) for r in rows if r[0].startswith("grad ") and r[col] is not False]
        return max(rs, key=lambda r: r[1]) if rs else (None, None)

    grad_rows = [r for r in rows if r[0].startswith("grad ")]
    fp32_ok = (not [p for p in problems if "CUDA" not in p]
               and all(r[1] is not False and r[1] < r[2] for r in rows))
    summary = dict(
        check="grad parity", name=a.name, checkpoint=a.ckpt,
        reference=("plain PyTorch" if plain else "FLA kernels") + " + naive fp32 rule", torch_device=a.device,
        tokens=len(tokens), sequences=len(cu) - 1, loss_fla=ref_loss, loss_gdn_cpu=cpu["loss"].item(),
        loss_gdn_cuda=cuda["loss"].item() if cuda is not None else None,
        logits_cpu_rel_err=rows[0][1], logits_cuda_rel_err=rows[0][3] if cuda is not None else None,
        grads_compared=len(grad_rows), worst_grad_cpu=worst(1), worst_grad_cuda=worst(3),
        problems=problems, fp32_ok=fp32_ok,
        bf16_logits_ok=cuda is not None and rows[0][3] < TOL_BF16_LOGITS,
        cuda_grads_ok=cuda is not None and all(r[3] < r[4] for r in rows[1:]),
        ok=fp32_ok,
    )
    print(json.dumps(summary), flush=True)
    return 0 if fp32_ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make_fla")
    m.add_argument("out")
    m.add_argument("--tie", action="store_true")
    m.add_argument("--neg", action="store_true", help="allow_neg_eigval (β = 2·sigmoid(b))")
    m.add_argument("--gva", action="store_true", help="num_v_heads=4 on the 2 q/k heads")
    c = sub.add_parser("compare")
    c.add_argument("ckpt")
    c.add_argument("cpu")
    c.add_argument("--cuda")
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--plain", action="store_true")
    c.add_argument("--name", default="checkpoint")
    a = ap.parse_args()
    if a.cmd == "make_fla":
        make_fla(a.out, a.tie, a.neg, a.gva)
        return 0
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
