"""Plots and tabulates a comparison of training runs from their metrics (jobs/study/*.sh).

Validation loss against training tokens, one curve per run; a run that continues from another
one's checkpoint is placed after the tokens it builds on (`@offset`). The table takes
parameters, active parameters and FLOPs per token from each run's first start record, the
median step time from its step records (a resumed run appends to the same file; repeated
steps count once, the newest winning), and sets step time and final validation loss against
the first run's.

Usage: /usr/bin/python3 jobs/study/plot_runs.py --title TITLE --png OUT.png --table OUT.md \
           LABEL=RUN_DIR[@OFFSET_TOKENS] ...
"""
import argparse
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run_dir):
    """The run's first start record, its step records and its evaluations, by step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise SystemExit(f"no metrics in {path}: did the run finish?")
    start, steps, evals = None, {}, {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "start":
                start = start or r
            elif "val_loss" in r:
                evals[r["step"]] = r
            elif "loss" in r:
                steps[r["step"]] = r
    if not steps or not evals:
        raise SystemExit(f"{path} has no steps or no evaluations")
    return start, [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--title", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR[@OFFSET_TOKENS]")
    a = ap.parse_args()
    plt.figure(figsize=(7.5, 4.6))
    rows = []
    for spec in a.runs:
        label, _, rest = spec.rpartition("=")  # labels may hold "=", paths do not
        run_dir, _, offset = rest.partition("@")
        offset = int(offset or 0)
        start, steps, evals = read(run_dir)
        per_step = steps[0]["tokens_seen"] // steps[0]["step"]
        x = [(offset + e["step"] * per_step) / 1e3 for e in evals]
        plt.plot(x, [e["val_loss"] for e in evals], "o-", ms=3, label=label)
        rows.append({"label": label, "parameters": start["parameters"], "active": start["active_parameters"],
                     "flops": start["flops_per_token"], "ms": statistics.median(s["ms_per_step"] for s in steps),
                     "val": evals[-1]["val_loss"], "tokens": offset + steps[-1]["tokens_seen"]})
    plt.xlabel("training tokens (thousands)")
    plt.ylabel("validation loss")
    plt.title(a.title)
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.png)), exist_ok=True)
    plt.savefig(a.png, dpi=110)
    base = rows[0]
    with open(a.table, "w") as f:
        f.write("| run | parameters | vs first | active / token | GFLOP / token | ms / step | vs first | "
                "final val loss | vs first | tokens |\n|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['label']} | {r['parameters'] / 1e6:.2f}M | {r['parameters'] / base['parameters'] - 1:+.1%} "
                    f"| {r['active'] / 1e6:.2f}M | {r['flops'] / 1e9:.3f} | {r['ms']:.0f} | {r['ms'] / base['ms']:.2f}x "
                    f"| {r['val']:.4f} | {r['val'] - base['val']:+.4f} | {r['tokens']:,} |\n")
    print(open(a.table).read())


if __name__ == "__main__":
    main()
