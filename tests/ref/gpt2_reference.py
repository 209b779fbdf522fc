"""Reference results for tests/test_model_reference.cpp, computed by the PyTorch GPT-2 in
torch_gpt2.py from a mom checkpoint.

Why this shape: the C++ test owns the inputs (it initialises the weights, saves them, and
draws the tokens), so this script only loads them, runs torch, and writes what it got. Output
is raw little-endian float32 files plus a JSON index, which the test reads without any HDF5 or
NumPy code of its own. Optimizer settings come from the checkpoint's stored `train` config,
so both sides use the same numbers from one place.

Usage: gpt2_reference.py CHECKPOINT TOKENS TARGETS B T OUTDIR [--steps N]
  TOKENS, TARGETS: raw int32 [B·T]. Writes OUTDIR/index.json:
  {"loss", "logits": file, "grads": {our name: file}, "shapes": {file: shape},
   "grad_norms": [N], "losses": [N]}
  where losses[k] is the loss after k+1 AdamW steps on the same batch, and grad_norms[k] the
  gradient norm before clipping at step k+1.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt2 import ReferenceRun, load_mom_checkpoint, mom_named_grads  # noqa: E402


def main():
    run = ReferenceRun(default_steps=10)
    a, cfg, tc, x, y, save = run.args, run.cfg, run.train, run.x, run.y, run.save
    model = load_mom_checkpoint(a.checkpoint)

    loss, logits = model(x, y)
    loss.backward()
    index = {
        "loss": loss.item(),
        "logits": save("logits.f32", logits.reshape(a.B * a.T, -1)),
        "grads": {name: save(name.replace("/", ".") + ".f32", g) for name, g in mom_named_grads(model).items()},
    }

    opt = torch.optim.AdamW(model.param_groups(tc["weight_decay"], cfg["model"].get("decay_embeddings", False)),
                            lr=tc["lr"], betas=(tc["beta1"], tc["beta2"]), eps=tc["eps"])
    grad_norms, losses = [], []
    for step in range(a.steps):
        if step > 0:  # step 0 reuses the gradients written above
            opt.zero_grad(set_to_none=True)
            loss, _ = model(x, y)
            losses.append(loss.item())
            loss.backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"]).item())
        opt.step()
    with torch.no_grad():
        losses.append(model(x, y)[0].item())

    index.update(grad_norms=grad_norms, losses=losses)
    run.finish(index)


if __name__ == "__main__":
    main()
