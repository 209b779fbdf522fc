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
Through the server too: `mom serve` on a checkpoint of the same model (random weights, made by
one training step on a small corpus of this machine's Python sources), streamed completions
over loopback HTTP with Python's http.client, one stream alone and 8 at once; decode rate
counted from each stream's first token event, as the engine figures are.
Targets (docs/benchmarks.md): our single stream >= 2x PyTorch's; our 8-stream aggregate >= 4x
our single stream; the cached MoM token's cost flat in the prefix length (the curve is printed).
The VM this runs on is noisy, so every measurement is repeated (--repeats, interleaved) and
the medians are reported.

Usage: /usr/bin/python3 jobs/bench/decode_vs_torch.py [--threads 2] [--prompt 16] [--tokens 64]
           [--streams 8] [--repeats 5] [--json out.json]
"""
import argparse
import http.client
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


def make_checkpoint(a, name, cfg, work):
    """A checkpoint of `cfg`'s model after one training step (its weights are as good as random)."""
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "meta.json")):
        src = os.path.join(work, "src")
        shutil.copytree("/usr/lib/python3.11/json", os.path.join(src, "json"))
        subprocess.run([a.mom, "data", "prepare", "--input", src, "--out", data], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = os.path.join(work, name)
    subprocess.run([a.mom, "train", "--config", os.path.join(REPO, cfg), "--until-step", "1",
                    "--set", f"data.train={data}/train_*.bin", "--set", f"data.val={data}/val_*.bin",
                    "--set", "train.eval_every=0", "--set", "train.save_every=1", "--set", "train.batch_size=1",
                    "--set", f"run_dir={run_dir}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(run_dir, "ckpt_00000001.h5")


class Server:
    """`mom serve CKPT --port 0`, stopped with SIGTERM."""

    def __init__(self, a, ckpt, env):
        self.p = subprocess.Popen([a.mom, "serve", ckpt, "--port", "0", "--threads", str(a.threads),
                                   "--max-sequences", str(a.streams)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.port = None
        for line in self.p.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if "mom serve: ready" in line:
                break
        if not self.port:
            sys.exit("mom serve did not start")

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=60)


def stream_times(port, a, seed, out):
    """Streams one completion; appends the arrival time of each token event to `out`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"prompt": [(seed * 7919 + i * 104729) % 50000 for i in range(a.prompt)], "max_tokens": a.tokens,
            "temperature": 0.8, "top_k": 40, "seed": seed, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    for line in res:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        c = json.loads(line[6:])["choices"][0]
        if c["finish_reason"] is None or c["text"]:  # not the finish-only event
            out.append(time.perf_counter())
    conn.close()


def server_rate(port, a, streams):
    """Tokens/s of `streams` concurrent streams, counted once every stream has its first token."""
    times = [[] for _ in range(streams)]
    threads = [threading.Thread(target=stream_times, args=(port, a, i, times[i])) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = max(t[0] for t in times)
    end = max(t[-1] for t in times)
    counted = sum(1 for ts in times for x in ts if x > start)
    return counted / (end - start)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mom", default=os.path.join(REPO, "build", "mom"))
    ap.add_argument("--json")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(f"KV-cached decoding, {a.threads} threads, prompt {a.prompt}, {a.tokens} tokens per stream, "
          f"sampling (temperature 0.8, top-k 40), medians of {a.repeats} interleaved runs", flush=True)
    work = tempfile.mkdtemp(prefix="mom-decode-bench-")
    results = {}
    try:
        for name, cfg in CONFIGS.items():
            server = Server(a, make_checkpoint(a, name, cfg, work), env)
            runs = {"engine_one": [], "engine_many": [], "torch_one": [], "server_one": [], "server_many": []}
            curve = None
            try:
                for _ in range(a.repeats):
                    ours = run([a.mom, "bench", "decode", "--config", os.path.join(REPO, cfg), "--set",
                                f"train.threads={a.threads}", "--prompt", str(a.prompt), "--tokens", str(a.tokens),
                                "--streams", str(a.streams)], env)
                    theirs = run([sys.executable, os.path.abspath(__file__), f"--torch-worker={name}",
                                  f"--threads={a.threads}", f"--prompt={a.prompt}", f"--tokens={a.tokens}"], env)
                    runs["engine_one"].append(ours["single_stream_tokens_per_s"])
                    runs["engine_many"].append(ours["aggregate_tokens_per_s"])
                    runs["torch_one"].append(theirs["single_stream_tokens_per_s"])
                    runs["server_one"].append(server_rate(server.port, a, 1))
                    runs["server_many"].append(server_rate(server.port, a, a.streams))
                    curve = curve or ours["ms_per_token_by_prefix"]
            finally:
                server.stop()
            med = {k: statistics.median(v) for k, v in runs.items()}
            results[name] = {"runs": runs, "median": med, "ms_per_token_by_prefix": curve}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ok = lambda v, t: f">= {t:.0f} {'ok' if v >= t else 'MISSED'}"  # noqa: E731
    S = a.streams
    print(f"\n{'':18}{'mom 1 stream':>13}{'torch 1 stream':>16}{'mom/torch':>11}  {'target':11}"
          f"{'mom ' + str(S) + ' streams':>15}{'vs 1 stream':>13}  target")
    for name, r in results.items():
        m = r["median"]
        for where, one, many in (("engine", m["engine_one"], m["engine_many"]),
                                 ("server (HTTP)", m["server_one"], m["server_many"])):
            ratio = one / m["torch_one"]
            r[where.split()[0]] = {"single_vs_torch": ratio, "aggregate_vs_single": many / one}
            print(f"{name + ', ' + where:18}{one:11.0f}/s{m['torch_one']:14.0f}/s{ratio:11.2f}  {ok(ratio, 2):11}"
                  f"{many:13.0f}/s{many / one:13.2f}  {ok(many / one, 4)}")
    curve = results["mom"]["ms_per_token_by_prefix"]
    print("\nMoM: one cached token (ms) by prefix length: " +
          ", ".join(f"{c['prefix']}: {c['ms_per_token']:.2f}" for c in curve) +
          f"  (last/first {curve[-1]['ms_per_token'] / curve[0]['ms_per_token']:.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results, "targets": TARGETS}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
