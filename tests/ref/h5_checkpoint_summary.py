"""Independent reader for mom checkpoints: h5py reads a file and prints a JSON summary.

Why: the C++ tests compare this against what they wrote, so the on-disk format is checked
by a second implementation (the one users will reach for), not only by our own reader.
Usage: h5_checkpoint_summary.py CHECKPOINT           -> JSON on stdout
       h5_checkpoint_summary.py --make-foreign DIR   -> writes DIR/plain.h5 (no attributes)
           and DIR/other-format.h5 (format = "something-else"): valid HDF5, not mom checkpoints
"""
import json
import sys

import h5py
import numpy as np


def attr_value(value):
    # mom writes fixed-length strings, which h5py returns as numpy bytes.
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [int(v) if np.issubdtype(value.dtype, np.integer) else float(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def summary(path):
    out = {"attrs": {}, "datasets": {}}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: attr_value(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out["datasets"][name] = {
                    "shape": list(obj.shape),
                    "dtype": str(obj.dtype),
                    "fletcher32": bool(obj.fletcher32),
                    "chunks": list(obj.chunks) if obj.chunks else None,
                    "values": obj[...].astype(np.float64).ravel().tolist(),
                }

        f.visititems(visit)
    return out


def make_foreign(folder):
    with h5py.File(folder + "/plain.h5", "w") as f:
        f.create_dataset("params/wte", data=np.zeros((4, 3), dtype=np.float32))
    with h5py.File(folder + "/other-format.h5", "w") as f:
        f.create_dataset("params/wte", data=np.zeros((4, 3), dtype=np.float32))
        f.attrs["format"] = "something-else"  # a variable-length string, as h5py writes it
        f.attrs["format_version"] = 1


if __name__ == "__main__":
    if sys.argv[1] == "--make-foreign":
        make_foreign(sys.argv[2])
    else:
        print(json.dumps(summary(sys.argv[1])))
