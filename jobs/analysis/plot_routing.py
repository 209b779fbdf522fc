"""Plots a routing trace written by `mom route` (layout: docs/routing.md) as three PNGs:

  PREFIX_load.png           load per module and assembly step, one heatmap per stage and router
                            (share of the step's choices; SKIP is its own column)
  PREFIX_skip_position.png  SKIP rate by position in the window, per stage and router
                            (one line per assembly step and their mean)
  PREFIX_coselect.png       for every MoM chunk, how often attention module i and FFN module j are
                            chosen by the same token at the same step (share of all such pairs;
                            the small number is the lift: observed / expected if independent)

Why a script: the trace is millions of numbers; these three views answer the questions people
ask of a modular model first: are the modules used evenly, where does SKIP fire, and do
attention and FFN modules pair up into "circuits".

Usage: /usr/bin/python3 jobs/analysis/plot_routing.py TRACE.h5 [--out PREFIX]
       (default PREFIX: TRACE without .h5; needs Debian's python3-h5py, -numpy, -matplotlib)
Exit status 2 with a message naming the file when it is missing, not a trace, or holds no
routed stages (a dense model's trace).
"""
import argparse
import json
import os
import sys


def fail(message):
    print(f"plot_routing: {message}", file=sys.stderr)
    sys.exit(2)


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read(path):
    """(root attributes, {router: (modules [N,S,K], classes, modules in the pool)}), routers in order."""
    if not os.path.isfile(path):
        fail(f"no trace file {path}: write one with `mom route CKPT --data FILES --out {path}`")
    try:
        import h5py
        import numpy as np  # noqa: F401  (h5py needs it; fail clearly here)
    except ImportError as e:
        fail(f"{e.name} is missing: apt-get install python3-h5py python3-numpy (jobs/setup.sh installs them)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail(f"{path} is not an HDF5 file ({e}); pass a trace written by `mom route`")
    a = f.attrs
    if text(a.get("kind", b"")) != "mom-routing-trace":
        fail(f"{path} is not a routing trace (no kind = mom-routing-trace on /); write one with `mom route`")
    routers = json.loads(text(a["routers"]))
    if not routers:
        fail(f"{path} holds no routed stages (the model has no MoM chunk or MoE layer): nothing to plot")
    out = {}
    for r in routers:
        g = f["trace/" + r]
        out[r] = (g["modules"][:], int(g.attrs["classes"]), int(g.attrs["modules"]))
    attrs = {k: (text(v) if isinstance(v, (bytes, str)) else v) for k, v in a.items()}
    return attrs, out


def class_of(modules, classes):
    """Module ids to class ids: SKIP (-1) is the last class."""
    import numpy as np
    return np.where(modules < 0, classes - 1, modules)


def labels(classes, pool):
    return [str(c) for c in range(pool)] + (["SKIP"] if classes > pool else [])


def annotate(ax, m, fmt, extra=None):
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            s = format(m[i, j], fmt) + ("" if extra is None else "\n" + extra[i][j])
            ax.text(j, i, s, ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] < 0.6 * (m.max() or 1) else "black")


def save(fig, title, path):
    """Titles, lays out, writes and closes one figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--out", help="prefix of the PNGs (default: TRACE without .h5)")
    a = ap.parse_args()
    attrs, routers = read(a.trace)
    try:
        import matplotlib
    except ImportError:
        fail("matplotlib is missing: apt-get install python3-matplotlib (jobs/setup.sh installs it)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    prefix = a.out or (a.trace[:-3] if a.trace.endswith(".h5") else a.trace)
    T = int(attrs["seq_len"])
    disabled = json.loads(attrs.get("disabled_modules", "[]"))
    title = f"{os.path.basename(attrs['checkpoint'])}, {int(attrs['tokens'])} tokens, T={T}, " \
            f"loss {float(attrs['mean_loss']):.4f}" + (f", without {', '.join(disabled)}" if disabled else "")
    written = []

    # (a) load per module and step.
    n = len(routers)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 1.0 + 0.9 * max(c for _, c, _ in routers.values())) * n, 3.6),
                             squeeze=False)
    for ax, (r, (mod, classes, pool)) in zip(axes[0], routers.items()):
        N, S, K = mod.shape
        cls = class_of(mod, classes)
        load = np.stack([np.bincount(cls[:, s, :].ravel(), minlength=classes) / (N * K) for s in range(S)])
        ax.imshow(load, cmap="viridis", vmin=0, aspect="auto")
        annotate(ax, load, ".2f")
        ax.set_xticks(range(classes), labels(classes, pool))
        ax.set_yticks(range(S), [str(s) for s in range(S)])
        ax.set_xlabel("module")
        ax.set_ylabel("assembly step")
        ax.set_title(f"{r} (top-{K})", fontsize=9)
    written.append(save(fig, "load per module and step (share of choices)\n" + title, prefix + "_load.png"))

    # (b) SKIP rate by position in the window: the share of a position's choices that are SKIP.
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.4), squeeze=False)
    for ax, (r, (mod, classes, pool)) in zip(axes[0], routers.items()):
        N, S, K = mod.shape
        if classes == pool:
            ax.text(0.5, 0.5, "no SKIP class", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(r, fontsize=9)
            continue
        pos = np.arange(N) % T
        skip = (mod < 0).mean(axis=2)  # [N, S]: share of the K choices
        count = np.bincount(pos, minlength=T)
        for s in range(S):
            ax.plot(np.bincount(pos, weights=skip[:, s], minlength=T) / count, lw=0.8, label=f"step {s}")
        ax.plot(np.bincount(pos, weights=skip.mean(axis=1), minlength=T) / count, "k", lw=1.5, label="mean")
        ax.set_ylim(0, 1)
        ax.set_xlabel("position in the window")
        ax.set_ylabel("SKIP share of choices")
        ax.set_title(r, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    written.append(save(fig, "SKIP rate by position\n" + title, prefix + "_skip_position.png"))

    # (c) co-selection of attention and FFN modules within MoM chunks.
    chunks = [r[:-len("/attn")] for r in routers if r.endswith("/attn") and r[:-len("/attn")] + "/ffn" in routers]
    fig, axes = plt.subplots(1, max(len(chunks), 1), figsize=(5.0 * max(len(chunks), 1), 4.2), squeeze=False)
    if not chunks:
        axes[0][0].text(0.5, 0.5, "no MoM chunk (an MoE layer has one dense attention module)", ha="center",
                        va="center", transform=axes[0][0].transAxes, fontsize=8)
        axes[0][0].axis("off")
    for ax, c in zip(axes[0], chunks):
        ma, ca, pa = routers[c + "/attn"]
        mf, cf, pf = routers[c + "/ffn"]
        a_cls, f_cls = class_of(ma, ca), class_of(mf, cf)
        joint = np.zeros((ca, cf))
        K1, K2 = a_cls.shape[2], f_cls.shape[2]
        for i in range(K1):
            for j in range(K2):
                np.add.at(joint, (a_cls[:, :, i].ravel(), f_cls[:, :, j].ravel()), 1)
        joint /= joint.sum()
        expected = np.outer(joint.sum(axis=1), joint.sum(axis=0))
        lift = [[f"x{joint[i, j] / expected[i, j]:.2f}" if expected[i, j] > 0 else "" for j in range(cf)]
                for i in range(ca)]
        ax.imshow(joint, cmap="magma", vmin=0)
        annotate(ax, joint, ".3f", lift)
        ax.set_xticks(range(cf), labels(cf, pf))
        ax.set_yticks(range(ca), labels(ca, pa))
        ax.set_xlabel("FFN module")
        ax.set_ylabel("attention module")
        ax.set_title(f"{c}: same token, same step", fontsize=9)
    title = "co-selection of attention and FFN modules (share of pairs; xlift)\n" + title
    written.append(save(fig, title, prefix + "_coselect.png"))

    for w in written:
        print(f"wrote {w}")


if __name__ == "__main__":
    main()
