"""Python's http.client against `mom serve`: /v1/route equals an offline `mom route` trace.

Usage: /usr/bin/python3 tests/serve/http_client_route.py PORT TRACE.h5 [API_KEY]

TRACE.h5 is `mom route CKPT --data ... --seq-len T --batch-size 1 --batches 1` of the checkpoint
the server serves: one window of T tokens. The script sends those T tokens and the window's last
target (T + 1 tokens) to POST /v1/route and compares, with h5py and the standard library only:
- every token's module ids, gate weights and dropped flags, per stage, step and router, with the
  file's trace/<stage>/<router>/{modules,weights,dropped} rows (exactly: JSON numbers
  round-trip doubles);
- the per-token log-probabilities with -losses, and mean_loss with the file's mean_loss.
It also checks GET /health and that a malformed completion is a 400 naming its field.
Prints one JSON object: tokens, mismatches (the first few), mean losses; exit 0 when it ran.
"""
import http.client
import json
import sys

import h5py


def request(conn, method, path, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    res = conn.getresponse()
    return res.status, json.loads(res.read() or b"null")


def main():
    port, trace_path = int(sys.argv[1]), sys.argv[2]
    key = sys.argv[3] if len(sys.argv) > 3 else None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    f = h5py.File(trace_path, "r")
    tokens = [int(t) for t in f["tokens"][:]]
    targets = [int(t) for t in f["targets"][:]]
    losses = [float(x) for x in f["losses"][:]]

    report = {"mismatches": []}
    report["health"] = request(conn, "GET", "/health")[0]
    status, body = request(conn, "POST", "/v1/completions", {"prompt": "x", "max_tokens": "3"}, key)
    report["bad_request"] = {"status": status, "param": body.get("error", {}).get("param")}

    status, got = request(conn, "POST", "/v1/route", {"prompt": tokens + [targets[-1]]}, key)
    report["route_status"] = status
    if status != 200:
        report["body"] = got
        print(json.dumps(report))
        return

    def mismatch(what):
        if len(report["mismatches"]) < 10:
            report["mismatches"].append(what)

    routing = got["routing"]
    report["tokens"] = len(routing)
    if len(routing) != len(tokens):
        mismatch(f"{len(routing)} routed tokens, the file has {len(tokens)}")
    # Token t's trace: routing[t][stage][step][router] = {modules, weights, dropped?}.
    for stage_name, stage in f["trace"].items():
        for sub_name, sub in stage.items():
            # Stages are named like chunks/0: the file nests trace/chunks/0/<router>.
            for router, group in sub.items():
                full = f"{stage_name}/{sub_name}"
                modules, weights, dropped = group["modules"][:], group["weights"][:], group["dropped"][:]
                for t in range(min(len(tokens), len(routing))):
                    steps = routing[t].get(full)
                    if steps is None or len(steps) != modules.shape[1]:
                        mismatch(f"token {t}: {full} has {None if steps is None else len(steps)} steps")
                        continue
                    for h in range(modules.shape[1]):
                        entry = steps[h].get(router)
                        want_m = [int(m) for m in modules[t, h]]
                        want_w = [float(w) for w in weights[t, h]]
                        want_d = [int(d) for d in dropped[t, h]]
                        got_d = entry.get("dropped", [0] * len(want_d)) if entry else None
                        if entry is None or entry["modules"] != want_m or entry["weights"] != want_w or got_d != want_d:
                            mismatch({"token": t, "stage": full, "step": h, "router": router, "server": entry,
                                      "file": {"modules": want_m, "weights": want_w, "dropped": want_d}})
    lps = got["token_logprobs"]
    for t, (lp, loss) in enumerate(zip(lps[1:], losses)):
        if lp != -loss:
            mismatch(f"token {t + 1}: logprob {lp!r}, the file's loss {loss!r}")
    report["mean_loss_server"] = got["mean_loss"]
    report["mean_loss_file"] = float(f.attrs["mean_loss"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
