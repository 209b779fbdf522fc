"""Training-step benchmark of the block kinds (MODELS.md §4-5): SAS, SAS-P and AltUp models
against the Pre-LN GPT-2 of the same width and depth, on our backend (`mom bench train`) and in
PyTorch (same thread count, same batch), side by side in one run.

Why this way: each (kind, side) runs in its own subprocess with OMP_NUM_THREADS set, so OpenBLAS,
OpenMP and torch's intra-op pool get the same cores and nothing is inherited between runs. The
PyTorch models are tests/ref/torch_simplified.py's, the independent reference the whole-model
test checks our numbers against (written from the equations the plain PyTorch way: autograd,
clip_grad_norm_, torch.optim.AdamW), so the comparison is against what a PyTorch user would
write. Targets (docs/benchmarks.md): SAS-P step time <= 0.90x Pre-LN's on our backend;
Recycled-AltUp K=2 <= 1.05x dense; ours <= 0.8x PyTorch's for every kind. The default shape is
the SAS paper's CodeParrot model (18 blocks, width 768, context 128) at a CPU-sized batch.

Usage: /usr/bin/python3 jobs/bench/blocks_vs_torch.py [--threads 2] [--steps 3] [--warmup 1]
           [--layers 18 --width 768 --heads 12 --ctx 128 --batch 4 --vocab 50257]
           [--kinds pre_ln,sas,sas_p,...] [--rounds 2] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGETS = {"sas_p_vs_pre_ln": 0.90, "altup_recycled_vs_pre_ln": 1.05, "mom_vs_torch": 0.8}


def kinds(layers):
    """name -> (model.stack, model.altup) of each compared model."""
    return {
        "pre_ln": ([{"type": "dense", "count": layers}], None),
        "sas": ([{"type": "sas", "count": layers}], None),
        "sas_p": ([{"type": "sas_p", "count": layers}], None),
        "sas_p_no_norm": ([{"type": "sas_p", "count": layers, "norm": "none"}], None),
        "altup_recycled": ([{"type": "dense", "count": layers}], {"k": 2}),
        "altup_wide": ([{"type": "dense", "count": layers}], {"k": 2, "mode": "wide"}),
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=2,
                    help="every (model, side) runs this many times, interleaved; the fastest median counts (a "
                         "shared machine's noise only ever slows a run down)")
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ctx", type=int, default=128, help="context length; also the sequence length")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--kinds", default=",".join(kinds(1)), help="comma-separated subset of: " + ", ".join(kinds(1)))
    ap.add_argument("--mom", default=os.path.join(REPO, "build", "mom"), help="the mom binary")
    ap.add_argument("--json", help="also write the results here")
    # Internal: the script re-runs itself with this flag to time one PyTorch model in its own process.
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def model_config(a, kind):
    stack, altup = kinds(a.layers)[kind]
    return {"vocab_size": a.vocab, "n_ctx": a.ctx, "n_layer": a.layers, "n_head": a.heads, "n_embd": a.width,
            "stack": stack, "altup": altup}


def torch_worker(a):
    """Times full PyTorch training steps of one kind; prints one JSON line."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
    from torch_simplified import SimplifiedGpt2

    torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    model = SimplifiedGpt2(model_config(a, a.torch_worker), torch.float32)
    with torch.no_grad():  # realistic values: matrices N(0, 0.02), vectors and scalars 1
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() >= 2 else p.fill_(1.0)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    ms = []
    for s in range(a.warmup + a.steps):
        x = torch.randint(a.vocab, (a.batch, a.ctx))
        y = torch.randint(a.vocab, (a.batch, a.ctx))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _, _ = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= a.warmup:
            ms.append((time.perf_counter() - t0) * 1000.0)
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "step_ms_median": statistics.median(ms),
                      "threads": torch.get_num_threads(), "backend": f"torch {torch.__version__}"}))


def run_side(name, cmd, env):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"{name} failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    for line in reversed(r.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    sys.exit(f"{name} printed no JSON: {' '.join(cmd)}\n{r.stdout}{r.stderr}")


def verdict(value, target):
    return f"<= {target:.2f} {'ok' if value <= target else 'MISSED'}"


def main(argv):
    a = parse_args(argv)
    if a.torch_worker:
        torch_worker(a)
        return
    if not os.access(a.mom, os.X_OK):
        sys.exit(f"no mom binary at {a.mom} (build it, or pass --mom PATH)")
    chosen = a.kinds.split(",")
    unknown = [k for k in chosen if k not in kinds(1)]
    if unknown:
        sys.exit(f"unknown --kinds {unknown}; choose from {', '.join(kinds(1))}")
    if "pre_ln" not in chosen:
        chosen.insert(0, "pre_ln")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(f"L={a.layers} C={a.width} nh={a.heads} ctx={a.ctx} V={a.vocab}; batch {a.batch}x{a.ctx} tokens; "
          f"{a.threads} threads; median of {a.steps} steps after {a.warmup} warm-up, best of {a.rounds} rounds",
          flush=True)
    results = {}
    for kind in chosen * a.rounds:
        m = model_config(a, kind)
        sets = {"train.threads": a.threads, "model.n_embd": a.width, "model.n_head": a.heads, "model.n_ctx": a.ctx,
                "model.vocab_size": a.vocab, "train.batch_size": a.batch, "train.seq_len": a.ctx,
                "model.stack": json.dumps(m["stack"])}
        if m["altup"]:
            sets["model.altup"] = json.dumps(m["altup"])
        ours_cmd = [a.mom, "bench", "train", "--steps", str(a.steps), "--warmup", str(a.warmup)]
        for k, v in sets.items():
            ours_cmd += ["--set", f"{k}={v}"]
        torch_cmd = [sys.executable, os.path.abspath(__file__), f"--torch-worker={kind}"] + [
            f"--{k}={getattr(a, k)}" for k in ("threads", "steps", "warmup", "layers", "width", "heads", "ctx", "batch",
                                               "vocab")]
        ours = run_side(f"mom {kind}", ours_cmd, env)
        theirs = run_side(f"torch {kind}", torch_cmd, env)
        if ours["parameters"] != theirs["parameters"]:
            sys.exit(f"{kind}: the two sides built different models: {ours['parameters']} vs {theirs['parameters']}")
        print(f"  {kind:15} mom {ours['step_ms_median']:8.0f} ms   torch {theirs['step_ms_median']:8.0f} ms", flush=True)
        best = results.setdefault(kind, {"mom": ours, "torch": theirs, "rounds": []})
        best["rounds"].append({"mom_ms": ours["step_ms_median"], "torch_ms": theirs["step_ms_median"]})
        for side, r in (("mom", ours), ("torch", theirs)):
            if r["step_ms_median"] < best[side]["step_ms_median"]:
                best[side] = r

    base_ours = results["pre_ln"]["mom"]["step_ms_median"]
    base_torch = results["pre_ln"]["torch"]["step_ms_median"]
    print(f"\n{'model':16}{'params':>9}{'mom ms':>9}{'torch ms':>10}{'mom/torch':>10}  {'target':14}"
          f"{'mom vs Pre-LN':>14}  {'target':14}{'torch vs Pre-LN':>16}")
    for kind, r in results.items():
        ours, theirs = r["mom"]["step_ms_median"], r["torch"]["step_ms_median"]
        vs_torch, vs_base = ours / theirs, ours / base_ours
        target = {"sas_p": TARGETS["sas_p_vs_pre_ln"], "altup_recycled": TARGETS["altup_recycled_vs_pre_ln"]}.get(kind)
        r.update(mom_vs_torch=vs_torch, mom_vs_pre_ln=vs_base, torch_vs_pre_ln=theirs / base_torch)
        print(f"{kind:16}{r['mom']['parameters'] / 1e6:8.1f}M{ours:9.0f}{theirs:10.0f}{vs_torch:10.2f}  "
              f"{verdict(vs_torch, TARGETS['mom_vs_torch']):14}{vs_base:14.2f}  "
              f"{verdict(vs_base, target) if target else '':14}{theirs / base_torch:16.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items() if k not in ("json", "torch_worker")},
                       "results": results, "targets": TARGETS}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
