"""GPT-2 with Mixture-of-Modules chunks and Mixture-of-Experts layers in plain PyTorch, written
from the math (MODELS.md §2-3), and a loader for mom checkpoints of such models.

Why it exists: tests/test_mom_reference.cpp compares our routed model (forward, backward,
aux losses, AdamW) against this. Our C++ routes tokens: it builds a dispatch plan, gathers
each module's rows, runs one GEMM per module and scatters back. This file deliberately does
none of that: every module runs on every token, and the routing becomes a dense [tokens,
modules] weight matrix that is zero for modules a token did not choose. The two only share
the equations and the checkpoint's dataset names, so a wrong gather, a mis-ordered combine or
a stale plan cannot be reproduced here by accident.

Choices (MODELS.md and the project's brief): top-K ties go to the lower class id; SKIP is the
last class and adds nothing; g = p over the selected classes, renormalised by option; the
selection is a constant, so gradients reach a router only through g and the aux losses;
capacity drops happen after the selection (the balance loss counts the selection before them)
and the survivors keep their weights. The dense blocks are torch_gpt2's Block, in stack order.
"""
import math

import h5py
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_gpt2 import Block, _block_tensors, copy_stored_params, read_config

# What a stack entry of each type means when a key is left out (io/config.cpp's defaults;
# the checkpoint stores the entries as the user wrote them).
STACK_DEFAULTS = {
    "dense": {"count": 1},
    "mom": {"attn_modules": 4, "ffn_modules": 4, "skip": True, "steps": 4, "top_k": 2, "router": "mlp",
            "router_dim": 256, "temperature": 1.0, "weighted_qkv": False, "anchor": False, "balance_coef": 0.01},
    "moe": {"experts": 8, "top_k": 2, "gate": "softmax", "renormalise": True, "aux_coef": 0.01, "z_coef": 0.001,
            "capacity_factor": 0.0, "drop_policy": "position", "shared_expert": False},
}

# Names of the router matrices (weight decay applies to them, never to their biases).
ROUTER_MATRICES = {"w1", "w2", "wx", "wh", "wout", "w"}


def _pool(names_shapes, dtype):
    return nn.ParameterDict({n: nn.Parameter(torch.zeros(s, dtype=dtype)) for n, s in names_shapes})


def attn_pool(n, C, dtype):
    return _pool([("ln_weight", (n, C)), ("ln_bias", (n, C)), ("qkv_weight", (n, 3 * C, C)), ("qkv_bias", (n, 3 * C)),
                  ("proj_weight", (n, C, C)), ("proj_bias", (n, C))], dtype)


def ffn_pool(n, C, dtype):
    return _pool([("ln_weight", (n, C)), ("ln_bias", (n, C)), ("fc_weight", (n, 4 * C, C)), ("fc_bias", (n, 4 * C)),
                  ("proj_weight", (n, C, 4 * C)), ("proj_bias", (n, C))], dtype)


def layer_norm_all(pool, x, eps):
    """LN_j(x) for every module j of a pool: [modules, N, C]."""
    return torch.stack([F.layer_norm(x, x.shape[-1:], pool["ln_weight"][j], pool["ln_bias"][j], eps)
                        for j in range(pool["ln_weight"].shape[0])])


def linear_all(u, w, b):
    """Module j's affine map on its own input u[j]: u [modules, N, in], w [modules, out, in] -> [modules, N, out]."""
    return torch.einsum("jni,joi->jno", u, w) + b[:, None, :]


def mlp_all(pool, x, eps):
    """MLP_j(LN_j(x)) for every module j: [modules, N, C]."""
    h = F.gelu(linear_all(layer_norm_all(pool, x, eps), pool["fc_weight"], pool["fc_bias"]), approximate="tanh")
    return linear_all(h, pool["proj_weight"], pool["proj_bias"])


def causal_attention(qkv, B, T, n_head):
    """Multi-head causal attention from q, k, v rows [B·T, 3C] (the dense layout: q | k | v, head h
    owns columns h·hd.. inside each third) -> o [B·T, C], heads concatenated."""
    C = qkv.shape[1] // 3
    hd = C // n_head
    q, k, v = (t.reshape(B, T, n_head, hd).transpose(1, 2) for t in qkv.split(C, dim=1))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return (probs @ v).transpose(1, 2).reshape(B * T, C)


class Router(nn.Module):
    """mlp, gru or linear router: raw residual rows -> logits. The GRU's state lives in the
    caller (one per router, zero at the chunk's start), passed in and returned."""

    def __init__(self, kind, C, r, classes, bias, dtype):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            shapes = [("w1", (r, C)), ("b1", (r,)), ("w2", (classes, r)), ("b2", (classes,))]
        elif kind == "gru":
            shapes = [("wx", (3 * r, C)), ("bx", (3 * r,)), ("wh", (3 * r, r)), ("bh", (3 * r,)),
                      ("wout", (classes, r)), ("bout", (classes,))]
        elif kind == "linear":
            shapes = [("w", (classes, C))] + ([("b", (classes,))] if bias else [])
        else:
            raise ValueError(f"unknown router kind {kind}")
        self.p = _pool(shapes, dtype)
        self.r = r

    def forward(self, x, state):
        p = self.p
        if self.kind == "mlp":
            return F.linear(F.relu(F.linear(x, p["w1"], p["b1"])), p["w2"], p["b2"]), state
        if self.kind == "linear":
            return F.linear(x, p["w"], p["b"] if "b" in p else None), state
        if state is None:
            state = torch.zeros(x.shape[0], self.r, dtype=x.dtype)
        xr, xz, xn = F.linear(x, p["wx"], p["bx"]).split(self.r, dim=1)
        hr, hz, hn = F.linear(state, p["wh"], p["bh"]).split(self.r, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        state = n + z * (state - n)
        return F.linear(state, p["wout"], p["bout"]), state


class Gate:
    """One routing decision for N tokens: probabilities, the selection (a constant), the
    per-class weights g (zero off the selection), and the aux terms."""

    def __init__(self, logits, k, temperature, sigmoid, renormalise):
        self.logits = logits
        self.p = torch.sigmoid(logits) if sigmoid else F.softmax(logits / temperature, dim=-1)
        pd = self.p.detach()
        N, classes = pd.shape
        # Stable descending sort: equal probabilities keep the lower class id first.
        order = torch.sort(pd, dim=-1, descending=True, stable=True).indices
        self.choice = order[:, :k]  # [N, K] in descending probability
        self.mask = torch.zeros(N, classes, dtype=self.p.dtype).scatter_(1, self.choice, 1.0)
        sel = self.p * self.mask
        self.g = sel / sel.sum(dim=1, keepdim=True) if renormalise else sel
        ranked = pd.gather(1, order)
        # How far the decision is from flipping: gap between the K-th and (K+1)-th probability.
        self.margin = (ranked[:, k - 1] - ranked[:, k]).min().item() if k < classes else None
        self.assigned = self.mask.sum(dim=0)  # per class, before any capacity drop

    def balance(self):
        N, K = self.choice.shape
        f = self.assigned / (N * K)
        return self.p.shape[1] * (f * self.p.mean(dim=0)).sum()

    def z(self):
        return (torch.logsumexp(self.logits, dim=-1) ** 2).mean()

    def apply_capacity(self, modules, factor, policy):
        """Drops assignments beyond ceil(factor·N·K/modules) per module; returns how many."""
        if factor <= 0:
            return 0
        N, K = self.choice.shape
        cap = math.ceil(factor * N * K / modules)
        pd = self.p.detach()
        keep = torch.zeros_like(self.mask)
        dropped = 0
        for j in range(modules):
            slots = [(t, kk) for t in range(N) for kk in range(K) if self.choice[t, kk].item() == j]  # (token, k) order
            if policy == "probability":
                slots.sort(key=lambda s: -pd[s[0], j].item())  # stable: ties stay in (token, k) order
            elif policy != "position":
                raise ValueError(f"unknown drop policy {policy}")
            for t, _ in slots[:cap]:
                keep[t, j] = 1.0
            dropped += max(0, len(slots) - cap)
        self.g = self.g * keep
        self.mask = self.mask * keep
        return dropped

    def load(self):
        return [int(v) for v in self.mask.sum(dim=0).tolist()]


class RoutedStage(nn.Module):
    """A MoM chunk, or an MoE layer as the chunk with one always-used attention module, E expert
    FFNs behind a linear gate without bias, and one step."""

    def __init__(self, e, C, n_head, eps, dtype):
        super().__init__()
        self.moe = e["type"] == "moe"
        self.n_head, self.eps = n_head, eps
        if self.moe:
            self.NA, self.NF, self.skip, self.H, self.K = 1, e["experts"], False, 1, e["top_k"]
            self.temperature, self.weighted_qkv = 1.0, False
            self.sigmoid, self.renormalise = e["gate"] == "sigmoid", e["renormalise"]
            self.coef, self.z_coef = e["aux_coef"], e["z_coef"]
            self.capacity, self.policy = e["capacity_factor"], e["drop_policy"]
            self.router_attn = None
            self.router_ffn = Router("linear", C, 0, self.NF, False, dtype)
            self.shared = ffn_pool(1, C, dtype) if e["shared_expert"] else None
        else:
            self.NA, self.NF, self.skip, self.H, self.K = e["attn_modules"], e["ffn_modules"], e["skip"], e["steps"], e["top_k"]
            self.temperature, self.weighted_qkv = e["temperature"], e["weighted_qkv"]
            self.sigmoid, self.renormalise = False, True
            self.coef, self.z_coef = e["balance_coef"], 0.0
            self.capacity, self.policy = 0.0, "position"
            S = 1 if self.skip else 0
            self.router_attn = Router(e["router"], C, e["router_dim"], self.NA + S, True, dtype)
            self.router_ffn = Router(e["router"], C, e["router_dim"], self.NF + S, True, dtype)
            self.shared = None
        self.attn = attn_pool(self.NA, C, dtype)
        self.ffn = ffn_pool(self.NF, C, dtype)

    def named_tensors(self, prefix):
        out = {}
        for part, d in (("attn/", self.attn), ("ffn/", self.ffn), ("shared/", self.shared)):
            if d is not None:
                out.update({prefix + part + n: t for n, t in d.items()})
        for part, r in (("router_attn/", self.router_attn), ("router_ffn/", self.router_ffn)):
            if r is not None:
                out.update({prefix + part + n: t for n, t in r.p.items()})
        return out

    def _gate(self, router, x, state):
        logits, state = router(x, state)
        return Gate(logits, self.K, self.temperature, self.sigmoid, self.renormalise), state

    def forward(self, x, B, T, log):
        """x [B·T, C] -> (x after the stage, this stage's aux loss). Appends one record per
        step to `log`: the decisions' loads after drops, drops and margins."""
        aux = x.new_zeros(())
        state_a = state_f = None
        for _ in range(self.H):
            rec = {}
            if self.router_attn is None:
                w_attn = x.new_ones(x.shape[0], 1)  # the MoE's one attention module, weight 1
                c_qkv = w_attn
            else:
                ga, state_a = self._gate(self.router_attn, x, state_a)
                w_attn = ga.g[:, :self.NA]
                c_qkv = w_attn if self.weighted_qkv else ga.mask[:, :self.NA]
                aux = aux + self.coef / self.H * ga.balance()
                rec["attn"] = {"load": ga.load(), "dropped": 0, "margin": ga.margin}
            qkv_all = linear_all(layer_norm_all(self.attn, x, self.eps), self.attn["qkv_weight"], self.attn["qkv_bias"])
            qkv = torch.einsum("nj,jnd->nd", c_qkv, qkv_all)
            o = causal_attention(qkv, B, T, self.n_head)
            proj_all = torch.einsum("nc,jdc->jnd", o, self.attn["proj_weight"]) + self.attn["proj_bias"][:, None, :]
            x = x + torch.einsum("nj,jnd->nd", w_attn, proj_all)

            gf, state_f = self._gate(self.router_ffn, x, state_f)
            aux = aux + self.coef / self.H * gf.balance()
            if self.z_coef:
                aux = aux + self.z_coef / self.H * gf.z()
            dropped = gf.apply_capacity(self.NF, self.capacity, self.policy)
            f = torch.einsum("nj,jnd->nd", gf.g[:, :self.NF], mlp_all(self.ffn, x, self.eps))
            if self.shared is not None:
                f = f + mlp_all(self.shared, x, self.eps)[0]
            x = x + f
            rec["ffn"] = {"load": gf.load(), "dropped": dropped, "margin": gf.margin}
            log.append(rec)
        return x, aux


class MomGpt2(nn.Module):
    def __init__(self, m, dtype):
        super().__init__()
        C, nh, eps = m["n_embd"], m["n_head"], m.get("ln_eps", 1e-5)
        self.n_head = nh
        self.decay_embeddings = m.get("decay_embeddings", False)
        self.wte = nn.Parameter(torch.zeros(m["vocab_size"], C, dtype=dtype))
        self.wpe = nn.Parameter(torch.zeros(m["n_ctx"], C, dtype=dtype))
        self.blocks = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.stage_names = []
        self.items = []  # ("dense", block index) | ("stage", stage index), in stack order
        counts = {"mom": 0, "moe": 0}
        for raw in m["stack"]:
            e = dict(STACK_DEFAULTS[raw["type"]], **raw)
            if e["type"] == "dense":
                for _ in range(e["count"]):
                    self.items.append(("dense", len(self.blocks)))
                    self.blocks.append(Block(C, nh, eps).to(dtype))
                continue
            self.items.append(("stage", len(self.stages)))
            self.stages.append(RoutedStage(e, C, nh, eps, dtype))
            self.stage_names.append(("chunks/" if e["type"] == "mom" else "moe/") + str(counts[e["type"]]) + "/")
            counts[e["type"]] += 1
            if e["type"] == "mom" and e["anchor"]:
                self.items.append(("dense", len(self.blocks)))
                self.blocks.append(Block(C, nh, eps).to(dtype))
        # Each stage's aux averages over the stages of its kind.
        self.aux_scale = [1.0 / counts["moe" if s.moe else "mom"] for s in self.stages]
        self.ln_f = nn.LayerNorm(C, eps=eps).to(dtype)
        self.routing = []

    def forward(self, tokens, targets):
        """(mean cross-entropy, aux loss, logits [B·T, V]); self.routing gets the decisions."""
        B, T = tokens.shape
        x = (self.wte[tokens] + self.wpe[:T]).reshape(B * T, -1)
        aux = x.new_zeros(())
        self.routing = []
        for kind, i in self.items:
            if kind == "dense":
                x = self.blocks[i](x.view(B, T, -1)).reshape(B * T, -1)
                continue
            steps = []
            x, stage_aux = self.stages[i](x, B, T, steps)
            aux = aux + self.aux_scale[i] * stage_aux
            self.routing.append({"stage": self.stage_names[i], "steps": steps})
        logits = self.ln_f(x) @ self.wte.t()
        return F.cross_entropy(logits, targets.reshape(-1)), aux, logits

    def named_tensors(self):
        """Our parameter name -> the list of torch tensors it stacks (one per dense block for blocks/*)."""
        out = {"wte": [self.wte], "wpe": [self.wpe]}
        if len(self.blocks):
            for name in _block_tensors(self.blocks[0]):
                out["blocks/" + name] = [_block_tensors(b)[name] for b in self.blocks]
        for s, prefix in zip(self.stages, self.stage_names):
            out.update({n: [t] for n, t in s.named_tensors(prefix).items()})
        out["ln_f_weight"] = [self.ln_f.weight]
        out["ln_f_bias"] = [self.ln_f.bias]
        return out

    def param_groups(self, weight_decay):
        """AdamW groups: decay on every matrix of a linear map (dense blocks, pools, routers) and on
        wte/wpe when decay_embeddings; never on biases or LayerNorms."""
        decay, rest = [], []
        for name, tensors in self.named_tensors().items():
            leaf = name.rsplit("/", 1)[-1]
            is_matrix = leaf in ROUTER_MATRICES or leaf.endswith(("qkv_weight", "proj_weight", "fc_weight"))
            if name in ("wte", "wpe"):
                is_matrix = self.decay_embeddings
            (decay if is_matrix else rest).extend(tensors)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def load_mom_model(path, dtype=torch.float64):
    """Builds a MomGpt2 from a checkpoint's config and fills it with the stored weights."""
    m = read_config(path)["model"]
    model = MomGpt2(m, dtype)
    with h5py.File(path, "r") as f:
        names = model.named_tensors()
        stored = {k for k in _dataset_names(f["params"])}
        if stored != set(names):
            raise ValueError(f"checkpoint and reference disagree on parameters: only stored {sorted(stored - set(names))}, "
                             f"only here {sorted(set(names) - stored)}")
        copy_stored_params(f, names)
    return model


def _dataset_names(group, prefix=""):
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            yield from _dataset_names(v, prefix + k + "/")
        else:
            yield prefix + k


def named_grads(model):
    """Every gradient under our parameter name and in our (layer-stacked) shape; a tensor that
    took no part in the loss reads as zeros."""
    out = {}
    for name, tensors in model.named_tensors().items():
        g = torch.stack([t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors])
        out[name] = g if name.startswith("blocks/") else g[0]
    return out
