"""Every F16 and BF16 bit pattern with numpy's float32 value for it, as one safetensors file.

Why it exists: tests/test_safetensors.cpp checks mom's hand-written half -> float widening
(normals, subnormals, ±0, ±inf, NaN payloads) against numpy on all 65536 patterns of each
type. The file is written by hand (struct + json + numpy), independently of mom's writer,
with tensors of several shapes and a "__metadata__" entry so the reader's parsing is
exercised on a file mom did not write.

Usage: hf_dtype_table.py OUT.safetensors
"""
import sys

import numpy as np

from hf_make_gpt2 import write_safetensors

bits = np.arange(65536, dtype=np.uint16)
f16 = bits.view(np.float16)
tensors = [
    ("f16", "F16", (256, 256), bits.tobytes()),
    ("f16_as_f32", "F32", (256, 256), f16.astype(np.float32).tobytes()),
    ("bf16", "BF16", (65536,), bits.tobytes()),
    ("bf16_as_f32", "F32", (65536,), (bits.astype(np.uint32) << 16).view(np.float32).tobytes()),
    ("empty", "F32", (0, 3), b""),
    ("scalar", "F32", (), np.float32(2.5).tobytes()),
    ("grid", "F32", (2, 3, 4), np.arange(24, dtype=np.float32).tobytes()),
]
write_safetensors(sys.argv[1], tensors, {"format": "pt", "source": "hf_dtype_table.py"})
