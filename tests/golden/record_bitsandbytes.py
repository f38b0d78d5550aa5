"""Record bitsandbytes' dynamic code tables and blockwise codes (run once, by hand).

    python3 -m venv /tmp/bnb && /tmp/bnb/bin/pip install torch==2.13.0 bitsandbytes==0.50.2
    /tmp/bnb/bin/python tests/golden/record_bitsandbytes.py   # writes tests/golden/bitsandbytes_0_50.npz

Saves `create_dynamic_map(signed=True/False)` and, for a seeded sample (values over seven
decades, a zero block, a tail block of 1000 - 3*256 elements), the codes and absmax of
bitsandbytes' `quantize_blockwise` with each table (the unsigned table on |x|), from two of its
kernels: "default", its pure-PyTorch kernel (torch.bucketize on the float32 midpoints of the
table: the nearest code, as its CUDA kernel computes), and "cpu", its native CPU library. So
tests/test_quantize.py compares optforge.runtime.quantize with them without bitsandbytes.
"""

from pathlib import Path

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import torch

OUT = Path(__file__).with_name("bitsandbytes_0_50.npz")
OP = torch.ops.bitsandbytes.quantize_blockwise.default


def sample() -> np.ndarray:
    rng = np.random.default_rng(17)
    x = rng.standard_normal(1000) * 10.0 ** rng.uniform(-7, 1, 1000)
    x[256:512] = 0.0  # an all-zero block
    return x.astype(np.float32)


def main() -> None:
    x = sample()
    out = {"version": np.array(bitsandbytes.__version__), "x": x}
    for kind, signed, values in (("signed", True, x), ("unsigned", False, np.abs(x))):
        code = F.create_dynamic_map(signed=signed)
        out[f"{kind}_table"] = code.numpy()
        for backend, key in (("default", "CompositeExplicitAutograd"), ("cpu", "CPU")):
            keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
            q, absmax = OP.redispatch(keys, torch.from_numpy(values), code, 256)
            out[f"{kind}_codes_{backend}"] = q.numpy()
            out[f"{kind}_absmax_{backend}"] = absmax.numpy()
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} (bitsandbytes {bitsandbytes.__version__})")


if __name__ == "__main__":
    main()
