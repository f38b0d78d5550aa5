"""The benchmark's PNG: effective GB/s of every contender, per optimizer and size."""

from __future__ import annotations

from pathlib import Path


def plot(result: dict, path: Path) -> Path | None:
    """Grouped bars (one group per optimizer and size); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no screen
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result["rows"]
    cases = list(dict.fromkeys((r["optimizer"], r["elements"], r["tensors"]) for r in rows))
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    value = {(r["optimizer"], r["elements"], r["tensors"], r["contender"]): r["GB/s"] for r in rows}
    width = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cases) * max(1, len(contenders) / 3)), 4.5))
    for k, contender in enumerate(contenders):
        xs = [
            i + (k - (len(contenders) - 1) / 2) * width
            for i, case in enumerate(cases)
            if (*case, contender) in value
        ]
        ys = [value[(*case, contender)] for case in cases if (*case, contender) in value]
        hatch = "//" if contender == "same-traffic limit" else None
        ax.bar(xs, ys, width, label=contender, hatch=hatch)
    labels = [f"{o}\n{n / 1e6:g}M" + (f" in {t}" if t > 1 else "") for o, n, t in cases]
    ax.set_xticks(range(len(cases)), labels, fontsize=8)
    ax.set_ylabel("effective GB/s (bytes the step must move / time)")
    ax.set_title(f"optimizer step, fp32, {result['threads']} threads ({result['machine']})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
