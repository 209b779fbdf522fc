"""Reference results for tests/test_mom_reference.cpp, computed by the PyTorch MoM/MoE model in
torch_mom.py (float64) from a mom checkpoint.

Why this shape: the same contract as gpt2_reference.py (the C++ test owns weights and tokens;
this script loads them, runs torch, and writes raw little-endian float32 files plus a JSON
index), with what a routed model adds: the aux loss, and the routing decisions themselves
(per-class loads after capacity drops, drop counts, and the smallest gap between the K-th and
(K+1)-th probability, null when K keeps every class), so the test can tell a flipped near-tie from a wrong formula. The
reference runs in float64 so that its own rounding is negligible beside our float32's.

Usage: mom_reference.py CHECKPOINT TOKENS TARGETS B T OUTDIR [--steps N]
  TOKENS, TARGETS: raw int32 [B·T]. Writes OUTDIR/index.json:
  {"loss": mean cross-entropy, "aux": aux loss, "logits": file, "grads": {our name: file},
   "shapes": {file: shape}, "routing": [{"stage", "steps": [{"attn"|"ffn": {"load", "dropped", "margin"}}]}],
   "grad_norms": [N], "losses": [N], "auxes": [N], "min_margins": [N + 1]}
  where losses[k]/auxes[k] are after k+1 AdamW steps on CE + aux, grad_norms[k] is the norm
  before clipping at step k+1, and min_margins[k] the smallest routing margin of the forward
  after k steps.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt2 import ReferenceRun  # noqa: E402
from torch_mom import load_mom_model, named_grads  # noqa: E402


def min_margin(routing):
    """The smallest K-th vs (K+1)-th gap of any decision (null when every decision keeps all classes)."""
    gaps = [side["margin"] for st in routing for step in st["steps"] for side in step.values() if side["margin"] is not None]
    return min(gaps, default=None)


def main():
    run = ReferenceRun(default_steps=5)
    a, tc, x, y, save = run.args, run.train, run.x, run.y, run.save
    model = load_mom_model(a.checkpoint)

    ce, aux, logits = model(x, y)
    (ce + aux).backward()
    routing = model.routing
    index = {
        "loss": ce.item(),
        "aux": aux.item(),
        "logits": save("logits.f32", logits),
        "grads": {name: save(name.replace("/", ".") + ".f32", g) for name, g in named_grads(model).items()},
        "routing": routing,
    }

    opt = torch.optim.AdamW(model.param_groups(tc["weight_decay"]), lr=tc["lr"], betas=(tc["beta1"], tc["beta2"]),
                            eps=tc["eps"])
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_norms, losses, auxes, margins = [], [], [], [min_margin(routing)]
    for step in range(a.steps):
        if step > 0:  # step 0 reuses the gradients written above
            opt.zero_grad(set_to_none=True)
            ce, aux, _ = model(x, y)
            losses.append(ce.item())
            auxes.append(aux.item())
            margins.append(min_margin(model.routing))
            (ce + aux).backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"]).item())
        opt.step()
    with torch.no_grad():
        ce, aux, _ = model(x, y)
    losses.append(ce.item())
    auxes.append(aux.item())
    margins.append(min_margin(model.routing))

    index.update(grad_norms=grad_norms, losses=losses, auxes=auxes, min_margins=margins)
    run.finish(index)


if __name__ == "__main__":
    main()
