"""CPU training-step benchmark: our trainer (`mom bench train`) beside PyTorch on the same
GPT-2, same thread count, same batch.

Why this way: each side runs in its own subprocess, so each peak RSS (ru_maxrss) belongs to one
side alone and neither inherits the other's allocator state or thread pools; OMP_NUM_THREADS is
set for both so OpenBLAS/OpenMP and torch's intra-op pool get the same cores. The PyTorch model
is tests/ref/torch_gpt2.py, the same independent model the whole-model test checks our numbers
against, trained the plain PyTorch way (autograd, clip_grad_norm_, torch.optim.AdamW), so the
comparison is against what a PyTorch user would run. Our memory is also set against what the
step needs in principle (parameters, gradients and two AdamW moments, plus the activations saved
for backward), as `mom bench train` reports them.

Usage: /usr/bin/python3 jobs/bench/cpu_vs_torch.py [--threads 2] [--steps 5] [--warmup 2]
           [--layers 4 --width 256 --heads 4 --ctx 256 --batch 8 --vocab 50257] [--json out.json]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP_RATIO_TARGET = 0.8  # our step time / torch's
RSS_RATIO_TARGET = 1.2   # our peak RSS / needed (state + activations)
MIB = 1024.0 * 1024.0


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256, help="context length; also the sequence length")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--mom", default=os.path.join(REPO, "build", "mom"), help="the mom binary")
    ap.add_argument("--json", help="also write the results here")
    # Internal: this script re-runs itself with this flag to time PyTorch in its own process.
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def torch_worker(a):
    """Times full PyTorch training steps; prints one JSON line."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests", "ref"))
    from torch_gpt2 import Gpt2

    torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    model = Gpt2(a.vocab, a.ctx, a.layers, a.heads, a.width)
    # Our defaults (io/config.h): lr 1e-3, betas (0.9, 0.95), eps 1e-8, decay 0.1, clip 1.0.
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    ms = []
    for s in range(a.warmup + a.steps):
        x = torch.randint(a.vocab, (a.batch, a.ctx))
        y = torch.randint(a.vocab, (a.batch, a.ctx))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = (time.perf_counter() - t0) * 1000.0
        if s >= a.warmup:
            ms.append(dt)
    print(json.dumps({
        "backend": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_ms_median": statistics.median(ms),
        "step_ms_min": min(ms),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0,  # KiB on Linux
    }))


def run_side(name, cmd, env):
    """Runs one side and returns its JSON line (the last line of stdout that parses)."""
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
    return "ok" if value <= target else "MISSED"


def main(argv):
    a = parse_args(argv)
    if a.torch_worker:
        torch_worker(a)
        return
    if not os.access(a.mom, os.X_OK):
        sys.exit(f"no mom binary at {a.mom} (build it, or pass --mom PATH)")

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    sets = {
        "train.threads": a.threads, "model.n_layer": a.layers, "model.n_embd": a.width, "model.n_head": a.heads,
        "model.n_ctx": a.ctx, "model.vocab_size": a.vocab, "train.batch_size": a.batch, "train.seq_len": a.ctx,
    }
    ours_cmd = [a.mom, "bench", "train", "--steps", str(a.steps), "--warmup", str(a.warmup)]
    for k, v in sets.items():
        ours_cmd += ["--set", f"{k}={v}"]
    torch_cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker"] + [
        f"--{k}={getattr(a, k)}" for k in ("threads", "steps", "warmup", "layers", "width", "heads", "ctx", "batch", "vocab")]

    print(f"GPT-2 L={a.layers} C={a.width} nh={a.heads} ctx={a.ctx} V={a.vocab}; batch {a.batch}x{a.ctx} tokens; "
          f"{a.threads} threads; median of {a.steps} steps after {a.warmup} warm-up", flush=True)
    ours = run_side("mom", ours_cmd, env)
    print(f"  mom:   {ours['step_ms_median']:.1f} ms/step", flush=True)
    theirs = run_side("torch", torch_cmd, env)
    print(f"  torch: {theirs['step_ms_median']:.1f} ms/step", flush=True)
    if ours["parameters"] != theirs["parameters"]:
        sys.exit(f"the two sides built different models: {ours['parameters']} vs {theirs['parameters']} parameters")

    tokens = a.batch * a.ctx
    step_ratio = ours["step_ms_median"] / theirs["step_ms_median"]
    needed = ours["needed_state_bytes"] + ours["needed_activation_bytes"]
    rss_ratio = ours["peak_rss_bytes"] / needed
    rows = [
        ("step ms (median)", f"{ours['step_ms_median']:.1f}", f"{theirs['step_ms_median']:.1f}",
         f"{step_ratio:.2f}", f"<= {STEP_RATIO_TARGET} {verdict(step_ratio, STEP_RATIO_TARGET)}"),
        ("step ms (min)", f"{ours['step_ms_min']:.1f}", f"{theirs['step_ms_min']:.1f}",
         f"{ours['step_ms_min'] / theirs['step_ms_min']:.2f}", ""),
        ("tokens/s", f"{tokens / ours['step_ms_median'] * 1000:.0f}", f"{tokens / theirs['step_ms_median'] * 1000:.0f}",
         f"{theirs['step_ms_median'] / ours['step_ms_median']:.2f}", ""),
        ("peak RSS MiB", f"{ours['peak_rss_bytes'] / MIB:.0f}", f"{theirs['peak_rss_bytes'] / MIB:.0f}",
         f"{ours['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}", ""),
    ]
    print(f"\n{'':18}{'mom':>12}{'torch':>12}{'mom/torch':>11}  target")
    for r in rows:
        print(f"{r[0]:18}{r[1]:>12}{r[2]:>12}{r[3]:>11}  {r[4]}")
    print(f"\nparameters {ours['parameters']:,}; mom peak RSS {ours['peak_rss_bytes'] / MIB:.0f} MiB vs needed "
          f"{needed / MIB:.0f} MiB (state {ours['needed_state_bytes'] / MIB:.0f} + activations "
          f"{ours['needed_activation_bytes'] / MIB:.0f}): ratio {rss_ratio:.2f}, target <= {RSS_RATIO_TARGET} "
          f"{verdict(rss_ratio, RSS_RATIO_TARGET)}")

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items() if k not in ("json", "torch_worker")},
                       "mom": ours, "torch": theirs, "step_ratio": step_ratio, "rss_over_needed": rss_ratio,
                       "targets": {"step_ratio": STEP_RATIO_TARGET, "rss_over_needed": RSS_RATIO_TARGET}}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
