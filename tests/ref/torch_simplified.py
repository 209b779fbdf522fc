"""SAS and SAS-P blocks (He & Hofmann, "Simplifying Transformer Blocks") and the AltUp wrapper
(Baykal et al., "Alternating Updates"; Gemma 3n's input-dependent coefficients) in plain
PyTorch, written from the math (MODELS.md §4-5), and a loader for mom checkpoints of such models.

Why it exists: tests/test_simplified_reference.cpp compares our C++ model (forward, backward,
clipping, AdamW) against this. Our C++ fuses W_q and W_k into one [2C, C] GEMM, runs shaped
attention in one kernel beside standard attention, and keeps the AltUp stream block-major in
one [K·N, C] buffer. None of that is here: every formula is written the way the spec states
it (the shaped matrix A_h is built explicitly as β·softmax + α·I − γ·C, the stream is a Python
list of K tensors, the input-dependent coefficients are explicit per-token K×K matrices), and
autograd does every backward. The two share only the equations and the checkpoint's dataset
names (docs/checkpoint-format.md, "Simplified blocks" and "AltUp").

Choices (the project's brief where the spec leaves it open):
- "The run's first block" is the first block of its stack entry: it alone has the value
  projection (v = α_V·u + β_V·u·W_Vᵀ) and, with norm "none", a LayerNorm N1 (eps ln_eps);
  later blocks of the entry have v = u and, with norm "none", no N1 (u = x).
- RMSNorm: w ⊙ x / (sqrt(mean(x²)) + 1e-5), the eps outside the root.
- AltUp: every item of the stack is one layer ℓ (a dense block, a SAS/SAS-P block, a whole
  MoM chunk or MoE layer; a chunk's anchor is a dense block of its own, as our stack stores it).
  The output sums the K blocks before ln_f, in both modes; the wide mode's tied head is the sum
  of wte's K column blocks. Input-dependent coefficients come from the active block before the
  prediction and serve both p and g; W_p and W_g are clamped to ±120 in the forward pass.
- Weight decay is decided from the names alone: every matrix of a linear map decays, nothing
  else does (norms, biases, every gain and scalar, AltUp's static p and g); wte/wpe decay only
  with model.decay_embeddings.
"""
import math

import h5py
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_gpt2 import Block, _block_tensors, copy_stored_params, read_config
from torch_mom import ROUTER_MATRICES, STACK_DEFAULTS as ROUTED_DEFAULTS, RoutedStage, _dataset_names

RMS_EPS = 1e-5
COEFFICIENT_CLAMP = 120.0

# What an entry means when a key is left out (io/config.cpp's defaults; the checkpoint stores
# the entries as the user wrote them, and model.altup merged over its defaults).
SIMPLIFIED_DEFAULTS = {"count": 1, "norm": "rms", "beta_ff_init": 0.1}
ALTUP_DEFAULTS = {"k": 2, "mode": "recycled", "active": "alternate", "layer_input": "activated",
                  "coefficients": "static"}

# Leaf names of the matrices that weight decay applies to (besides wte/wpe by option).
DECAYED_MATRICES = {
    # dense blocks (blocks/*)
    "attn_qkv_weight", "attn_proj_weight", "mlp_fc_weight", "mlp_proj_weight",
    # SAS / SAS-P
    "q_weight", "k_weight", "v_weight", "fc_weight", "proj_weight",
    # MoM / MoE pools (fc_weight and proj_weight above)
    "qkv_weight",
    # AltUp's input-dependent coefficients
    "router_weight", "predict_weight", "correct_weight",
} | ROUTER_MATRICES


def rms_norm(x, w):
    return w * x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + RMS_EPS)


def uniform_causal(T, dtype):
    """C[i][j] = 1/(i+1) for j ≤ i, else 0: each row averages the causal prefix."""
    i = torch.arange(T, dtype=dtype).unsqueeze(1)
    return torch.ones(T, T, dtype=dtype).tril() / (i + 1)


class TermScales:
    """What the test needs beside the gradients to judge them, gathered in one forward/backward.

    Term scales: the gradient of a gain g that multiplies a tensor t is a sum, ∂L/∂g = Σ ∂L/∂(g·t) ⊙ t,
    and several of ours are near-cancellations (a gain just before a norm barely changes the loss:
    the next norm removes most of its scale). Rounding in such a sum is relative to the size of
    its terms, not to the result, so for each gain this records Σ |∂L/∂(g·t) ⊙ t| per element of
    g, the scale the test measures our error against. The same for the key bias, whose gradient
    Σ_t ∂L/∂k_t is exactly zero in exact arithmetic (the softmax removes a constant per row).

    ReLU margin: the smallest |input| of any ReLU. An input within rounding of 0 could take the
    other branch in float32 and change a gradient by a whole term; the test refuses such seeds."""

    def __init__(self):
        self.records = []
        self.relu_margin = None

    def add(self, name, index, out, t, dims=None):
        """out = g[index]·t + (terms without g[index]); `dims`: the axes to sum (None: all)."""
        out.retain_grad()
        self.records.append((name, index, out, t.detach(), dims))

    def relu(self, z):
        m = z.detach().abs().min().item()
        self.relu_margin = m if self.relu_margin is None else min(self.relu_margin, m)

    def scales(self, shapes):
        """After backward: {name: Σ|terms| shaped like the parameter}."""
        out = {}
        for name, index, o, t, dims in self.records:
            v = (o.grad * t).abs()
            v = v.sum() if dims is None else v.sum(dim=dims)
            out.setdefault(name, torch.zeros(shapes[name], dtype=v.dtype))[index] += v
        return out


def shaped_attention(u, v, p, n_head, rec=None, prefix=""):
    """SA over [B, T, C]: per head h, A_h = β_h·softmax(q·kᵀ/sqrt(hd) + mask) + α_h·I − γ_h·C and
    out_h = A_h·v_h; heads concatenated, no output projection. q, k from u; v given."""
    B, T, C = u.shape
    hd = C // n_head
    q = F.linear(u, p["q_weight"], p["q_bias"])
    k = F.linear(u, p["k_weight"], p["k_bias"])
    if rec is not None:
        rec.add(prefix + "k_bias", Ellipsis, k, torch.ones_like(k), dims=(0, 1))
    q, k, v = (t.reshape(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hd]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    eye = torch.eye(T, dtype=u.dtype)
    cmat = uniform_causal(T, u.dtype)
    per_head = lambda s: s.view(1, n_head, 1, 1)  # noqa: E731
    A = per_head(p["attn_beta"]) * probs + per_head(p["attn_alpha"]) * eye - per_head(p["attn_gamma"]) * cmat
    out = A @ v  # [B, nh, T, hd]
    if rec is not None:
        for gain, t in (("attn_alpha", v), ("attn_beta", probs @ v), ("attn_gamma", cmat @ v)):
            rec.add(prefix + gain, Ellipsis, out, t, dims=(0, 2, 3))
    return out.transpose(1, 2).reshape(B, T, C)


class SimplifiedBlock(nn.Module):
    """One SAS ("sas") or SAS-P ("sas_p") block; its tensors under our leaf names (p[...])."""

    def __init__(self, kind, e, first, C, n_head, ln_eps, dtype):
        super().__init__()
        assert kind in ("sas", "sas_p")
        self.kind, self.first, self.rms = kind, first, e["norm"] == "rms"
        if e["norm"] not in ("rms", "none"):
            raise ValueError(f"unknown norm {e['norm']}")
        self.n_head, self.ln_eps = n_head, ln_eps
        shapes = []
        if self.rms:
            shapes.append(("norm1_weight", (C,)))
        elif first:
            shapes += [("norm1_weight", (C,)), ("norm1_bias", (C,))]
        shapes += [("q_weight", (C, C)), ("k_weight", (C, C)), ("q_bias", (C,)), ("k_bias", (C,)),
                   ("attn_alpha", (n_head,)), ("attn_beta", (n_head,)), ("attn_gamma", (n_head,))]
        if first:
            shapes += [("v_weight", (C, C)), ("v_alpha", (1,)), ("v_beta", (1,))]
        if kind == "sas" and self.rms:
            shapes.append(("norm2_weight", (C,)))
        shapes += [("fc_weight", (4 * C, C)), ("proj_weight", (C, 4 * C)), ("gain_sa", (1,)), ("gain_ff", (1,))]
        if kind == "sas":
            shapes.append(("skip_ff", (1,)))
        self.p = nn.ParameterDict({n: nn.Parameter(torch.zeros(s, dtype=dtype)) for n, s in shapes})

    def norm1(self, x):
        p = self.p
        if self.rms:
            return rms_norm(x, p["norm1_weight"])
        if self.first:
            return F.layer_norm(x, x.shape[-1:], p["norm1_weight"], p["norm1_bias"], self.ln_eps)
        return x

    def mlp(self, w, rec):
        z = F.linear(w, self.p["fc_weight"])
        if rec is not None:
            rec.relu(z)
        return F.linear(F.relu(z), self.p["proj_weight"])

    def forward(self, x, rec=None, prefix=""):
        """`rec`: a TermScales to record this block's gains in (names under `prefix`), or None."""
        p = self.p

        def record(name, out, t):
            if rec is not None:
                rec.add(prefix + name, Ellipsis, out, t)

        u = self.norm1(x)
        v = u
        if self.first:
            uw = F.linear(u, p["v_weight"])
            v = p["v_alpha"] * u + p["v_beta"] * uw
            record("v_alpha", v, u)
            record("v_beta", v, uw)
        a = shaped_attention(u, v, p, self.n_head, rec, prefix)
        if self.kind == "sas_p":
            m = self.mlp(u, rec)
            y = p["gain_sa"] * a + p["gain_ff"] * m
            record("gain_sa", y, a)
            record("gain_ff", y, m)
            return y
        xhat = p["gain_sa"] * a
        m = self.mlp(rms_norm(xhat, p["norm2_weight"]) if self.rms else xhat, rec)
        y = p["skip_ff"] * xhat + p["gain_ff"] * m
        record("gain_sa", xhat, a)
        record("skip_ff", y, xhat)
        record("gain_ff", y, m)
        return y


class AltUp(nn.Module):
    """AltUp's per-layer coefficients for L layers, as whole [L, ...] tensors under our names,
    and one layer's predict / compute / correct."""

    def __init__(self, a, L, C, dtype):
        super().__init__()
        self.K, self.C = a["k"], C
        self.first = {"alternate": False, "first": True}[a["active"]]
        self.predicted_input = {"activated": False, "predicted": True}[a["layer_input"]]
        self.input_dependent = {"static": False, "input_dependent": True}[a["coefficients"]]
        K = self.K
        if self.input_dependent:
            shapes = [("router_norm_weight", (L, C)), ("router_weight", (L, K, C)), ("predict_weight", (L, K * K, K)),
                      ("correct_weight", (L, K, K))]
        else:
            shapes = [("predict", (L, K, K)), ("correct", (L, K))]
        self.p = nn.ParameterDict({n: nn.Parameter(torch.zeros(s, dtype=dtype)) for n, s in shapes})

    def active(self, layer):
        return 0 if self.first else layer % self.K

    def coefficients(self, layer, xa):
        """(p, g) broadcastable over tokens: static [K, K] and [K]; input-dependent per token
        [B, T, K, K] and [B, T, K], from the active block before the prediction."""
        K, p = self.K, self.p
        if not self.input_dependent:
            return p["predict"][layer], p["correct"][layer]
        m = torch.tanh(F.linear(rms_norm(xa, p["router_norm_weight"][layer]), p["router_weight"][layer]) / self.C)
        wp = torch.clamp(p["predict_weight"][layer], -COEFFICIENT_CLAMP, COEFFICIENT_CLAMP)  # [K·K, K]
        wg = torch.clamp(p["correct_weight"][layer], -COEFFICIENT_CLAMP, COEFFICIENT_CLAMP)  # [K, K]
        P = torch.eye(K, dtype=xa.dtype) + F.linear(m, wp).unflatten(-1, (K, K))  # row-major: [..., i, j]
        g = 1.0 + F.linear(m, wg)
        return P, g

    def step(self, layer, xs, fn, rec=None):
        """xs: the K blocks [B, T, C]; fn: the wrapped layer. Returns the new K blocks. `rec`: a
        TermScales to record the static p and g in, or None."""
        K, a = self.K, self.active(layer)
        P, g = self.coefficients(layer, xs[a])
        if P.dim() == 2:
            xhat = [sum(P[i, j] * xs[j] for j in range(K)) for i in range(K)]
            gains = [g[i] for i in range(K)]
        else:
            xhat = [sum(P[..., i, j].unsqueeze(-1) * xs[j] for j in range(K)) for i in range(K)]
            gains = [g[..., i].unsqueeze(-1) for i in range(K)]
        y = fn(xhat[a] if self.predicted_input else xs[a])
        out = [xhat[i] + gains[i] * (y - xhat[a]) for i in range(K)]
        if rec is not None and not self.input_dependent:
            for i in range(K):
                for j in range(K):
                    rec.add("altup/predict", (layer, i, j), xhat[i], xs[j])
                rec.add("altup/correct", (layer, i), out[i], y - xhat[a])
        return out


class SimplifiedGpt2(nn.Module):
    """GPT-2 embeddings, a stack of dense / SAS / SAS-P blocks and MoM / MoE stages (torch_mom's
    RoutedStage), optionally AltUp around every layer, ln_f and the tied head."""

    def __init__(self, m, dtype):
        super().__init__()
        C, nh, eps = m["n_embd"], m["n_head"], m.get("ln_eps", 1e-5)
        self.C = C
        self.decay_embeddings = m.get("decay_embeddings", False)
        a = m.get("altup")
        self.altup_cfg = dict(ALTUP_DEFAULTS, **a) if a else None
        self.K = self.altup_cfg["k"] if a else 1
        self.wide = bool(a) and self.altup_cfg["mode"] == "wide"
        if a and self.altup_cfg["mode"] not in ("recycled", "wide"):
            raise ValueError(f"unknown altup mode {self.altup_cfg['mode']}")
        width = self.K * C if self.wide else C
        self.wte = nn.Parameter(torch.zeros(m["vocab_size"], width, dtype=dtype))
        self.wpe = nn.Parameter(torch.zeros(m["n_ctx"], width, dtype=dtype))
        self.blocks = nn.ModuleList()      # dense blocks, stored as blocks/* [L_dense, ...]
        self.simplified = nn.ModuleList()  # SAS / SAS-P blocks, each under its own prefix
        self.stages = nn.ModuleList()      # MoM chunks / MoE layers
        self.prefixes = {}                 # (kind, index in its list) -> our name prefix
        self.layers = []                   # ("dense" | "simplified" | "stage", index), in stack order
        counts = {"sas": 0, "sas_p": 0, "mom": 0, "moe": 0}
        stack = m.get("stack") or [{"type": "dense", "count": m["n_layer"]}]
        for raw in stack:
            t = raw["type"]
            if t == "dense":
                for _ in range(raw.get("count", 1)):
                    self.layers.append(("dense", len(self.blocks)))
                    self.blocks.append(Block(C, nh, eps).to(dtype))
            elif t in ("sas", "sas_p"):
                e = dict(SIMPLIFIED_DEFAULTS, **raw)
                for b in range(e["count"]):
                    self.prefixes[("simplified", len(self.simplified))] = f"{t}/{counts[t]}/"
                    counts[t] += 1
                    self.layers.append(("simplified", len(self.simplified)))
                    self.simplified.append(SimplifiedBlock(t, e, b == 0, C, nh, eps, dtype))
            elif t in ("mom", "moe"):
                e = dict(ROUTED_DEFAULTS[t], **raw)
                self.prefixes[("stage", len(self.stages))] = ("chunks/" if t == "mom" else "moe/") + f"{counts[t]}/"
                counts[t] += 1
                self.layers.append(("stage", len(self.stages)))
                self.stages.append(RoutedStage(e, C, nh, eps, dtype))
                if t == "mom" and e["anchor"]:  # the anchor: a dense block (and AltUp layer) of its own
                    self.layers.append(("dense", len(self.blocks)))
                    self.blocks.append(Block(C, nh, eps).to(dtype))
            else:
                raise ValueError(f"unknown stack entry type {t}")
        # Each routed stage's aux averages over the stages of its kind (as torch_mom.py).
        self.aux_scale = [1.0 / (counts["moe"] if s.moe else counts["mom"]) for s in self.stages]
        self.altup = AltUp(self.altup_cfg, len(self.layers), C, dtype) if a else None
        self.ln_f = nn.LayerNorm(C, eps=eps).to(dtype)
        self.routing = []
        self.rec = None  # a TermScales while one is wanted

    def _run_layer(self, kind, i, x, state):
        if kind == "dense":
            return self.blocks[i](x)
        if kind == "simplified":
            return self.simplified[i](x, self.rec, self.prefixes[("simplified", i)])
        B, T, C = x.shape
        steps = []
        out, aux = self.stages[i](x.reshape(B * T, C), B, T, steps)
        state["aux"] = state["aux"] + self.aux_scale[i] * aux
        self.routing.append({"stage": self.prefixes[("stage", i)], "steps": steps})
        return out.view(B, T, C)

    def forward(self, tokens, targets):
        """(mean cross-entropy, aux loss, logits [B·T, V]); self.routing gets the routed stages' decisions."""
        B, T = tokens.shape
        C, K = self.C, self.K
        e = self.wte[tokens] + self.wpe[:T]
        state = {"aux": e.new_zeros(())}
        self.routing = []
        if self.altup is None:
            x = e
            for kind, i in self.layers:
                x = self._run_layer(kind, i, x, state)
        else:
            xs = [e[..., j * C:(j + 1) * C] for j in range(K)] if self.wide else [e] * K
            for layer, (kind, i) in enumerate(self.layers):
                xs = self.altup.step(layer, xs, lambda u: self._run_layer(kind, i, u, state), self.rec)  # noqa: B023
            x = sum(xs)
        head = sum(self.wte[:, j * C:(j + 1) * C] for j in range(K)) if self.wide else self.wte
        logits = (self.ln_f(x) @ head.t()).reshape(B * T, -1)
        return F.cross_entropy(logits, targets.reshape(-1)), state["aux"], logits

    def named_tensors(self):
        """Our parameter name -> the list of torch tensors it stacks (one per dense block for blocks/*)."""
        out = {"wte": [self.wte], "wpe": [self.wpe]}
        if len(self.blocks):
            for name in _block_tensors(self.blocks[0]):
                out["blocks/" + name] = [_block_tensors(b)[name] for b in self.blocks]
        for i, b in enumerate(self.simplified):
            out.update({self.prefixes[("simplified", i)] + n: [t] for n, t in b.p.items()})
        for i, s in enumerate(self.stages):
            out.update({n: [t] for n, t in s.named_tensors(self.prefixes[("stage", i)]).items()})
        if self.altup is not None:
            out.update({"altup/" + n: [t] for n, t in self.altup.p.items()})
        out["ln_f_weight"] = [self.ln_f.weight]
        out["ln_f_bias"] = [self.ln_f.bias]
        return out

    def decays(self, name):
        if name in ("wte", "wpe"):
            return self.decay_embeddings
        return name.rsplit("/", 1)[-1] in DECAYED_MATRICES

    def param_groups(self, weight_decay):
        decay, rest = [], []
        for name, tensors in self.named_tensors().items():
            (decay if self.decays(name) else rest).extend(tensors)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def load_simplified_model(path, dtype=torch.float64):
    """Builds a SimplifiedGpt2 from a checkpoint's config and fills it with the stored weights;
    the checkpoint must hold exactly the tensors the model has."""
    model = SimplifiedGpt2(read_config(path)["model"], dtype)
    with h5py.File(path, "r") as f:
        names = model.named_tensors()
        stored = set(_dataset_names(f["params"]))
        if stored != set(names):
            raise ValueError(f"checkpoint and reference disagree on parameters: only stored "
                             f"{sorted(stored - set(names))}, only here {sorted(set(names) - stored)}")
        copy_stored_params(f, names)
    return model


def named_grads(model):
    """Every gradient under our parameter name and in our (layer-stacked) shape; a tensor that
    took no part in the loss reads as zeros."""
    out = {}
    for name, tensors in model.named_tensors().items():
        g = torch.stack([t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors])
        out[name] = g if name.startswith("blocks/") else g[0]
    return out
