"""Writes a small random GPT-2 as a Hugging Face folder (config.json + model.safetensors).

Why it exists: the converter tests (tests/test_hf_convert.cpp) and docs/huggingface.md need
Hugging Face GPT-2 files without downloading anything and without the `safetensors` or
`transformers` packages, which Debian's python lacks. So the file is written by hand from the
format's definition (8-byte little-endian header length, JSON header, raw bytes) with
struct + json + numpy: a writer independent of mom's. Keys and shapes are those of
GPT2LMHeadModel.save_pretrained, Conv1D weights as [in, out], including the causal-mask
buffers older transformers versions saved, so that the converter meets what the hub holds.

Options choose the "transformer." prefix, the dtype (f32, f16, bf16) and an optional tied
lm_head. With --expected-f32 PATH it also writes, under the same keys, the float32 values
numpy gets from the stored f16/bf16 bits: the exact values the converter must produce.
With --tokenizer-from DIR it copies vocab.json and merges.txt (or encoder.json/vocab.bpe)
from DIR into the folder.
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, rounding to nearest even (what torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype string, shape, raw bytes)."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in tensors:
            f.write(raw)


def gpt2_tensors(n_layer, n_embd, vocab, n_pos, rng):
    """(name, float32 array) in GPT2LMHeadModel's order and shapes (Conv1D: [in, out])."""
    C = n_embd
    out = [("wte.weight", rng.normal(0, 0.3, (vocab, C))), ("wpe.weight", rng.normal(0, 0.1, (n_pos, C)))]
    for i in range(n_layer):
        p = f"h.{i}."
        out += [
            (p + "ln_1.weight", 1 + rng.normal(0, 0.1, C)),
            (p + "ln_1.bias", rng.normal(0, 0.1, C)),
            (p + "attn.c_attn.weight", rng.normal(0, 0.15, (C, 3 * C))),
            (p + "attn.c_attn.bias", rng.normal(0, 0.05, 3 * C)),
            (p + "attn.c_proj.weight", rng.normal(0, 0.1, (C, C))),
            (p + "attn.c_proj.bias", rng.normal(0, 0.05, C)),
            (p + "ln_2.weight", 1 + rng.normal(0, 0.1, C)),
            (p + "ln_2.bias", rng.normal(0, 0.1, C)),
            (p + "mlp.c_fc.weight", rng.normal(0, 0.15, (C, 4 * C))),
            (p + "mlp.c_fc.bias", rng.normal(0, 0.05, 4 * C)),
            (p + "mlp.c_proj.weight", rng.normal(0, 0.08, (4 * C, C))),
            (p + "mlp.c_proj.bias", rng.normal(0, 0.05, C)),
        ]
    out += [("ln_f.weight", 1 + rng.normal(0, 0.1, C)), ("ln_f.bias", rng.normal(0, 0.1, C))]
    return [(n, a.astype(np.float32)) for n, a in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--no-prefix", action="store_true", help="hub-style keys without 'transformer.'")
    ap.add_argument("--lm-head", action="store_true", help="also store the tied lm_head.weight")
    ap.add_argument("--no-mask-buffers", action="store_true", help="leave out h.{i}.attn.bias/masked_bias")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expected-f32", help="also write the exact float32 values of the stored tensors here")
    ap.add_argument("--tokenizer-from", help="copy the GPT-2 tokenizer files from this folder")
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out_dir, exist_ok=True)
    prefix = "" if a.no_prefix else "transformer."
    stored, expected = [], []
    for name, x in gpt2_tensors(a.n_layer, a.n_embd, a.vocab_size, a.n_positions, rng):
        if a.dtype == "f32":
            raw, exact = x.tobytes(), x
        elif a.dtype == "f16":
            h = x.astype(np.float16)
            raw, exact = h.tobytes(), h.astype(np.float32)
        else:
            bits = to_bf16_bits(x)
            raw, exact = bits.tobytes(), bf16_bits_to_f32(bits)
        dt = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[a.dtype]
        stored.append((prefix + name, dt, x.shape, raw))
        expected.append((prefix + name, "F32", x.shape, np.ascontiguousarray(exact).tobytes()))
        if name == "wte.weight":
            wte = (dt, x.shape, raw)
    if a.lm_head:
        stored.append(("lm_head.weight",) + wte)
    if not a.no_mask_buffers:
        n = a.n_positions
        mask = np.tril(np.ones((n, n), dtype=np.uint8)).reshape(1, 1, n, n)
        for i in range(a.n_layer):
            stored.append((f"{prefix}h.{i}.attn.bias", "BOOL", mask.shape, mask.tobytes()))
            stored.append((f"{prefix}h.{i}.attn.masked_bias", "F32", (), np.float32(-1e4).tobytes()))
    # save_pretrained's order is its own; sorted keys like the Rust writer keep the file canonical.
    stored.sort(key=lambda t: t[0])
    write_safetensors(os.path.join(a.out_dir, "model.safetensors"), stored, {"format": "pt"})
    if a.expected_f32:
        write_safetensors(a.expected_f32, sorted(expected, key=lambda t: t[0]))

    config = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": a.n_positions,
        "n_embd": a.n_embd,
        "n_head": a.n_head,
        "n_inner": None,
        "n_layer": a.n_layer,
        "n_positions": a.n_positions,
        "resid_pdrop": 0.1,
        "vocab_size": a.vocab_size,
    }
    with open(os.path.join(a.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if a.tokenizer_from:
        for src, dst in (("vocab.json", "vocab.json"), ("merges.txt", "merges.txt"),
                         ("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
            if os.path.exists(os.path.join(a.tokenizer_from, src)):
                shutil.copyfile(os.path.join(a.tokenizer_from, src), os.path.join(a.out_dir, dst))


if __name__ == "__main__":
    main()
