"""Mean next-token cross-entropy of a dense mom checkpoint over a token file cut into windows of
T+1 tokens at stride T (window i = tokens i·T .. i·T+T; inputs its first T, targets its last
T), every window scored: the independent check of `mom eval --seq-len T --batch-size 1`
(tests/test_run_folder.cpp). The model is tests/ref/torch_gpt2.py's, in float64; the shards are
read directly (llm.c format: a 256-int32 header whose third entry is the token count, then
uint16 tokens), never through our loader.

Usage: /usr/bin/python3 tests/ref/eval_reference.py CHECKPOINT 'DIR/val_*.bin' T   (prints the loss)
"""
import glob
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gpt2 import load_mom_checkpoint  # noqa: E402


def read_tokens(pattern):
    parts = []
    for path in sorted(glob.glob(pattern)):
        header = np.fromfile(path, dtype="<i4", count=256)
        parts.append(np.fromfile(path, dtype="<u2", offset=256 * 4, count=int(header[2])).astype(np.int64))
    if not parts:
        sys.exit(f"no token files match {pattern}")
    return np.concatenate(parts)


def main(ckpt, pattern, T):
    torch.set_num_threads(1)
    model = load_mom_checkpoint(ckpt, torch.float64)
    tokens = torch.from_numpy(read_tokens(pattern))
    n = (len(tokens) - 1) // T
    total = 0.0
    with torch.no_grad():
        for i in range(n):
            w = tokens[i * T:i * T + T + 1]
            logits = model.logits(w[:-1].unsqueeze(0))[0]
            total += F.cross_entropy(logits, w[1:], reduction="sum").item()
    print(f"{total / (n * T):.8f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
