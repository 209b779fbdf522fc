"""Expert parallelism on 2 ranks: the tiny MoM and MoE configs trained with ep_size 1 (two
data-parallel replicas, no token exchange) and ep_size 2 (pools sharded over both ranks, tokens
exchanged), side by side in one run; exchange bytes measured against the cost model.

Each run is `mpirun --allow-run-as-root --oversubscribe -np 2 BINARY train --config X --set
train.ep_size=E ...` in a fresh run folder under /tmp, with fewer steps, no evaluation and no
periodic checkpoints (the trainer still writes one at the last step, after the timed steps). Each
rank trains its own batch of B x T tokens (weak scaling), so the two settings do the same
arithmetic per rank and differ by the exchange and by which gradients are reduced where. The
first --warmup steps of each run are left out; medians over the rest (and over --rounds, the
median of round medians; runs are interleaved).

Read from each step's record in RUN/metrics.jsonl: ms_per_step, ranks, ep_size, exchange_bytes
(sent between ranks in the step, summed over ranks), exchange_trips, exchange_s (mean over ranks
of the seconds inside the exchange) and exchange_share (exchange_s / step seconds). Predicted
bytes come from jobs/bench/exchange_cost_model.py three ways: from the loads the run's routers
actually produced (the record's "routing"), under uniform routing (a SKIP class as likely as a
module), and the upper bound (all K choices are modules).

Usage: /usr/bin/python3 jobs/bench/expert_parallel.py [--binary build/mom] [--steps 12] [--warmup 2]
           [--threads 1] [--rounds 1] [--reuse DIR] [--json out.json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import exchange_cost_model as cm  # noqa: E402

RANKS = 2
EP_SIZES = (1, 2)
SHARE_TARGET = 0.15  # exchange share of the step at ep_size 2
CONFIGS = {"MoM tiny": "jobs/configs/mom_tiny_cpu.json", "MoE tiny": "jobs/configs/moe_tiny_cpu.json"}
ELEMENT_BYTES = 4    # the CPU trainer exchanges fp32 rows


def run_name(label, ep):
    return f"{label.split()[0].lower()}_ep{ep}"


def overrides(a, ep, run_dir):
    return [f"train.ep_size={ep}", f"train.steps={a.steps}", "train.warmup_steps=1", "train.eval_every=0",
            "train.save_every=0", "train.grad_accum=1", f"train.threads={a.threads}", f"run_dir={run_dir}"]


def check_shardable(cfg, label):
    for s in cm.routed_stages(cfg):
        pools = [s["ffn_modules"]] + ([s["attn_modules"]] if s["kind"] == "mom" else [])
        for m in pools:
            if m % RANKS:
                raise SystemExit(f"{label}: a pool of {m} modules cannot be split evenly over {RANKS} ranks; "
                                 f"add --set overrides that make every pool a multiple of {RANKS}")


def train(a, path, ep, run_dir):
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(RANKS)]
    if a.threads > 1:
        cmd += ["--bind-to", "none"]
    cmd += ["-x", f"OMP_NUM_THREADS={a.threads}", a.binary, "train", "--config", path]
    for o in overrides(a, ep, run_dir):
        cmd += ["--set", o]
    print("  " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"the run failed (exit {r.returncode}): {' '.join(cmd)}")


def read_steps(run_dir):
    """The per-step records of RUN/metrics.jsonl (those with ms_per_step)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [r for r in recs if "ms_per_step" in r]


def load_scale(cfg, rec, tokens):
    """1 when the record's routing loads are one rank's, the rank count when summed over ranks:
    every side assigns tokens x K (SKIP and drops included) per rank."""
    s, side = cm.routed_stages(cfg)[0], rec["routing"][0]["steps"][0]
    name = "attn" if "attn" in side else "ffn"
    assigned = sum(side[name]["load"]) + side[name]["dropped"]
    return max(1, round(assigned / (tokens * s["top_k"])))


def summarize(cfg, steps, warmup):
    """Medians over the steps after warmup, and the predictions for the same steps."""
    steps = steps[warmup:]
    if not steps:
        raise SystemExit("no steps left after --warmup; raise --steps")
    ranks, ep = steps[0].get("ranks", RANKS), steps[0].get("ep_size", 1)
    tokens = cfg["train"]["batch_size"] * cfg["train"]["seq_len"]
    med = lambda key: statistics.median(r.get(key, 0.0) for r in steps)
    out = {"ranks": ranks, "ep_size": ep, "steps": len(steps), "ms_per_step": med("ms_per_step"),
           "exchange_bytes": med("exchange_bytes"), "exchange_trips": med("exchange_trips"),
           "exchange_ms": 1e3 * med("exchange_s"), "exchange_share": med("exchange_share")}
    routed = []
    for r in steps:
        if "routing" in r:
            t = cm.exchange_from_routing(cfg, r["routing"], ep, ELEMENT_BYTES, scale=load_scale(cfg, r, tokens))
            routed.append(ranks * t.bytes_sent)
    out["predicted_routed_bytes"] = statistics.median(routed) if routed else None
    out["measured_over_routed"] = (statistics.median(r["exchange_bytes"] / p for r, p in zip(steps, routed) if p)
                                   if routed and ep > 1 else None)
    uniform = cm.exchange_per_rank(cfg, tokens, ep, ELEMENT_BYTES, skip_share=None)
    out["predicted_uniform_bytes"] = ranks * uniform.bytes_sent
    out["predicted_upper_bytes"] = ranks * cm.exchange_per_rank(cfg, tokens, ep, ELEMENT_BYTES, 0.0).bytes_sent
    out["predicted_trips_per_rank"] = uniform.trips
    return out


def fmt_mb(x):
    return "-" if x is None else f"{x / 1e6:.2f}"


def report(results, a):
    labels = list(results)
    w = 18
    print()
    print(f"{RANKS} ranks, {a.threads} thread(s) each, {a.steps} steps a run, first {a.warmup} left out, "
          f"{a.rounds} round(s): medians")
    print(f"{'':44s}" + "".join(f"{l:>{w}s}" for l in labels))

    def row(name, fn):
        print(f"{name:44s}" + "".join(f"{fn(results[l]):>{w}s}" for l in labels))

    row("ms/step, ep_size 1", lambda r: f"{r[1]['ms_per_step']:.0f}")
    row("ms/step, ep_size 2", lambda r: f"{r[2]['ms_per_step']:.0f}")
    row("ratio ep 2 / ep 1", lambda r: f"{r[2]['ms_per_step'] / r[1]['ms_per_step']:.3f}")
    row("exchange ms/step, ep 2 (mean over ranks)", lambda r: f"{r[2]['exchange_ms']:.0f}")
    row(f"exchange share of step, ep 2 (<= {SHARE_TARGET:.0%})",
        lambda r: f"{r[2]['exchange_share']:.1%} " + ("met" if r[2]["exchange_share"] <= SHARE_TARGET else "MISSED"))
    row("exchange MB/step, ep 1 (expected 0)", lambda r: fmt_mb(r[1]["exchange_bytes"]))
    row("exchange MB/step, ep 2, measured (all ranks)", lambda r: fmt_mb(r[2]["exchange_bytes"]))
    row("  predicted from the routed loads", lambda r: fmt_mb(r[2]["predicted_routed_bytes"]))
    row("  measured / predicted (median of steps)",
        lambda r: "-" if r[2]["measured_over_routed"] is None else f"{r[2]['measured_over_routed']:.3f}")
    row("  predicted, uniform routing", lambda r: fmt_mb(r[2]["predicted_uniform_bytes"]))
    row("  predicted, upper bound (no SKIP)", lambda r: fmt_mb(r[2]["predicted_upper_bytes"]))
    row("exchange trips/step, ep 2, measured", lambda r: f"{r[2]['exchange_trips']:.0f}")
    row("  predicted per rank", lambda r: f"{r[2]['predicted_trips_per_rank']}")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "build", "mom"))
    ap.add_argument("--steps", type=int, default=12, help="training steps a run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of a run left out of the medians")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (train.threads, OMP_NUM_THREADS)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repeats of the four runs")
    ap.add_argument("--reuse", help="read DIR/{mom,moe}_ep{1,2}[_rN]/metrics.jsonl instead of training")
    ap.add_argument("--keep", action="store_true", help="keep the run folders under /tmp")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    cfgs = {label: cm.load_config(path) for label, path in CONFIGS.items()}
    for label, cfg in cfgs.items():
        check_shardable(cfg, label)
    root = a.reuse or tempfile.mkdtemp(prefix="mom_ep_bench_", dir="/tmp")
    per_round = {label: {ep: [] for ep in EP_SIZES} for label in CONFIGS}
    for rnd in range(a.rounds):
        for label, path in CONFIGS.items():
            for ep in EP_SIZES:
                run_dir = os.path.join(root, run_name(label, ep) + (f"_r{rnd}" if a.rounds > 1 else ""))
                if not a.reuse:
                    train(a, path, ep, run_dir)
                per_round[label][ep].append(summarize(cfgs[label], read_steps(run_dir), a.warmup))
    results = {}
    for label in CONFIGS:
        results[label] = {}
        for ep in EP_SIZES:
            rs = per_round[label][ep]
            merged = dict(rs[0])
            for key in ("ms_per_step", "exchange_bytes", "exchange_trips", "exchange_ms", "exchange_share"):
                merged[key] = statistics.median(r[key] for r in rs)
            merged["rounds_ms_per_step"] = [r["ms_per_step"] for r in rs]
            results[label][ep] = merged
    report(results, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({label: {str(ep): r for ep, r in v.items()} for label, v in results.items()}, f, indent=2)
    if not a.reuse and not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    elif not a.reuse:
        print(f"run folders: {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
