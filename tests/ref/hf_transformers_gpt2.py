"""The real Hugging Face GPT2LMHeadModel, for the end-to-end converter test.

Why it exists: the other converter tests use hand-written safetensors files; this one checks
against what `transformers` itself writes and reads (save_pretrained / from_pretrained),
so that a change in its key names or file metadata cannot go unnoticed. Only run where
`transformers` is installed (tests/test_hf_convert.cpp skips otherwise); nothing is
downloaded: the model is built from a GPT2Config with random weights.

Usage:
  hf_transformers_gpt2.py make DIR OUT.f64 TOKEN...   random model -> DIR via save_pretrained, logits -> OUT
  hf_transformers_gpt2.py logits DIR OUT.f64 TOKEN... from_pretrained(DIR), logits -> OUT
Logits [1, T, V] are written as little-endian float64.
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def logits_of(model, tokens, out):
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens], dtype=torch.long)).logits
    logits.double().numpy().astype("<f8").tofile(out)
    print(f"max |logit| = {logits.abs().max().item():.6g}")


def main():
    mode, folder, out = sys.argv[1:4]
    tokens = [int(t) for t in sys.argv[4:]]
    if mode == "make":
        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=1000,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
        # Larger than the 0.02 init so that the logits are far from uniform.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model = GPT2LMHeadModel.from_pretrained(folder)
    logits_of(model, tokens, out)


if __name__ == "__main__":
    main()
