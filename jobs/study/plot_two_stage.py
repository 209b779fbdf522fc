"""Plots and tabulates the two-stage study (jobs/study/two_stage.sh) from the runs' metrics.

Validation loss against training tokens: the dense run (stage 1, then resumed) is one curve;
the two-stage MoM starts after the stage-1 tokens it builds on, so every curve is placed on
one token axis. The table takes parameters, active
parameters and FLOPs per token from each run's start record and the median step time from
its step records.

Usage: /usr/bin/python3 jobs/study/plot_two_stage.py RUNS_DIR S1_STEPS OUT_DIR
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run_dir):
    """The run's first start record, its step records and its evaluations (a resumed run
    appends to the same file)."""
    start, steps, evals = None, [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "start":
                start = start or r
            elif "val_loss" in r:
                evals.append(r)
            elif "loss" in r:
                steps.append(r)
    return start, steps, evals


def main(runs, s1, out):
    os.makedirs(out, exist_ok=True)
    _, dense_steps, _ = read(os.path.join(runs, "dense"))
    tokens_per_step = dense_steps[0]["tokens_seen"]
    offset = int(s1) * tokens_per_step
    runs_spec = [
        ("dense", "dense GPT-2 (stage 1, then continued)", 0, "tab:blue"),
        ("mom_two_stage", "MoM, two-stage (from stage 1)", offset, "tab:red"),
        ("mom_scratch", "MoM from scratch", 0, "tab:orange"),
    ]
    plt.figure(figsize=(7, 4.5))
    rows = []
    for name, label, off, color in runs_spec:
        start, steps, evals = read(os.path.join(runs, name))
        x = [(off + e["step"] * tokens_per_step) / 1e3 for e in evals]
        plt.plot(x, [e["val_loss"] for e in evals], "o-", label=label, color=color)
        rows.append((label, start["parameters"], start["active_parameters"], start["flops_per_token"],
                     statistics.median(s["ms_per_step"] for s in steps), evals[-1]["val_loss"],
                     (off + steps[-1]["step"] * tokens_per_step)))
    plt.axvline(offset / 1e3, color="k", lw=0.5, ls="--")
    plt.xlabel("training tokens (thousands)")
    plt.ylabel("validation loss")
    plt.title("Two-stage MoM vs from scratch vs dense (Python stdlib corpus)")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(os.path.join(out, "val_loss.png"), dpi=110)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("| run | parameters | active / token | GFLOP / token | ms / step | final val loss | tokens |\n")
        f.write("|---|---|---|---|---|---|---|\n")
        for label, p, ap, fl, ms, vl, tok in rows:
            f.write(f"| {label} | {p / 1e6:.2f}M | {ap / 1e6:.2f}M | {fl / 1e9:.3f} | {ms:.0f} | {vl:.4f} | {tok} |\n")
    print(open(os.path.join(out, "results.md")).read())


if __name__ == "__main__":
    main(*sys.argv[1:])
