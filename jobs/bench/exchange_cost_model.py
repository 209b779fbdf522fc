"""Analytic cost model of the expert/module token exchange (parallel/token_exchange.h): bytes and
trips per rank and training step, their time on a GPU cluster, and their share of the step.

The exchange, per routed pool and assembly step (docs/parallel-performance.md derives it):
each rank routes its own N = B*T tokens; every (token, choice) pair that picks a module is one
row; a pool of M modules is sharded over the E ranks of an EP group (consecutive ranks, an even
split), so under routing that is the same on every rank a row leaves its rank with probability
(E-1)/E. The trips, each one alltoallv over the EP group, widths in units of the model width C:

    MoM attention step  dispatch x (1), return QKV (3), dispatch attention output (1), return projection (1)
    MoM FFN step        dispatch x (1), return output (1)
    MoE layer           dispatch x (1), return output (1)   (its attention is dense: no exchange)

Backward repeats every row trip with the same width in the other direction. Every routing (a
side at a step) first trades its per-(peer, module) row counts, one small trip of M int64
per rank, (E-1)/E of them to other ranks; the layout is kept for all the trips of that routing.

Weak scaling: tokens per rank are fixed, so bytes and trips per rank depend on the EP size E
(through (E-1)/E, and through which links it spans) and not on the world size W.

Usage: /usr/bin/python3 jobs/bench/exchange_cost_model.py [--dtype bf16] [--tflops 400]
           [--bw-intra 350] [--bw-inter 45] [--lat-intra 15] [--lat-inter 50]
Importable: load_config, exchange_per_rank, exchange_from_routing, exchange_time, step_estimate.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ELEMENT_BYTES = {"fp32": 4, "bf16": 2}
COUNT_BYTES = 8        # the row counts are int64
GPUS_PER_NODE = 8      # DGX/HGX H100: EP groups of up to 8 consecutive ranks stay on NVLink

# Row trips of one routing, forward: (what, width in units of C). Backward repeats each.
MOM_ATTENTION_TRIPS = (("dispatch x", 1), ("return QKV", 3), ("dispatch attention output", 1),
                       ("return projection", 1))
FFN_TRIPS = (("dispatch x", 1), ("return output", 1))
COUNT_TRIPS = 1  # per routing: the row counts, before its first dispatch

# What this model reads of a stack entry, with io/config.cpp's default for a key left out.
STACK_DEFAULTS = {
    "dense": {"count": 1},
    "mom": {"attn_modules": 4, "ffn_modules": 4, "skip": True, "steps": 4, "top_k": 2, "router": "mlp",
            "router_dim": 256, "anchor": False},
    "moe": {"experts": 8, "top_k": 2, "shared_expert": False},
}


# ---------------------------------------------------------------------------------------------
# Configs: the trainer's JSON files (with // comments) and its --set overrides.

def strip_comments(text):
    """Drops // comments outside strings (the configs carry them)."""
    out, i, in_str = [], 0, False
    while i < len(text):
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def apply_override(cfg, text):
    """--set key.path=value, as the trainer reads it: a JSON value, else a bare string."""
    path, _, raw = text.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = path.split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return cfg


def load_config(path, overrides=()):
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO, path)
    with open(path) as f:
        cfg = json.loads(strip_comments(f.read()))
    for o in overrides:
        apply_override(cfg, o)
    return cfg


def stack(cfg):
    """The model's stack entries merged over their defaults; an anchor becomes a dense entry."""
    out = []
    for e in cfg["model"].get("stack", []):
        d = dict(STACK_DEFAULTS[e["type"]], **e)
        out.append(d)
        if d["type"] == "mom" and d["anchor"]:
            out.append({"type": "dense", "count": 1})
    return out


def routed_stages(cfg):
    """One dict per routed stage: pool sizes, SKIP class, steps H, top-K, router."""
    st = []
    for d in stack(cfg):
        if d["type"] == "mom":
            forced = d["router"] == "forced"
            st.append({"kind": "mom", "attn_modules": d["attn_modules"], "ffn_modules": d["ffn_modules"],
                       "skip": 1 if d["skip"] else 0, "steps": d["steps"], "top_k": d["top_k"],
                       "router": d["router"], "router_dim": d["router_dim"], "router_bias": True,
                       "attn_learned": not forced, "ffn_learned": not forced, "shared_expert": False})
        elif d["type"] == "moe":
            st.append({"kind": "moe", "attn_modules": 1, "ffn_modules": d["experts"], "skip": 0, "steps": 1,
                       "top_k": d["top_k"], "router": "linear", "router_dim": 0, "router_bias": False,
                       "attn_learned": False, "ffn_learned": True, "shared_expert": d["shared_expert"]})
    return st


def widen_pools(cfg, E):
    """A copy of cfg with every pool rounded up to a multiple of E (ModuleSharding needs an even
    split): per token the same model (rows, and FLOPs but for the routers' wider output layers),
    with more modules in all."""
    out = json.loads(json.dumps(cfg))
    up = lambda m: -(-m // E) * E
    for e in out["model"].get("stack", []):
        if e["type"] == "mom":
            for k in ("attn_modules", "ffn_modules"):
                e[k] = up(e.get(k, STACK_DEFAULTS["mom"][k]))
        elif e["type"] == "moe":
            e["experts"] = up(e.get("experts", STACK_DEFAULTS["moe"]["experts"]))
    return out


def dense_layers(cfg):
    s = stack(cfg)
    return sum(d["count"] for d in s if d["type"] == "dense") if s else cfg["model"]["n_layer"]


# ---------------------------------------------------------------------------------------------
# Compute: the same count as Gpt2::active_parameters / flops_per_token (core/gpt2.cpp).

def attention_module_params(C):
    return 2 * C + 3 * C * C + 3 * C + C * C + C      # LayerNorm, QKV, output projection


def ffn_module_params(C):
    return 2 * C + 4 * C * C + 4 * C + 4 * C * C + C  # LayerNorm, fc, projection


def router_params(kind, C, r, classes, bias):
    if kind == "mlp":
        return r * C + r + classes * r + classes
    if kind == "gru":
        return 3 * r * C + 3 * r + 3 * r * r + 3 * r + classes * r + classes
    if kind == "linear":
        return classes * C + (classes if bias else 0)
    return 0  # forced: no router


def active_parameters(cfg):
    m = cfg["model"]
    C, V, n_ctx = m["n_embd"], m["vocab_size"], m["n_ctx"]
    total = V * C + n_ctx * C + dense_layers(cfg) * (attention_module_params(C) + ffn_module_params(C)) + 2 * C
    for s in routed_stages(cfg):
        per_step = attention_module_params(C) * (s["top_k"] if s["attn_learned"] else 1)
        per_step += ffn_module_params(C) * (s["top_k"] if s["ffn_learned"] else 1)
        if s["attn_learned"]:
            per_step += router_params(s["router"], C, s["router_dim"], s["attn_modules"] + s["skip"], s["router_bias"])
        if s["ffn_learned"]:
            per_step += router_params(s["router"], C, s["router_dim"], s["ffn_modules"] + s["skip"], s["router_bias"])
        if s["shared_expert"]:
            per_step += ffn_module_params(C)
        total += per_step * s["steps"]
    return total


def flops_per_token(cfg, T):
    attention_layers = dense_layers(cfg) + sum(s["steps"] for s in routed_stages(cfg))
    return 6.0 * active_parameters(cfg) + 6.0 * attention_layers * cfg["model"]["n_embd"] * T


# ---------------------------------------------------------------------------------------------
# Traffic.

@dataclass
class Traffic:
    """Per rank and micro-batch (forward + backward): what leaves the rank, and how often."""
    row_bytes: float = 0.0     # token rows sent to other ranks
    count_bytes: float = 0.0   # int64 row counts sent to other ranks
    trips: int = 0             # alltoallv calls, count exchanges included
    by_side: dict = field(default_factory=dict)  # "attn"/"ffn" -> row bytes

    @property
    def bytes_sent(self):
        return self.row_bytes + self.count_bytes

    def add(self, side, rows, widths, modules, E, C, elem_bytes):
        """One routing (a side at a step): `rows` dispatched rows, row trips of `widths` (units
        of C) forward and again backward, one count exchange over a pool of `modules`."""
        leave = (E - 1) / E
        b = 2 * leave * rows * C * elem_bytes * sum(widths)
        self.row_bytes += b
        self.by_side[side] = self.by_side.get(side, 0.0) + b
        self.count_bytes += COUNT_TRIPS * leave * modules * COUNT_BYTES
        self.trips += 2 * len(widths) + COUNT_TRIPS


def expected_rows_per_token(top_k, modules, skip, skip_share):
    """Rows a token dispatches on one side. skip_share None: uniform routing over the classes
    (a SKIP class is picked with probability K/(M+S), so K*M/(M+S) rows); a number: that share
    of the K choices goes to SKIP (0 = every choice is a module, the upper bound)."""
    if skip_share is None:
        return top_k * modules / (modules + skip)
    return top_k * (1.0 - (skip_share if skip else 0.0))


def _stage_traffic(t, s, C, E, elem_bytes, rows_of):
    """Adds one routed stage; rows_of(step, side) -> dispatched rows per rank."""
    for h in range(s["steps"]):
        if s["kind"] == "mom" and s["attn_learned"]:
            t.add("attn", rows_of(h, "attn"), [w for _, w in MOM_ATTENTION_TRIPS], s["attn_modules"], E, C, elem_bytes)
        if s["ffn_learned"]:
            t.add("ffn", rows_of(h, "ffn"), [w for _, w in FFN_TRIPS], s["ffn_modules"], E, C, elem_bytes)


def exchange_per_rank(cfg, tokens, E, elem_bytes, skip_share=0.0):
    """Traffic per rank for one micro-batch of `tokens` tokens, routing assumed the same on every
    rank (see expected_rows_per_token for skip_share). E == 1: nothing is exchanged."""
    t = Traffic()
    if E <= 1:
        return t
    C = cfg["model"]["n_embd"]
    for s in routed_stages(cfg):
        def rows_of(h, side, s=s):
            modules = s["attn_modules"] if side == "attn" else s["ffn_modules"]
            return tokens * expected_rows_per_token(s["top_k"], modules, s["skip"], skip_share)
        _stage_traffic(t, s, C, E, elem_bytes, rows_of)
    return t


def exchange_from_routing(cfg, routing, E, elem_bytes, scale=1.0):
    """Traffic per rank predicted from a metrics.jsonl record's "routing" (the loads the run
    actually routed: module classes only, SKIP last and left out; dropped assignments are not
    in the loads). `scale` divides the loads to one rank's share (the number of ranks when the
    loads are summed over ranks)."""
    t = Traffic()
    if E <= 1:
        return t
    C = cfg["model"]["n_embd"]
    for s, rec in zip(routed_stages(cfg), routing):
        def rows_of(h, side, s=s, rec=rec):
            modules = s["attn_modules"] if side == "attn" else s["ffn_modules"]
            return sum(rec["steps"][h][side]["load"][:modules]) / scale
        _stage_traffic(t, s, C, E, elem_bytes, rows_of)
    return t


# ---------------------------------------------------------------------------------------------
# Time.

@dataclass
class Hardware:
    """Per-GPU all-to-all figures (bus bandwidth: bytes that leave a GPU per second) and the
    achieved training throughput. Defaults: DGX/HGX H100, one 400 Gb/s NDR NIC per GPU, bf16;
    docs/parallel-performance.md sets them against published measurements."""
    bw_intra: float = 350e9   # NVLink all-to-all, B/s per GPU
    bw_inter: float = 45e9    # InfiniBand all-to-all, B/s per GPU
    lat_intra: float = 15e-6  # per trip, EP group inside a node
    lat_inter: float = 50e-6  # per trip, EP group across nodes
    flops: float = 400e12     # achieved FLOP/s per GPU


def exchange_time(t, E, hw, gpus_per_node=GPUS_PER_NODE):
    """Seconds per micro-batch: latency x trips + bytes / bandwidth. Of what leaves a rank, the
    share (g-1)/(E-1) goes to the g-1 peers on its node (NVLink) and (E-g)/(E-1) over the
    network, g = min(E, gpus_per_node) (EP groups are consecutive ranks); both links run at once,
    so the slower one sets the time."""
    if E <= 1 or t.trips == 0:
        return 0.0
    g = min(E, gpus_per_node)
    intra = t.bytes_sent * (g - 1) / (E - 1)
    inter = t.bytes_sent * (E - g) / (E - 1)
    lat = hw.lat_intra if E <= gpus_per_node else hw.lat_inter
    return t.trips * lat + max(intra / hw.bw_intra, inter / hw.bw_inter)


def step_estimate(cfg, tokens, E, hw, elem_bytes):
    """One micro-batch forward + backward on one rank: exchange and compute, no overlap (the
    exchange blocks). Every one of the K choices is a module (no SKIP): the upper bound of the
    bytes, and the compute Gpt2::flops_per_token counts."""
    T = cfg["train"]["seq_len"]
    t = exchange_per_rank(cfg, tokens, E, elem_bytes, 0.0)
    t_ex = exchange_time(t, E, hw)
    t_comp = flops_per_token(cfg, T) * tokens / hw.flops
    return {"traffic": t, "exchange_s": t_ex, "compute_s": t_comp, "share": t_ex / (t_ex + t_comp),
            "active_parameters": active_parameters(cfg), "flops_per_token": flops_per_token(cfg, T)}


# ---------------------------------------------------------------------------------------------
# The extrapolation table.

CONFIGS = ["jobs/configs/mom_gpt2_small.json", "jobs/configs/mom_gpt2_medium.json",
           "jobs/configs/mom_gpt2_large.json", "jobs/configs/moe_gpt2_small.json"]
EP_SIZES = [8, 64]
WORLD_SIZES = [64, 128, 256, 512, 1024]
PAPER_TOKENS_PER_STEP = 512 * 1024  # MODELS.md §2: the paper's global batch


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=sorted(ELEMENT_BYTES), default="bf16", help="element type of the rows")
    ap.add_argument("--tflops", type=float, default=400, help="achieved TFLOP/s per GPU")
    ap.add_argument("--bw-intra", type=float, default=350, help="NVLink all-to-all GB/s per GPU")
    ap.add_argument("--bw-inter", type=float, default=45, help="network all-to-all GB/s per GPU")
    ap.add_argument("--lat-intra", type=float, default=15, help="us per trip inside a node")
    ap.add_argument("--lat-inter", type=float, default=50, help="us per trip across nodes")
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    a = ap.parse_args(argv)
    hw = Hardware(a.bw_intra * 1e9, a.bw_inter * 1e9, a.lat_intra * 1e-6, a.lat_inter * 1e-6, a.tflops * 1e12)
    eb = ELEMENT_BYTES[a.dtype]
    print(f"{a.dtype} rows, {a.tflops:g} TFLOP/s achieved, all-to-all {a.bw_intra:g} GB/s per GPU on NVLink "
          f"(EP <= {GPUS_PER_NODE}) / {a.bw_inter:g} GB/s over the network, latency {a.lat_intra:g} / "
          f"{a.lat_inter:g} us a trip; all K choices are modules; pools rounded up to a multiple of E")
    print()
    print("Per rank and micro-batch of the config's B x T = 16 x 1024 tokens, forward + backward. Weak scaling")
    print("(tokens per rank fixed): the same for every world size W >= E.")
    head = (f"{'config':16s} {'E':>3s} {'pool':>4s} {'nodes':>5s} {'active':>7s} {'GB sent':>8s} {'attn%':>6s} "
            f"{'trips':>5s} {'exch ms':>8s} {'comp ms':>8s} {'share':>6s}")
    print(head)
    print("-" * len(head))
    rows = []
    for path in a.configs:
        base = load_config(path)
        name = os.path.splitext(os.path.basename(path))[0].replace("_gpt2", "")
        for E in EP_SIZES:
            cfg = widen_pools(base, E)
            N = cfg["train"]["batch_size"] * cfg["train"]["seq_len"]
            r = step_estimate(cfg, N, E, hw, eb)
            t = r["traffic"]
            pool = max(s["ffn_modules"] for s in routed_stages(cfg))
            print(f"{name:16s} {E:>3d} {pool:>4d} {-(-E // GPUS_PER_NODE):>5d} {r['active_parameters'] / 1e6:>6.0f}M "
                  f"{t.bytes_sent / 1e9:>8.2f} {t.by_side.get('attn', 0) / t.row_bytes:>6.0%} {t.trips:>5d} "
                  f"{r['exchange_s'] * 1e3:>8.1f} {r['compute_s'] * 1e3:>8.1f} {r['share']:>6.1%}")
            rows.append((name, E, cfg, N))
    print()
    print("Exchange share of step time by world size W.")
    print("  weak:   tokens per rank fixed at B x T = 16384 (global batch grows with W): flat in W.")
    print(f"  strong: the paper's global batch of {PAPER_TOKENS_PER_STEP} tokens spread over W ranks "
          "(- : less than one 1024-token sequence per rank).")
    head = f"{'config':16s} {'E':>3s} {'scaling':>7s} " + " ".join(f"{'W=' + str(w):>7s}" for w in WORLD_SIZES)
    print(head)
    print("-" * len(head))
    for name, E, cfg, N in rows:
        T = cfg["train"]["seq_len"]
        weak = [f"{step_estimate(cfg, N, E, hw, eb)['share']:>7.1%}" for _ in WORLD_SIZES]
        strong = [f"{step_estimate(cfg, PAPER_TOKENS_PER_STEP / w, E, hw, eb)['share']:>7.1%}"
                  if PAPER_TOKENS_PER_STEP / w >= T else f"{'-':>7s}" for w in WORLD_SIZES]
        print(f"{name:16s} {E:>3d} {'weak':>7s} " + " ".join(weak))
        print(f"{'':16s} {'':>3s} {'strong':>7s} " + " ".join(strong))


if __name__ == "__main__":
    main(sys.argv[1:])
