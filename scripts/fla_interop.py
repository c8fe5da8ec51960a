"""Checkpoint interoperability with FLA's GatedDeltaNetForCausalLM (run on the GPU machine).

  fla_interop.py gdn2fla CKPT GDN_LOGITS     load a gdn checkpoint in FLA, compare logits with gdn's
  fla_interop.py make_fla DIR TOKENS [neg|gva]  build a random FLA model, save it (safetensors) and its
                                             logits (neg: allow_neg_eigval=True, β = 2·sigmoid(b);
                                             gva: num_v_heads=4 on 2 q/k heads)
  fla_interop.py compare REF OURS            compare two logits files

FLA's chunk kernels are replaced by its naive fp32 recurrence (plus the L2 norm, β sigmoid and
gate that the kernel fuses), so that parity is checked against reference math in fp32.
"""
import sys, json
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import fla  # noqa: F401  (registers the model classes)
import fla.layers.gated_deltanet as gdl
from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule


def naive_rule(q, k, v, g, beta, initial_state=None, output_final_state=False, A_log=None, dt_bias=None,
               use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, use_gate_in_kernel=True,
               allow_neg_eigval=False, scale=None, **_):
    dtype = v.dtype
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if v.shape[2] > q.shape[2]:  # GVA: value head i reads q/k head i // (HV / H)
        q, k = (x.repeat_interleave(v.shape[2] // q.shape[2], dim=2) for x in (q, k))
    if use_qk_l2norm_in_kernel:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    if use_beta_sigmoid_in_kernel:
        beta = beta.sigmoid() * (2.0 if allow_neg_eigval else 1.0)
    if use_gate_in_kernel:
        g = -A_log.float().exp() * F.softplus(g + dt_bias.float())
    o, s = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                            output_final_state=output_final_state)
    return o.to(dtype), s


gdl.chunk_gated_delta_rule = naive_rule
gdl.fused_recurrent_gated_delta_rule = naive_rule


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def fla_logits(model, tokens):
    with torch.no_grad():
        ids = torch.tensor([tokens], device="cuda")
        return model(input_ids=ids).logits[0].float()


def main():
    cmd = sys.argv[1]
    if cmd == "gdn2fla":
        ckpt, ours = sys.argv[2], load_file(sys.argv[3])
        model, info = GatedDeltaNetForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, output_loading_info=True)
        missing = [k for k in info["missing_keys"]]
        unexpected = [k for k in info["unexpected_keys"]]
        model = model.cuda().eval()
        tokens = [int(t) for t in ours["tokens"].tolist()]
        err = rel(fla_logits(model, tokens), ours["logits"])
        r = dict(check="gdn checkpoint loaded by FLA", missing=missing, unexpected=unexpected, logits_rel_err=err,
                 ok=(not missing and not unexpected and err < 1e-3))
    elif cmd == "make_fla":
        out, tokens = sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
        neg, gva = sys.argv[4:5] == ["neg"], sys.argv[4:5] == ["gva"]
        torch.manual_seed(0)
        cfg = GatedDeltaNetConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=64,
                                  expand_v=2.0, tie_word_embeddings=False, allow_neg_eigval=neg,
                                  num_v_heads=4 if gva else None)
        model = GatedDeltaNetForCausalLM(cfg).float()
        with torch.no_grad():  # move the norms off 1.0 so that a mis-mapped weight shows
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(out, safe_serialization=True)
        model = model.cuda().eval()
        save_file({"logits": fla_logits(model, tokens).cpu().contiguous()}, f"{out}/fla_logits.safetensors")
        r = dict(check="FLA checkpoint written", dir=out, allow_neg_eigval=neg, num_v_heads=cfg.num_v_heads)
    elif cmd == "compare":
        ref, ours = load_file(sys.argv[2]), load_file(sys.argv[3])
        err = rel(ours["logits"], ref["logits"])
        r = dict(check="FLA checkpoint loaded by gdn", ref=sys.argv[2], logits_rel_err=err, ok=err < 1e-3)
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
