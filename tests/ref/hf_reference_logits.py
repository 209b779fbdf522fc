"""GPT-2 logits straight from a Hugging Face folder (config.json + model.safetensors).

Why it exists: to check `mom convert hf-gpt2` against something that does not share its
mapping. It parses the safetensors file itself (no `safetensors` package; struct + json +
numpy), widens F16/BF16 with numpy, and runs GPT-2 in float64 PyTorch with Hugging Face's
Conv1D semantics (y = x @ W + b, W stored [in, out]) under HF's key names, so any transpose,
slicing or naming mistake in the converter shows up as different logits.

Usage: hf_reference_logits.py DIR OUT.f64 TOKEN [TOKEN ...] [--batch B]
writes the logits [B, T, V] as little-endian float64 and prints max |logit|.
"""
import argparse
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = data[begin:end]
        if e["dtype"] == "F32":
            x = np.frombuffer(raw, dtype="<f4")
        elif e["dtype"] == "F16":
            x = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif e["dtype"] == "BF16":
            x = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue  # mask buffers
        out[name[len("transformer."):] if name.startswith("transformer.") else name] = x.reshape(e["shape"])
    return out


def gpt2_logits(w, cfg, tokens):
    t = lambda name: torch.from_numpy(np.array(w[name], dtype=np.float64))
    B, T = tokens.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    x = t("wte.weight")[tokens] + t("wpe.weight")[:T]
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        u = F.layer_norm(x, (C,), t(p + "ln_1.weight"), t(p + "ln_1.bias"), eps)
        qkv = u @ t(p + "attn.c_attn.weight") + t(p + "attn.c_attn.bias")
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in qkv.split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = torch.softmax(att.masked_fill(causal, float("-inf")), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + o @ t(p + "attn.c_proj.weight") + t(p + "attn.c_proj.bias")
        u = F.layer_norm(x, (C,), t(p + "ln_2.weight"), t(p + "ln_2.bias"), eps)
        h = F.gelu(u @ t(p + "mlp.c_fc.weight") + t(p + "mlp.c_fc.bias"), approximate="tanh")
        x = x + h @ t(p + "mlp.c_proj.weight") + t(p + "mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), t("ln_f.weight"), t("ln_f.bias"), eps)
    return x @ t("wte.weight").T  # tied head


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("tokens", type=int, nargs="+")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    with open(f"{a.dir}/config.json") as f:
        cfg = json.load(f)
    w = read_safetensors(f"{a.dir}/model.safetensors")
    tokens = torch.tensor(a.tokens, dtype=torch.long).view(a.batch, -1)
    logits = gpt2_logits(w, cfg, tokens)
    logits.numpy().astype("<f8").tofile(a.out)
    print(f"max |logit| = {logits.abs().max().item():.6g}")


if __name__ == "__main__":
    main()
