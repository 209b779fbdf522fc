"""Reference results for tests/test_simplified_reference.cpp, computed by the PyTorch model of
torch_simplified.py (SAS, SAS-P, AltUp, beside dense blocks and MoM/MoE stages; float64) from a
mom checkpoint.

Why this shape: the same contract as gpt2_reference.py and mom_reference.py (the C++ test owns
weights and tokens; this script loads them, runs torch, and writes raw little-endian float32
files plus a JSON index). It adds the names of the tensors it puts under weight decay (decided
from the names alone, so the test can hold our ParameterStore's flags against them), the
scales to judge the gains' gradients by and the smallest ReLU input (torch_simplified.TermScales
says why), and for models with routed stages the aux loss and the routing decisions, as
mom_reference.py does.
The reference runs in float64 so that its own rounding is negligible beside our float32's.

Usage: simplified_reference.py CHECKPOINT TOKENS TARGETS B T OUTDIR [--steps N]
  TOKENS, TARGETS: raw int32 [B·T]. Writes OUTDIR/index.json:
  {"loss", "aux", "logits": file, "grads": {our name: file}, "grad_scales": {our name: file},
   "relu_margin", "decay": [our names], "shapes": {file: shape}, "routing": [...],
   "grad_norms": [N], "losses": [N], "auxes": [N], "min_margins": [N + 1]}
  where losses[k] is the cross-entropy after k+1 AdamW steps (on CE + aux) on the same batch,
  grad_norms[k] the gradient norm before clipping at step k+1, and min_margins[k] the smallest
  routing margin of the forward after k steps (null without routed stages).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mom_reference import min_margin  # noqa: E402
from torch_gpt2 import ReferenceRun  # noqa: E402
from torch_simplified import TermScales, load_simplified_model, named_grads  # noqa: E402


def main():
    run = ReferenceRun(default_steps=10)
    a, tc, x, y, save = run.args, run.train, run.x, run.y, run.save
    model = load_simplified_model(a.checkpoint)

    model.rec = rec = TermScales()  # for the first forward/backward only
    ce, aux, logits = model(x, y)
    (ce + aux).backward()
    model.rec = None
    routing = model.routing
    index = {
        "loss": ce.item(),
        "aux": aux.item(),
        "logits": save("logits.f32", logits),
        "grads": {name: save(name.replace("/", ".") + ".f32", g) for name, g in named_grads(model).items()},
        "grad_scales": {name: save(name.replace("/", ".") + ".scale.f32", v)
                        for name, v in rec.scales({n: t[0].shape for n, t in model.named_tensors().items()}).items()},
        "relu_margin": rec.relu_margin,
        "decay": sorted(name for name in model.named_tensors() if model.decays(name)),
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
