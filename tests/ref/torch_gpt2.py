"""GPT-2 in plain PyTorch, written from the model's math (MODELS.md §1), and a loader for mom
checkpoints.

Why it exists: the whole-model test (tests/test_model_reference.cpp) compares our C++
forward, backward and AdamW against this, and jobs/bench/cpu_vs_torch.py times it beside our
trainer. So it is written the way a PyTorch user would write GPT-2 (one module per block,
nn.Linear and nn.LayerNorm, autograd, torch.optim.AdamW), sharing nothing with our code but the
equations and the checkpoint's dataset names. Our checkpoints stack each block tensor along a
leading layer axis; `load_mom_checkpoint` slices that axis into the blocks and
`mom_named_grads` stacks the gradients back, so results can be compared under our names.
"""
import argparse
import json
import math
import os

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, u):
        B, T, C = u.shape
        hd = C // self.n_head
        # q, k, v are consecutive C-wide thirds; inside each, head h owns columns [h·hd, (h+1)·hd).
        q, k, v = self.qkv(u).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hd]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        future = torch.ones(T, T, dtype=torch.bool, device=u.device).triu(1)
        probs = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        o = (probs @ v).transpose(1, 2).reshape(B, T, C)  # heads concatenated
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, u):
        return self.proj(F.gelu(self.fc(u), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, eps):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = Mlp(n_embd)

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


class Gpt2(nn.Module):
    def __init__(self, vocab_size, n_ctx, n_layer, n_head, n_embd, ln_eps=1e-5):
        super().__init__()
        self.wte = nn.Parameter(torch.empty(vocab_size, n_embd))
        self.wpe = nn.Parameter(torch.empty(n_ctx, n_embd))
        self.blocks = nn.ModuleList(Block(n_embd, n_head, ln_eps) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=ln_eps)
        self.reset_parameters()

    def reset_parameters(self):
        # GPT-2's scheme (N(0, 0.02), residual projections scaled by 1/sqrt(2L)), so that the
        # benchmark trains a realistic model; the test overwrites everything from a checkpoint.
        std = 0.02
        resid_std = std / math.sqrt(2 * len(self.blocks))
        nn.init.normal_(self.wte, std=std)
        nn.init.normal_(self.wpe, std=std)
        for b in self.blocks:
            for lin, s in ((b.attn.qkv, std), (b.attn.proj, resid_std), (b.mlp.fc, std), (b.mlp.proj, resid_std)):
                nn.init.normal_(lin.weight, std=s)
                nn.init.zeros_(lin.bias)

    def logits(self, tokens):
        T = tokens.shape[1]
        x = self.wte[tokens] + self.wpe[:T]
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.t()  # tied head

    def forward(self, tokens, targets):
        """Mean cross-entropy over all B·T positions, and the logits [B, T, V]."""
        logits = self.logits(tokens)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, logits

    def param_groups(self, weight_decay, decay_embeddings=False):
        """AdamW groups: decay on the linear layers' weight matrices (and on wte/wpe when
        decay_embeddings), never on biases or LayerNorms."""
        decay = [p for b in self.blocks for p in (b.attn.qkv.weight, b.attn.proj.weight, b.mlp.fc.weight, b.mlp.proj.weight)]
        if decay_embeddings:
            decay += [self.wte, self.wpe]
        decay_ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in decay_ids]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _block_tensors(block):
    """Each block tensor under our stacked name (params/blocks/<name>)."""
    return {
        "ln1_weight": block.ln1.weight, "ln1_bias": block.ln1.bias,
        "attn_qkv_weight": block.attn.qkv.weight, "attn_qkv_bias": block.attn.qkv.bias,
        "attn_proj_weight": block.attn.proj.weight, "attn_proj_bias": block.attn.proj.bias,
        "ln2_weight": block.ln2.weight, "ln2_bias": block.ln2.bias,
        "mlp_fc_weight": block.mlp.fc.weight, "mlp_fc_bias": block.mlp.fc.bias,
        "mlp_proj_weight": block.mlp.proj.weight, "mlp_proj_bias": block.mlp.proj.bias,
    }


def _mom_names(model):
    """Our parameter name -> the list of torch tensors it stacks (one per layer for blocks/*)."""
    out = {"wte": [model.wte], "wpe": [model.wpe]}
    for name in _block_tensors(model.blocks[0]):
        out["blocks/" + name] = [_block_tensors(b)[name] for b in model.blocks]
    out["ln_f_weight"] = [model.ln_f.weight]
    out["ln_f_bias"] = [model.ln_f.bias]
    return out


def _attr_text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_config(path):
    """The checkpoint's root attribute `config` (our full run config) as a dict."""
    with h5py.File(path, "r") as f:
        return json.loads(_attr_text(f.attrs["config"]))


def load_mom_checkpoint(path, dtype=torch.float32):
    """Builds a Gpt2 from a mom checkpoint's config and fills it with the stored weights."""
    m = read_config(path)["model"]
    model = Gpt2(m["vocab_size"], m["n_ctx"], m["n_layer"], m["n_head"], m["n_embd"], m.get("ln_eps", 1e-5)).to(dtype)
    with h5py.File(path, "r") as f:
        copy_stored_params(f, _mom_names(model))
    return model


def copy_stored_params(f, names):
    """Fills each name's tensors from params/<name> of an open mom checkpoint: blocks/* hold one
    tensor per layer along their leading axis, every other dataset fills one tensor."""
    with torch.no_grad():
        for name, tensors in names.items():
            data = torch.from_numpy(np.asarray(f["params/" + name], dtype=np.float32))
            if not name.startswith("blocks/"):
                data = data.unsqueeze(0)
            if data.shape[0] != len(tensors) or data.shape[1:] != tensors[0].shape:
                raise ValueError(f"params/{name}: checkpoint shape {list(data.shape)} does not fit the model")
            for t, d in zip(tensors, data):
                t.copy_(d)


def mom_named_grads(model):
    """Every gradient under our parameter name and in our (layer-stacked) shape."""
    out = {}
    for name, tensors in _mom_names(model).items():
        g = torch.stack([t.grad for t in tensors])
        out[name] = g if name.startswith("blocks/") else g[0]
    return out


class ReferenceRun:
    """What the reference runners (gpt2_reference.py, mom_reference.py) share: their command
    line `CHECKPOINT TOKENS TARGETS B T OUTDIR [--steps N]`, the batch (raw int32 files), the
    checkpoint's stored config, and the output folder of raw little-endian float32 files that
    `finish` indexes in OUTDIR/index.json."""

    def __init__(self, default_steps):
        ap = argparse.ArgumentParser()
        for name in ("checkpoint", "tokens", "targets"):
            ap.add_argument(name)
        ap.add_argument("B", type=int)
        ap.add_argument("T", type=int)
        ap.add_argument("outdir")
        ap.add_argument("--steps", type=int, default=default_steps)
        self.args = a = ap.parse_args()
        torch.set_num_threads(1)  # reproducible reductions run to run
        self.cfg = read_config(a.checkpoint)
        self.train = self.cfg["train"]
        self.x = torch.from_numpy(np.fromfile(a.tokens, dtype="<i4").astype(np.int64)).view(a.B, a.T)
        self.y = torch.from_numpy(np.fromfile(a.targets, dtype="<i4").astype(np.int64)).view(a.B, a.T)
        os.makedirs(a.outdir, exist_ok=True)
        self.shapes = {}

    def save(self, file, tensor):
        """Writes `tensor` as float32 to OUTDIR/file and returns the file name for the index."""
        arr = tensor.detach().to(torch.float32).contiguous().numpy()
        arr.astype("<f4").tofile(os.path.join(self.args.outdir, file))
        self.shapes[file] = list(arr.shape)
        return file

    def finish(self, index):
        index["shapes"] = self.shapes
        with open(os.path.join(self.args.outdir, "index.json"), "w") as f:
            json.dump(index, f)
