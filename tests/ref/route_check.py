"""Independent check of a `mom route` trace file (docs/routing.md), with h5py and numpy only.

Usage: /usr/bin/python3 tests/ref/route_check.py TRACE.h5

Checks, from the file alone and the checkpoint config stored in it:
- tokens, targets, losses are [tokens] with tokens = batches * batch_size * seq_len, and the rows
  are the token stream in order (windows of T+1 at stride T tile it: targets[i] == tokens[i+1]);
- per router group trace/<stage>/<side>: modules, weights, dropped [tokens, steps, K] and probs
  [tokens, steps, classes]; module ids in [0, modules) or -1 (SKIP), -1 only with a SKIP class;
  the K choices are the K most probable enabled classes in descending order; the gate weights
  are those probabilities (renormalised over the K when the config says so), so they lie in
  [0, 1] and sum to at most 1 per token and step; dropped is 0/1 and only on real modules;
- the per-token losses are finite and positive and their mean is the root's mean_loss.
Prints one JSON object: mean_loss, the mean of losses, tokens, and per router the modules used,
the SKIP share and the load per class. Exit 1 with a message on the first failed check.
"""
import json
import sys

import h5py
import numpy as np


def fail(msg):
    print(f"route_check: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(ok, msg):
    if not ok:
        fail(msg)


def text(v):
    """A fixed-length string attribute (h5py gives bytes) as str."""
    return v.decode() if isinstance(v, bytes) else str(v)


def stage_configs(config):
    """{"chunks/0": stack item, "moe/0": ...} named as Gpt2 names routed stages."""
    out, chunks, moes = {}, 0, 0
    for item in config["model"].get("stack") or []:
        if item["type"] == "mom":
            out[f"chunks/{chunks}"] = item
            chunks += 1
        elif item["type"] == "moe":
            out[f"moe/{moes}"] = item
            moes += 1
    return out


def main():
    if len(sys.argv) != 2:
        fail("usage: route_check.py TRACE.h5")
    f = h5py.File(sys.argv[1], "r")
    a = f.attrs
    expect(text(a["kind"]) == "mom-routing-trace", f"kind is {a['kind']!r}")
    config = json.loads(text(a["config"]))
    disabled = json.loads(text(a["disabled_modules"]))
    T, B, nb = int(a["seq_len"]), int(a["batch_size"]), int(a["batches"])
    N = nb * B * T
    expect(int(a["tokens"]) == N, f"tokens attribute {a['tokens']} != batches*B*T = {N}")
    tokens, targets, losses = f["tokens"][:], f["targets"][:], f["losses"][:]
    for name, d in (("tokens", tokens), ("targets", targets), ("losses", losses)):
        expect(d.shape == (N,), f"{name} has shape {d.shape}, want ({N},)")
    expect(tokens.dtype == np.int32 and targets.dtype == np.int32, "tokens/targets are not int32")
    expect(np.array_equal(targets[:-1], tokens[1:]), "targets[i] != tokens[i+1]: rows are not the stream in order")
    expect(np.all(np.isfinite(losses)) and np.all(losses > 0), "a per-token loss is not finite and positive")
    mean = float(np.mean(losses))
    expect(abs(mean - float(a["mean_loss"])) <= 1e-9 * abs(mean), f"mean of losses {mean} != mean_loss {a['mean_loss']}")

    stages = stage_configs(config)
    listed = json.loads(text(a["routers"]))
    found = []
    f.visititems(lambda name, obj: found.append(name[len("trace/"):-len("/modules")])
                 if isinstance(obj, h5py.Dataset) and name.startswith("trace/") and name.endswith("/modules") else None)
    expect(sorted(found) == sorted(listed), f"routers attribute {listed} != groups in the file {found}")
    report = {"mean_loss": float(a["mean_loss"]), "losses_mean": mean, "tokens": N, "routers": {}}
    for r in listed:
        stage, side = r.rsplit("/", 1)
        expect(stage in stages, f"group {r}: no stage {stage} in the config's stack")
        item = stages[stage]
        is_moe = item["type"] == "moe"
        expect(not (is_moe and side == "attn"), f"{r}: an MoE layer's attention is dense, it has no router")
        M = item["experts"] if is_moe else item[f"{side}_modules"]
        skip = bool(item.get("skip", False))
        K = item["top_k"]
        S = 1 if is_moe else item["steps"]
        C = M + (1 if skip else 0)
        g = f["trace/" + r]
        modules, weights, probs, dropped = g["modules"][:], g["weights"][:], g["probs"][:], g["dropped"][:]
        for name, d, shape in (("modules", modules, (N, S, K)), ("weights", weights, (N, S, K)),
                               ("dropped", dropped, (N, S, K)), ("probs", probs, (N, S, C))):
            expect(d.shape == shape, f"{r}/{name} has shape {d.shape}, want {shape}")
        expect(modules.dtype == np.int32, f"{r}/modules is {modules.dtype}, not int32")
        lo = -1 if skip else 0
        expect(modules.min() >= lo and modules.max() < M, f"{r}: module ids outside [{lo}, {M})")
        expect(np.all((weights >= 0) & (weights <= 1 + 1e-12)), f"{r}: a weight outside [0, 1]")
        expect(np.all(weights.sum(axis=2) <= 1 + 1e-9), f"{r}: weights of a token and step sum above 1")
        expect(set(np.unique(dropped)) <= {0, 1}, f"{r}: dropped is not 0/1")
        expect(not np.any(dropped[modules < 0]), f"{r}: a SKIP choice is marked dropped")
        # The choices are the top-K classes: class index of each choice (SKIP is the last class).
        cls = np.where(modules < 0, C - 1, modules)
        chosen_p = np.take_along_axis(probs, cls, axis=2)
        off = np.zeros(C, dtype=bool)
        for path in disabled:
            if path.startswith(r + "/"):
                off[int(path.rsplit("/", 1)[1])] = True
        expect(not np.any(off[cls]), f"{r}: a disabled module was chosen")
        expect(np.all(probs[..., off] == 0), f"{r}: a disabled module has probability above 0")
        expect(np.all(np.diff(chosen_p, axis=2) <= 0), f"{r}: choices are not in descending probability")
        kth = chosen_p[..., -1:]
        unchosen = probs.copy()
        np.put_along_axis(unchosen, cls, -1.0, axis=2)
        unchosen[..., off] = -1.0
        expect(np.all(unchosen.max(axis=2, keepdims=True) <= kth), f"{r}: an unchosen class is more probable")
        if item.get("gate", "softmax") != "sigmoid":
            expect(np.allclose(probs.sum(axis=2), 1.0, atol=1e-9), f"{r}: probabilities do not sum to 1")
        want_w = chosen_p / chosen_p.sum(axis=2, keepdims=True) if item.get("renormalise", True) else chosen_p
        expect(np.allclose(weights, want_w, rtol=1e-9, atol=1e-12), f"{r}: weights are not the chosen probabilities")
        load = np.bincount(cls.ravel(), minlength=C) / cls.size
        report["routers"][r] = {
            "steps": S, "K": K, "classes": C, "modules": M, "skip_share": float(load[-1]) if skip else 0.0,
            "used": sorted(int(m) for m in np.unique(modules) if m >= 0), "load": [float(x) for x in load],
            "dropped": int(dropped.sum()),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
