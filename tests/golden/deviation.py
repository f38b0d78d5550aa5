"""Print how far optforge is from each recorded MindSpore 2.10 trajectory.

    python tests/golden/deviation.py

For every case of mindspore_2_10.npz: the largest absolute difference over every
element of every parameter after every one of the 12 steps.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.test_golden_mindspore import GOLDEN, META, build  # noqa: E402


def main() -> None:
    worst = 0.0
    for case in sorted(META):
        opt, params, scheduler = build(case)
        deviation = 0.0
        for step in range(12):
            opt(tuple(GOLDEN[f"{case}/grads/{p.name}"][step] for p in opt.parameters))
            if scheduler is not None:
                scheduler.step()
            for p in params:
                deviation = max(
                    deviation, float(np.abs(p.data - GOLDEN[f"{case}/history/{p.name}"][step]).max())
                )
        worst = max(worst, deviation)
        print(f"{case:34s} {deviation:.2e}")
    print(f"{'worst':34s} {worst:.2e}")


if __name__ == "__main__":
    main()
