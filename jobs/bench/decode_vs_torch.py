"""Decoding benchmark: our KV-cached decode through the serving engine (`mom bench decode`:
one stream, 8 concurrent streams, and one cached token's cost at growing prefix lengths)
beside a PyTorch KV-cached decode loop of the same model, same thread count, for the tiny
dense GPT-2 and the tiny MoM (jobs/configs/gpt2_tiny_cpu.json, mom_tiny_cpu.json).

Why this way: each side runs in its own process with OMP_NUM_THREADS set. The PyTorch loop is
what a PyTorch user would write for these models (written here from MODELS.md, sharing no code
with ours): per layer LayerNorm, one QKV projection, the new key and value written into a
preallocated cache, attention of the one new row over the cached prefix, the output
projection and the MLP; for the MoM chunk, per assembly step the GRU routers' top-k choice,
only the chosen modules' projections (summed QKV, weighted outputs), one cache per step. Both
sides start from random weights (speed does not depend on their values) and sample.
Targets (docs/benchmarks.md): our single stream >= 2x PyTorch's; our 8-stream aggregate >= 4x
our single stream; the cached MoM token's cost flat in the prefix length (the curve is printed).

Usage: /usr/bin/python3 jobs/bench/decode_vs_torch.py [--threads 2] [--prompt 16] [--tokens 64]
           [--streams 8] [--json out.json]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"dense": "jobs/configs/gpt2_tiny_cpu.json", "mom": "jobs/configs/mom_tiny_cpu.json"}
TARGETS = {"single_vs_torch": 2.0, "aggregate_vs_single": 4.0}


def read_config(path):
    text = open(os.path.join(REPO, path)).read()
    lines = [l for l in text.splitlines() if not l.strip().startswith("//")]
    return json.loads("\n".join(lines))["model"]


def torch_worker(a):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = read_config(CONFIGS[a.torch_worker])
    C, nh, V, ctx = m["n_embd"], m["n_head"], m["vocab_size"], m["n_ctx"]
    hd = C // nh
    rnd = lambda *s: torch.randn(*s) * 0.02  # noqa: E731
    wte, wpe = rnd(V, C), rnd(ctx, C)

    def dense_layer():
        return {"ln1": (torch.ones(C), torch.zeros(C)), "qkv": (rnd(3 * C, C), torch.zeros(3 * C)),
                "proj": (rnd(C, C), torch.zeros(C)), "ln2": (torch.ones(C), torch.zeros(C)),
                "fc": (rnd(4 * C, C), torch.zeros(4 * C)), "fc2": (rnd(C, 4 * C), torch.zeros(C)),
                "k": torch.zeros(ctx, C), "v": torch.zeros(ctx, C)}

    def attend(q, kc, vc, pos):
        qh = q.view(nh, 1, hd)
        k = kc[:pos + 1].view(pos + 1, nh, hd).transpose(0, 1)
        v = vc[:pos + 1].view(pos + 1, nh, hd).transpose(0, 1)
        p = torch.softmax(qh @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)
        return (p @ v).reshape(1, C)

    def mlp(p, x, ln, fc, fc2):
        h = F.layer_norm(x, (C,), *p[ln], 1e-5)
        return F.linear(F.gelu(F.linear(h, *p[fc]), approximate="tanh"), *p[fc2])

    def dense_step(p, x, pos):
        h = F.layer_norm(x, (C,), *p["ln1"], 1e-5)
        q, k, v = F.linear(h, *p["qkv"]).split(C, dim=1)
        p["k"][pos], p["v"][pos] = k[0], v[0]
        x = x + F.linear(attend(q, p["k"], p["v"], pos), *p["proj"])
        return x + mlp(p, x, "ln2", "fc", "fc2")

    class Chunk:
        def __init__(self, e):
            self.NA, self.NF, self.H, self.K = e["attn_modules"], e["ffn_modules"], e["steps"], e["top_k"]
            self.S, r = (1 if e.get("skip", True) else 0), e.get("router_dim", 256)
            self.r = r
            self.attn = [dense_layer() for _ in range(self.NA)]
            self.ffn = [dense_layer() for _ in range(self.NF)]
            self.routers = {side: {"wx": rnd(3 * r, C), "bx": torch.zeros(3 * r), "wh": rnd(3 * r, r),
                                   "bh": torch.zeros(3 * r), "wout": rnd(n + self.S, r), "bout": torch.zeros(n + self.S)}
                            for side, n in (("attn", self.NA), ("ffn", self.NF))}
            self.kc = [torch.zeros(ctx, C) for _ in range(self.H)]
            self.vc = [torch.zeros(ctx, C) for _ in range(self.H)]

        def route(self, side, x, s):
            p = self.routers[side]
            xr, xz, xn = F.linear(x, p["wx"], p["bx"]).split(self.r, dim=1)
            hr, hz, hn = F.linear(s, p["wh"], p["bh"]).split(self.r, dim=1)
            r_, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r_ * hn)
            s = n + z * (s - n)
            probs = torch.softmax(F.linear(s, p["wout"], p["bout"]), dim=-1)[0]
            top = torch.topk(probs, self.K)
            g = top.values / top.values.sum()
            return list(zip(top.indices.tolist(), g.tolist())), s

        def step(self, x, pos):
            sa = torch.zeros(1, self.r)
            sf = torch.zeros(1, self.r)
            for h in range(self.H):
                sel, sa = self.route("attn", x, sa)
                real = [(j, g) for j, g in sel if j < self.NA]
                qkv = torch.zeros(1, 3 * C)
                for j, _ in real:
                    p = self.attn[j]
                    qkv = qkv + F.linear(F.layer_norm(x, (C,), *p["ln1"], 1e-5), *p["qkv"])
                q, k, v = qkv.split(C, dim=1)
                self.kc[h][pos], self.vc[h][pos] = k[0], v[0]
                o = attend(q, self.kc[h], self.vc[h], pos)
                for j, g in real:
                    x = x + g * F.linear(o, *self.attn[j]["proj"])
                sel, sf = self.route("ffn", x, sf)
                f = torch.zeros(1, C)
                for j, g in sel:
                    if j < self.NF:
                        f = f + g * mlp(self.ffn[j], x, "ln2", "fc", "fc2")
                x = x + f
            return x

    layers = []
    for e in m.get("stack") or [{"type": "dense", "count": m["n_layer"]}]:
        if e["type"] == "dense":
            layers += [("dense", dense_layer()) for _ in range(e.get("count", 1))]
        else:
            layers.append(("mom", Chunk(e)))
            if e.get("anchor"):
                layers.append(("dense", dense_layer()))
    lnf = (torch.ones(C), torch.zeros(C))

    def forward(token, pos):
        x = (wte[token] + wpe[pos]).view(1, C)
        for kind, p in layers:
            x = dense_step(p, x, pos) if kind == "dense" else p.step(x, pos)
        return F.linear(F.layer_norm(x, (C,), *lnf, 1e-5), wte)[0]

    def sample(logits):
        top = torch.topk(logits, 40)
        return int(top.indices[torch.multinomial(torch.softmax(top.values / 0.8, -1), 1)])

    with torch.no_grad():
        tokens = torch.randint(V, (a.prompt,)).tolist()
        for pos, t in enumerate(tokens):  # prefill, one position at a time (not timed)
            logits = forward(t, pos)
        t0 = time.perf_counter()
        for pos in range(a.prompt, a.prompt + a.tokens):
            logits = forward(sample(logits) if pos > a.prompt else tokens[-1], pos)
        dt = time.perf_counter() - t0
    print(json.dumps({"single_stream_tokens_per_s": a.tokens / dt, "threads": torch.get_num_threads(),
                      "backend": f"torch {torch.__version__}"}))


def run(cmd, env):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--mom", default=os.path.join(REPO, "build", "mom"))
    ap.add_argument("--json")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    results = {}
    print(f"KV-cached decoding, {a.threads} threads, prompt {a.prompt}, {a.tokens} tokens per stream, "
          f"sampling (temperature 0.8, top-k 40)", flush=True)
    for name, cfg in CONFIGS.items():
        ours = run([a.mom, "bench", "decode", "--config", os.path.join(REPO, cfg), "--set", f"train.threads={a.threads}",
                    "--prompt", str(a.prompt), "--tokens", str(a.tokens), "--streams", str(a.streams)], env)
        theirs = run([sys.executable, os.path.abspath(__file__), f"--torch-worker={name}", f"--threads={a.threads}",
                      f"--prompt={a.prompt}", f"--tokens={a.tokens}"], env)
        results[name] = {"mom": ours, "torch": theirs}
    print(f"\n{'model':7}{'mom 1 stream':>14}{'torch 1 stream':>16}{'mom/torch':>11}  {'target':12}"
          f"{'mom ' + str(a.streams) + ' streams':>15}{'vs 1 stream':>13}  target")
    for name, r in results.items():
        one, torch_one, agg = (r["mom"]["single_stream_tokens_per_s"], r["torch"]["single_stream_tokens_per_s"],
                               r["mom"]["aggregate_tokens_per_s"])
        r.update(single_vs_torch=one / torch_one, aggregate_vs_single=agg / one)
        ok = lambda v, t: f">= {t:.0f} {'ok' if v >= t else 'MISSED'}"  # noqa: E731
        print(f"{name:7}{one:12.0f}/s{torch_one:14.0f}/s{one / torch_one:11.2f}  {ok(one / torch_one, 2):12}"
              f"{agg:13.0f}/s{agg / one:13.2f}  {ok(agg / one, 4)}")
    curve = results["mom"]["mom"]["ms_per_token_by_prefix"]
    print("\nMoM: one cached token (ms) by prefix length: " +
          ", ".join(f"{c['prefix']}: {c['ms_per_token']:.2f}" for c in curve) +
          f"  (last/first {curve[-1]['ms_per_token'] / curve[0]['ms_per_token']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results, "targets": TARGETS}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
