"""Plots one training run from its RUN_DIR/metrics.jsonl: training and validation loss, learning
rate, gradient norm and tokens/s over steps, and for routed models the load per module and the
SKIP rate per stage and router, and the token exchange's share of the step across ranks.

Why a script: people would rather look than read JSON lines. A run that was resumed appends to
the same file and may repeat steps (a checkpoint older than the last logged step): each step
is taken once, the newest record winning, so the curves show what the finished run did.

Usage: /usr/bin/python3 jobs/analysis/plot_run.py RUN_DIR [--out FILE.png]
       (default FILE: RUN_DIR/run.png; needs Debian's python3-matplotlib)
Exit status 2 with a message naming the file when the metrics are missing, empty or unreadable.
"""
import argparse
import json
import os
import sys


def fail(message):
    print(f"plot_run: {message}", file=sys.stderr)
    sys.exit(2)


def read(run_dir):
    """(steps by step, evaluations by step, the number of start records); newest wins."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        fail(f"no metrics file {path}: is {run_dir} a run folder (its run_dir), and has training started?")
    steps, evals, starts = {}, {}, 0
    with open(path) as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            # A run killed mid-write can leave a partial last line; anything else is damage.
            if n == len(lines):
                continue
            fail(f"{path} line {n} is not JSON ({e}); the file is damaged")
        if r.get("event") == "start":
            starts += 1
        elif "val_loss" in r:
            evals[r["step"]] = r
        elif "loss" in r and "step" in r:
            steps[r["step"]] = r
    if not steps:
        fail(f"{path} holds no training steps yet")
    return [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)], starts


def routing_series(steps):
    """{(stage, router): {"skip": [(step, rate)], "load": [(step, [share per class])]}} over the
    steps of routed models, each router's step-averaged shares."""
    out = {}
    for s in steps:
        for stage in s.get("routing") or []:
            for h, step in enumerate(stage["steps"]):
                for router, st in step.items():
                    key = (stage["stage"].rstrip("/"), router)
                    d = out.setdefault(key, {"skip": {}, "load": {}})
                    load = st["load"]
                    total = sum(load) or 1
                    d["skip"].setdefault(s["step"], []).append(st["skip_rate"])
                    d["load"].setdefault(s["step"], []).append([v / total for v in load])
    for d in out.values():
        d["skip"] = sorted((k, sum(v) / len(v)) for k, v in d["skip"].items())
        d["load"] = sorted((k, [sum(c) / len(c) for c in zip(*v)]) for k, v in d["load"].items())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="PNG to write (default RUN_DIR/run.png)")
    a = ap.parse_args()
    steps, evals, starts = read(a.run_dir)
    try:
        import matplotlib
    except ImportError:
        fail("matplotlib is missing: apt-get install python3-matplotlib (jobs/setup.sh installs it)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routing = routing_series(steps)
    exchange = [(s["step"], s["exchange_share"]) for s in steps if "exchange_share" in s and s.get("ranks", 1) > 1]
    panels = 4 + (2 if routing else 0) + (1 if exchange else 0)
    cols = 2
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    x = [s["step"] for s in steps]

    ax = axes[0]
    ax.plot(x, [s["loss"] for s in steps], lw=1, label="train")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", ms=3, label="validation")
    ax.set_title("loss")
    ax.legend()
    for ax, key, title in ((axes[1], "lr", "learning rate"), (axes[2], "grad_norm", "gradient norm (before clip)"),
                           (axes[3], "tokens_per_s", "tokens/s")):
        ax.plot(x, [s[key] for s in steps], lw=1)
        ax.set_title(title)
    used = 4
    if routing:
        ax = axes[used]
        for (stage, router), d in routing.items():
            ax.plot([k for k, _ in d["skip"]], [v for _, v in d["skip"]], lw=1, label=f"{stage} {router}")
        ax.set_title("SKIP rate per stage and router (mean over assembly steps)")
        ax.legend(fontsize=7)
        ax = axes[used + 1]
        labels, shares = [], []
        for (stage, router), d in routing.items():
            last = d["load"][-1][1]
            labels.append(f"{stage} {router}")
            shares.append(last)
        width = 0.8 / max(len(shares), 1)
        for i, (label, share) in enumerate(zip(labels, shares)):
            ax.bar([j + i * width for j in range(len(share))], share, width=width, label=label)
        ax.set_title(f"load per module at step {steps[-1]['step']} (share of assignments; SKIP last)")
        ax.set_xlabel("module")
        ax.set_xticks(range(max(len(sh) for sh in shares)))
        ax.legend(fontsize=7)
        used += 2
    if exchange:
        ax = axes[used]
        ax.plot([k for k, _ in exchange], [100 * v for _, v in exchange], lw=1)
        ax.set_title(f"token exchange, % of the step ({steps[-1].get('ranks')} ranks)")
        used += 1
    for ax in axes[:used]:
        ax.set_xlabel(ax.get_xlabel() or "step")
        ax.grid(alpha=0.3)
    for ax in axes[used:]:
        ax.axis("off")
    resumed = f", resumed {starts - 1}x" if starts > 1 else ""
    fig.suptitle(f"{os.path.abspath(a.run_dir)} ({len(steps)} steps{resumed})")
    fig.tight_layout()
    out = a.out or os.path.join(a.run_dir, "run.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out} ({len(steps)} steps{resumed})")


if __name__ == "__main__":
    main()
